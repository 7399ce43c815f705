"""Prediction with fine-tuned (job) or zero-shot models over shared base models.

Loading a base model takes seconds, so each is loaded once (an LRU of serving engines); a fine-tuned
model is a small delta over it, read from its artifact in milliseconds, and zero-shot class embeddings
(a text-tower run) are cached by base model spec plus class names.
"""

from __future__ import annotations

import io
import json
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import IO, Any

from core.jobs.files import local_artifact
from core.jobs.storage import get_storage
from core.settings import Settings



class ImageTooLarge(ValueError):
    """An image over the pixel limit."""


class ImageRejected(ValueError):
    """An upload that is not a readable image of an allowed format; the message names the file."""


def _clean(message: str) -> str:
    """Pillow's messages end in the repr of the file object; the file name says it already."""
    return re.sub(r" <[^>]*object at 0x[0-9a-f]+>", "", message)


class LRUCache:
    """A thread-safe LRU that builds each missing value once, even under concurrent requests.
    `on_evict` releases what an evicted value holds (a serving engine's worker thread)."""

    def __init__(self, size: int, on_evict: Callable[[Any], None] | None = None) -> None:
        self.size = size
        self.on_evict = on_evict
        self._items: OrderedDict[Hashable, Any] = OrderedDict()
        self._lock = threading.Lock()
        self._building: dict[Hashable, threading.Lock] = {}

    def get(self, key: Hashable, build: Callable[[], Any]) -> Any:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            key_lock = self._building.setdefault(key, threading.Lock())
        with key_lock:
            with self._lock:
                if key in self._items:
                    self._items.move_to_end(key)
                    return self._items[key]
            value = build()
            evicted = []
            with self._lock:
                self._items[key] = value
                self._items.move_to_end(key)
                while len(self._items) > self.size:
                    evicted.append(self._items.popitem(last=False)[1])
                self._building.pop(key, None)
            for old in evicted:
                if self.on_evict is not None:
                    self.on_evict(old)
            return value

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._items


@dataclass(frozen=True)
class ServedModel:
    """A model ready to serve: its delta in host memory, and the base it applies to."""

    key: Hashable
    spec: dict[str, Any]
    delta: Any  # core.adapt.serving.Delta

    @property
    def classnames(self) -> list[str]:
        return self.delta.classnames


