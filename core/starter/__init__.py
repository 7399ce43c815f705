"""clipadapt-starter: a small CLIP this project pretrains itself on procedurally drawn, captioned
images, so that adaptation can be shown to work without downloading anything.

- `render`: the drawing vocabulary (colours, shapes, characters, backgrounds) and captions;
- `tasks`: downstream classification tasks of graded similarity to the pretraining data;
- `pretrain`: the contrastive pretraining run and its zero-shot evaluation.
"""
