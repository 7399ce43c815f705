"""Contrastive pretraining of clipadapt-starter on the procedural world of `core.starter.render`.

Plain CLIP training (symmetric cross-entropy over image-caption similarities, learned temperature),
with choices made for a small budget on two CPU cores:
- the project's fast transformer path (`core.adapt.fast`): contiguous attention, the last block for
  the pooled token only, captions trimmed to the longest in the batch;
- a curriculum in the data (`render.sample_scene`): one large object on a quiet background first,
  the full variety from halfway on;
- linear warm-up and a cosine schedule to zero over a fixed number of steps: the run is defined by its
  step count, not by a clock, so it gives the same model however busy the machine is;
- every caption in a batch that is true of an image counts as its match, not as a negative ("a red
  circle" describes every red circle; the generator knows what each caption states).

`core.starter.evaluation` measures what the model card reports.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from PIL import Image
from torch.utils.data import DataLoader

from core.starter import render

STARTER_ARCHITECTURE: dict[str, Any] = {
    "embed_dim": 128,
    "vision_cfg": {"image_size": 64, "layers": 4, "width": 128, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 128, "heads": 4, "layers": 3},
}


@dataclass
class PretrainConfig:
    steps: int = 1600
    batch_size: int = 256
    lr: float = 2e-3
    warmup_steps: int = 100
    weight_decay: float = 0.1
    seed: int = 0
    eval_seed: int = 1_000_003  # a separate generator seed: no evaluation image is a training image
    eval_per_pair: int = 48  # 432 held-out images: 12 (108 images) left the held-out figure +-4.5 points
    threads: int = 0  # 0: torch's default
    architecture: dict[str, Any] = field(default_factory=lambda: json.loads(json.dumps(STARTER_ARCHITECTURE)))


class CaptionedImages(torch.utils.data.Dataset):
    """Sample i of the pretraining stream as (uint8 image [3, S, S], caption tokens).

    Images are resized as open_clip's preprocessing does (bicubic; every canvas is square, so the
    centre crop keeps everything) and normalized later, a batch at a time, by `normalize`."""

    def __init__(self, seed: int, length: int, image_size: int, tokenizer: Any):
        self.seed, self.length, self.image_size, self.tokenizer = seed, length, image_size, tokenizer
        self._tokens: dict[str, torch.Tensor] = {}  # captions repeat; BPE is slow

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        scene, image, caption = render.pretraining_sample(self.seed, index, progress=index / self.length)
        if image.size != (self.image_size, self.image_size):
            image = image.resize((self.image_size, self.image_size), Image.Resampling.BICUBIC)
        tokens = self._tokens.get(caption.text)
        if tokens is None:
            tokens = self._tokens[caption.text] = self.tokenizer([caption.text])[0]
        return {
            "image": torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1),
            "tokens": tokens,
            "attributes": torch.from_numpy(render.attributes(scene)),
            "mentions": torch.from_numpy(caption.mask()),
        }


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 [N, 3, S, S] to the model's input: ToTensor then Normalize with OpenAI's mean and std."""
    mean = torch.tensor(OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_DATASET_STD).view(1, 3, 1, 1)
    return (images.float() / 255 - mean) / std


def true_captions(attributes: torch.Tensor, mentions: torch.Tensor) -> torch.Tensor:
    """[i, j]: caption j is true of image i (every attribute it states is image i's)."""
    agree = attributes[:, None, :] == attributes[None, :, :]  # [image, caption, attribute]
    return (agree | ~mentions[None, :, :]).all(dim=-1)


def clip_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: torch.Tensor, matches: torch.Tensor) -> torch.Tensor:
    """Symmetric cross-entropy over image-caption similarities, where every caption that is true of an
    image counts as a match for it (its own caption always is): in a synthetic world, "a red circle"
    describes every red circle in the batch, and pushing them apart would teach the model to ignore
    what the captions say."""
    logits = logit_scale * image_emb @ text_emb.T
    matches = matches.float()
    image_to_text = F.cross_entropy(logits, matches / matches.sum(dim=1, keepdim=True))
    text_to_image = F.cross_entropy(logits.T, (matches / matches.sum(dim=0, keepdim=True)).T)
    return (image_to_text + text_to_image) / 2