class PredictionService:
    """One serving engine (base model + worker) per base model on this process's device; fine-tuned and
    zero-shot models are deltas over it (core.adapt.serving), so hundreds fit where one copy of the
    base did before."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.bases = LRUCache(settings.model_cache_size, on_evict=lambda engine: engine.close())
        self.predictors = LRUCache(settings.served_model_cache_size)
        self._device: str | None = None

    @property
    def device(self) -> str:
        if self._device is None:
            from core.adapt.runtime import resolve_device

            self._device = str(resolve_device(self.settings.device))
        return self._device

    def engine(self, spec: dict[str, Any]) -> Any:
        """The serving engine of a base model, loaded once."""
        from core.adapt.models import ModelSpec, load_base_model
        from core.adapt.runtime import configure_torch
        from core.adapt.serving import ServingEngine

        configure_torch(self.settings.torch_threads)

        def build() -> Any:
            base = load_base_model(ModelSpec(**spec), device=self.device)
            # Batching across requests pays on a GPU; on a CPU the worker takes only what already waits.
            wait = self.settings.predict_max_wait_ms if self.device.startswith("cuda") else 0.0
            return ServingEngine(base, self.device, self.settings.delta_cache_size, self.settings.predict_batch_size, wait)

        return self.bases.get(json.dumps(spec, sort_keys=True), build)

    def base_model(self, spec: dict[str, Any]) -> Any:
        return self.engine(spec).base

    def for_job(self, job_id: str, spec: dict[str, Any], artifact_key: str) -> ServedModel:
        """A succeeded job's model: reads its classifier and image-tower tensors, never the whole model."""

        def build() -> ServedModel:
            folder = local_artifact(get_storage(self.settings), artifact_key, self.settings.cache_dir, job_id)
            return ServedModel(("job", job_id), spec, self.engine(spec).load(folder))

        return self.predictors.get(("job", job_id), build)

    def zero_shot(self, spec: dict[str, Any], classnames: list[str]) -> ServedModel:
        """The zero-shot model (template ensemble) for a base model and class names."""
        key = ("zero-shot", json.dumps(spec, sort_keys=True), tuple(classnames))

        def build() -> ServedModel:
            from core.adapt.serving import zero_shot_delta

            return ServedModel(key, spec, zero_shot_delta(self.engine(spec).base, classnames))

        return self.predictors.get(key, build)

    def export(self, job_id: str, spec: dict[str, Any], artifact_key: str, fmt: str, out_dir: Any) -> Any:
        """Export a job's model (core.adapt.export) into out_dir and pack it as out_dir.tar.gz."""
        import tarfile
        from pathlib import Path

        from core.adapt.export import export_artifact

        folder = local_artifact(get_storage(self.settings), artifact_key, self.settings.cache_dir, job_id)
        written = export_artifact(folder, self.base_model(spec), fmt, Path(out_dir) / fmt)
        archive = Path(out_dir) / f"{job_id}-{fmt}.tar.gz"
        with tarfile.open(archive, "w:gz") as tar:
            tar.add(written, arcname=f"{job_id}-{fmt}")
        return archive

    def predict_many(self, models: list[ServedModel], images: list[Any], top_k: int) -> list[list[list[dict[str, Any]]]]:
        """Top-k labels of every model for the same images: one request per base model, in which the
        models that leave the image tower alone share one image-tower forward."""
        from core.adapt.serving import EngineClosed, rank

        results: dict[int, list[list[dict[str, Any]]]] = {}
        by_base: dict[str, list[int]] = {}
        for i, model in enumerate(models):
            by_base.setdefault(json.dumps(model.spec, sort_keys=True), []).append(i)
        for members in by_base.values():
            spec = models[members[0]].spec
            for attempt in range(2):
                engine = self.engine(spec)
                deltas = [engine.on_device(models[i].key, models[i].delta) for i in members]
                try:
                    probabilities = engine.probabilities(deltas, engine.pixels(images))
                    break
                except EngineClosed:  # evicted between lookup and use: the next lookup builds it again
                    if attempt:
                        raise
            for i, p in zip(members, probabilities):
                results[i] = rank(models[i].classnames, p, top_k)
        return [results[i] for i in range(len(models))]

    def predict(self, model: ServedModel, images: list[Any], top_k: int) -> list[list[dict[str, Any]]]:
        return self.predict_many([model], images, top_k)[0]

    @staticmethod
    def open_images(files: list[tuple[str, IO[bytes]]], *, max_pixels: int | None = None) -> list[Any]:
        """Decode uploads to RGB images. Raises ImageTooLarge over ``max_pixels`` (checked from the
        header, before decoding) and ImageRejected for anything that is not an allowed image format,
        naming the file."""
        from PIL import Image, UnidentifiedImageError

        from core.adapt.data import IMAGE_FORMATS, DatasetError, open_image

        images = []
        for name, file in files:
            named = io.BytesIO(file.read())
            named.name = name  # open_image names the file in its errors
            try:
                # Only the header is read here; `formats` keeps Pillow away from exotic decoders.
                with Image.open(named, formats=IMAGE_FORMATS) as probe:
                    width, height = probe.size
            except Image.DecompressionBombError as e:
                raise ImageTooLarge(f"image {name} is too large: {e}") from e
            except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
                raise ImageRejected(
                    f"cannot read image {name}: not a {', '.join(IMAGE_FORMATS)} image ({_clean(str(e))})"
                ) from e
            if max_pixels is not None and width * height > max_pixels:
                raise ImageTooLarge(f"image {name} is {width}x{height} pixels, more than {max_pixels}")
            named.seek(0)
            try:
                images.append(open_image(named))
            except DatasetError as e:
                raise ImageRejected(_clean(str(e))) from e
        return images
