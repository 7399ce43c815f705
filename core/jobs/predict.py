"""Prediction with fine-tuned (job) or zero-shot models, with an LRU of loaded models.

Loading a base model takes seconds and building zero-shot class embeddings runs the text tower,
so predictors are cached by what defines them: the job id, or the base model spec plus class names.
"""

from __future__ import annotations

import io
import json
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import IO, Any

from core.jobs.files import local_artifact
from core.jobs.runner import resolve_device
from core.jobs.storage import get_storage
from core.settings import Settings



class ImageTooLarge(ValueError):
    """An image over the pixel limit."""


def _clean(message: str) -> str:
    """Pillow's messages end in the repr of the file object; the file name says it already."""
    return re.sub(r" <[^>]*object at 0x[0-9a-f]+>", "", message)


class LRUCache:
    """A thread-safe LRU that builds each missing value once, even under concurrent requests."""

    def __init__(self, size: int) -> None:
        self.size = size
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
            with self._lock:
                self._items[key] = value
                self._items.move_to_end(key)
                while len(self._items) > self.size:
                    self._items.popitem(last=False)
                self._building.pop(key, None)
            return value

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._items


class PredictionService:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.bases = LRUCache(settings.model_cache_size)
        self.predictors = LRUCache(settings.model_cache_size)
        self._device: str | None = None

    @property
    def device(self) -> str:
        if self._device is None:
            self._device = resolve_device(self.settings.device)
        return self._device

    def base_model(self, spec: dict[str, Any]) -> Any:
        import torch

        from core.adapt.models import ModelSpec, load_base_model

        if self.settings.torch_threads:
            torch.set_num_threads(self.settings.torch_threads)

        key = json.dumps(spec, sort_keys=True)
        return self.bases.get(key, lambda: load_base_model(ModelSpec(**spec), device=self.device))

    def for_job(self, job_id: str, spec: dict[str, Any], artifact_key: str) -> Any:
        """The predictor for a succeeded job's artifact."""

        def build() -> Any:
            from core.adapt.artifact import load_artifact
            from core.adapt.predictor import Predictor

            folder = local_artifact(get_storage(self.settings), artifact_key, self.settings.cache_dir, job_id)
            return self._serving(Predictor(load_artifact(folder, self.base_model(spec)), device=self.device))

        return self.predictors.get(("job", job_id), build)

    def zero_shot(self, spec: dict[str, Any], classnames: list[str]) -> Any:
        """The zero-shot predictor (template ensemble) for a base model and class names."""

        def build() -> Any:
            from core.adapt.predictor import Predictor, zero_shot_model

            return self._serving(Predictor(zero_shot_model(self.base_model(spec), classnames), device=self.device))

        return self.predictors.get(("zero-shot", json.dumps(spec, sort_keys=True), tuple(classnames)), build)

    def _serving(self, predictor: Any) -> Any:
        """On a GPU, concurrent requests share forward passes; on a CPU batching does not pay."""
        from core.adapt.predictor import BatchingPredictor

        if not self.device.startswith("cuda") or self.settings.predict_batch_size <= 1:
            return predictor
        return BatchingPredictor(predictor, self.settings.predict_batch_size, self.settings.predict_max_wait_ms)

    @staticmethod
    def open_images(files: list[tuple[str, IO[bytes]]], *, max_pixels: int | None = None) -> list[Any]:
        """Decode uploads to RGB images. Raises ImageTooLarge over ``max_pixels`` (checked from the
        header, before decoding) and DatasetError for anything that is not an allowed image format,
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
                raise DatasetError(
                    f"cannot read image {name}: not a {', '.join(IMAGE_FORMATS)} image ({_clean(str(e))})"
                ) from e
            if max_pixels is not None and width * height > max_pixels:
                raise ImageTooLarge(f"image {name} is {width}x{height} pixels, more than {max_pixels}")
            named.seek(0)
            try:
                images.append(open_image(named))
            except DatasetError as e:
                raise DatasetError(_clean(str(e))) from e
        return images

    def predict(self, predictor: Any, images: list[Any], top_k: int) -> list[list[dict[str, Any]]]:
        return predictor.predict(images, top_k=top_k)
