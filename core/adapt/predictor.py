"""Prediction: top-k labels with probabilities for one or many images."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from typing import Any

import torch
from PIL import Image

from core.adapt.adapted import AdaptedModel, Stage, prepare_stage
from core.adapt.data import build_transforms
from core.adapt.methods.zero_shot import ZeroShotConfig
from core.adapt.models import ClipBase
from core.adapt.trainer import autocast


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
            with autocast(self.device):
                features = self.model.encode_images(batch.to(self.device))
                logits = self.model.logits(features, self.class_embeddings)
            chunks.append(logits.float().softmax(dim=-1).cpu())
        return torch.cat(chunks) if chunks else torch.empty(0, len(self.classnames))

    def predict(self, images: Sequence[Image.Image], top_k: int = 5) -> list[list[dict[str, Any]]]:
        return self.rank(self.probabilities(images), top_k)

    def rank(self, probabilities: torch.Tensor, top_k: int) -> list[list[dict[str, Any]]]:
        k = max(1, min(top_k, len(self.classnames)))
        top = probabilities.topk(k, dim=-1)
        return [
            [{"label": self.classnames[i], "probability": float(p)} for p, i in zip(values.tolist(), indices.tolist())]
            for values, indices in zip(top.values, top.indices)
        ]


class BatchingPredictor:
    """Serves concurrent `predict` calls with shared forward passes: a background thread takes requests
    until `max_batch` images are waiting or the first has waited `max_wait_ms`, then runs them together.

    Worth it on a GPU, where one image leaves most of the device idle; on a CPU one image at a time was
    measured as fast as sixteen together, so the service uses the plain Predictor there."""

    def __init__(self, predictor: Predictor, max_batch: int = 32, max_wait_ms: float = 5.0):
        self.predictor = predictor
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000
        self._requests: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._serve, name="batching-predictor", daemon=True)
        self._thread.start()

    @property
    def classnames(self) -> list[str]:
        return self.predictor.classnames

    def predict(self, images: Sequence[Image.Image], top_k: int = 5) -> list[list[dict[str, Any]]]:
        done: Future = Future()
        self._requests.put((list(images), top_k, done))
        return done.result()

    def close(self) -> None:
        self._requests.put(None)
        self._thread.join()

    def _serve(self) -> None:
        while (first := self._requests.get()) is not None:
            batch, waiting, stop = [first], len(first[0]), False
            deadline = time.monotonic() + self.max_wait
            while waiting < self.max_batch and (remaining := deadline - time.monotonic()) > 0:
                try:
                    request = self._requests.get(timeout=remaining)
                except queue.Empty:
                    break
                if request is None:
                    stop = True
                    break
                batch.append(request)
                waiting += len(request[0])
            self._run(batch)
            if stop:
                return

    def _run(self, batch: list) -> None:
        try:
            probabilities = self.predictor.probabilities([image for images, _, _ in batch for image in images])
        except Exception as exc:  # noqa: BLE001 - every waiting caller gets the error
            for _, _, done in batch:
                done.set_exception(exc)
            return
        start = 0
        for images, top_k, done in batch:
            done.set_result(self.predictor.rank(probabilities[start : start + len(images)], top_k))
            start += len(images)