def _schedule(step: int, config: PretrainConfig) -> float:
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return 0.5 * (1 + math.cos(math.pi * progress))


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """No weight decay on gains, biases and the temperature (as open_clip's training does)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim < 2 or "logit_scale" in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_model(architecture: dict[str, Any]) -> Any:
    """An open_clip CLIP of the starter architecture, randomly initialized (seeded by the caller)."""
    import open_clip

    return open_clip.CLIP(**json.loads(json.dumps(architecture)))


def pretrain(
    config: PretrainConfig,
    on_step: Callable[[int, float, float], None] | None = None,
    on_eval: Callable[[int, dict[str, Any]], None] | None = None,
    eval_every: int = 0,
) -> tuple[Any, list[dict[str, float]]]:
    """Train from scratch; returns the model (eval mode, patch dropout off) and the loss history."""
    import open_clip

    from core.adapt.data import build_transforms
    from core.adapt.modules import encode_images, encode_tokens

    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    model = build_model(config.architecture)
    tokenizer = open_clip.SimpleTokenizer(context_length=config.architecture["text_cfg"]["context_length"])
    # open_clip's default preprocessing (OpenAI's mean and std), which load_base_model will report.
    _, transform = build_transforms(config.architecture["vision_cfg"]["image_size"], OPENAI_DATASET_MEAN, OPENAI_DATASET_STD)
    image_size = config.architecture["vision_cfg"]["image_size"]
    stream = CaptionedImages(config.seed, config.steps * config.batch_size, image_size, tokenizer)
    loader = DataLoader(stream, batch_size=config.batch_size, num_workers=1, prefetch_factor=4, persistent_workers=False)

    optimizer = torch.optim.AdamW(_param_groups(model, config.weight_decay), lr=config.lr, betas=(0.9, 0.98), eps=1e-6)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: _schedule(step, config))
    history: list[dict[str, float]] = []
    model.train()
    started = time.monotonic()
    for step, batch in enumerate(loader):
        image_emb = F.normalize(encode_images(model, normalize(batch["image"]), projected=True), dim=-1)
        text_emb = F.normalize(encode_tokens(model, batch["tokens"]), dim=-1)
        matches = true_captions(batch["attributes"], batch["mentions"])
        loss = clip_loss(image_emb, text_emb, model.logit_scale.exp(), matches)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        history.append({"step": step + 1, "loss": loss.item(), "seconds": time.monotonic() - started})
        if on_step is not None:
            on_step(step + 1, history[-1]["loss"], model.logit_scale.exp().item())
        if eval_every and (step + 1) % eval_every == 0 and step + 1 < config.steps and on_eval is not None:
            model.eval()
            on_eval(step + 1, quick_eval(model, tokenizer, transform, config))
            model.train()
    return model.eval(), history


# ------------------------------------------------------------------------------------------- eval


@torch.no_grad()
def quick_eval(model: Any, tokenizer: Any, transform: Callable, config: PretrainConfig, per_pair: int = 3) -> dict[str, float]:
    """During training: one template, a few images per pair; for watching progress, not for the card."""
    from core.adapt.modules import encode_images, encode_tokens
    from core.starter.evaluation import all_pairs, generator_images, pair_names

    pairs = all_pairs()
    classes = F.normalize(encode_tokens(model, tokenizer([f"a photo of a {n}." for n in pair_names(pairs)])), dim=-1)
    samples = generator_images(config.eval_seed + 1, per_pair, pairs)
    images = torch.stack([transform(image) for image, _ in samples])
    labels = torch.tensor([label for _, label in samples])
    predicted = (F.normalize(encode_images(model, images, projected=True), dim=-1) @ classes.T).argmax(dim=1)
    held = torch.tensor([pairs[label] in render.HELD_OUT_PAIRS for label in labels.tolist()])
    correct = (predicted == labels).float()
    return {"seen": correct[~held].mean().item(), "held_out": correct[held].mean().item()}


def save_config(path: Path, config: PretrainConfig) -> None:
    path.write_text(json.dumps(asdict(config), indent=2))
