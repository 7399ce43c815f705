"""A tiny CLIP with meaningful weights, made in seconds: random init, then a short supervised
contrastive run on scikit-learn's digits with captions "a photo of the number N.".

Random tiny transformers map every image (and every prompt) to nearly the same embedding, so methods
that classify through the text tower cannot learn from them; this base behaves like a (very small)
pre-trained CLIP instead. Its weights are saved as an open_clip state-dict file, so tests also load
weights the way a user's local file is loaded.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

from core.adapt.models import ModelSpec, load_base_model
from core.adapt.modules import encode_tokens

TINY_CONFIG = Path(__file__).resolve().parent.parent / "fixtures" / "tiny-clip.json"


def digits_tensor(image_size: int, mean, std) -> tuple[torch.Tensor, torch.Tensor]:
    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    images = F.interpolate(images, size=(image_size, image_size), mode="bilinear").repeat(1, 3, 1, 1)
    images = (images - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    return images, torch.tensor(digits.target)


def pretrain_tiny_clip(out_file: Path, steps: int = 200, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    base = load_base_model(ModelSpec(name=str(TINY_CONFIG)))
    model = base.model.requires_grad_(True)
    images, labels = digits_tensor(base.image_size, base.mean, base.std)
    captions = base.tokenizer([f"a photo of the number {n}." for n in range(10)])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)  # ~0.85 train accuracy after 200 steps of 128
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        idx = torch.as_tensor(rng.choice(len(images), 128, replace=False))
        image_emb = F.normalize(model.encode_image(images[idx]), dim=-1)
        text_emb = F.normalize(encode_tokens(model, captions), dim=-1)
        loss = F.cross_entropy(model.logit_scale.exp() * image_emb @ text_emb.T, labels[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    torch.save(model.state_dict(), out_file)
    return out_file
