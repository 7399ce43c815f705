"""Prediction: top-k labels with probabilities for one or many images."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image

from core.adapt.adapted import AdaptedModel, Stage, prepare_stage
from core.adapt.data import build_transforms
from core.adapt.methods.zero_shot import ZeroShotConfig
from core.adapt.models import ClipBase


def zero_shot_model(base: ClipBase, classnames: list[str], templates: list[str] | None = None) -> AdaptedModel:
    """A zero-shot classifier over `classnames` (default: the 80 OpenAI ImageNet templates).

    It shares the base model's weights: zero-shot changes nothing in them."""
    preprocess = base.preprocess
    stage = Stage("zero_shot", ZeroShotConfig(templates=templates), joint_layernorm=False, epochs=0)
    return prepare_stage(base.model, stage, classnames, base.tokenizer, preprocess).eval()


class Predictor:
    """Wraps an adapted model for inference; class embeddings are computed once, here."""

    def __init__(self, model: AdaptedModel, device: str | torch.device | None = None, batch_size: int = 32):
        self.device = torch.device(device) if device else next(model.parameters()).device
        self.model = model.to(self.device).eval()
        self.batch_size = batch_size
        _, self.transform = build_transforms(**model.preprocess)
        with torch.no_grad():
            self.class_embeddings = model.class_embeddings()

    @property
    def classnames(self) -> list[str]:
        return self.model.classnames

    @torch.no_grad()
    def probabilities(self, images: Sequence[Image.Image]) -> torch.Tensor:
        chunks = []
        for start in range(0, len(images), self.batch_size):
            batch = torch.stack([self.transform(image.convert("RGB")) for image in images[start : start + self.batch_size]])
            features = self.model.encode_images(batch.to(self.device))
            chunks.append(self.model.logits(features, self.class_embeddings).float().softmax(dim=-1).cpu())
        return torch.cat(chunks) if chunks else torch.empty(0, len(self.classnames))

    def predict(self, images: Sequence[Image.Image], top_k: int = 5) -> list[list[dict[str, Any]]]:
        probabilities = self.probabilities(images)
        k = max(1, min(top_k, len(self.classnames)))
        top = probabilities.topk(k, dim=-1)
        return [
            [{"label": self.classnames[i], "probability": float(p)} for p, i in zip(values.tolist(), indices.tolist())]
            for values, indices in zip(top.values, top.indices)
        ]
