"""Serving many fine-tuned models from one base model: the base is loaded once per device, and a
fine-tuned model in memory is only what makes it differ from the base at inference time.

At inference a fine-tuned CLIP classifier is image features -> logits. Everything on the text side
(prompt vectors, adapters, compacters, text LayerNorms, templates) only ever produces the class
embeddings, which `save_artifact` precomputes into `classifier.safetensors`; so a served model is
- its classifier: class embeddings [C, D] and the logit scale, or the linear probe's weight and bias;
- its image-tower tensors, if training touched the image tower (LayerNorm tuning alone or jointly, or
  full fine-tuning): a few hundred kilobytes of LayerNorm gamma/beta, read from the artifact's weights;
- for LoRA on the image tower, its low-rank factors A and B (kilobytes), not the merged weights.

Loading one ("cold") reads those few tensors and builds no module and runs no text tower, so a cold
first prediction costs about a warm one (plus a fixed ~1 ms of file reads). Models whose image tower
is the base's share one image-tower forward per batch; LayerNorm models join that same pass with their
gamma/beta applied per image (the normalization is shared; S-LoRA batches LoRA adapters the same way).
Full fine-tuning runs per model through `torch.func.functional_call` with its tensors over the shared
base (no copy of the backbone); its delta is its whole image tower, the copy that method needs anyway.
LoRA models ride in the shared pass too: each image's attention projections add x A^T B^T of its own
model (a rank-r product, small next to the image forward), so a served LoRA model stays the size of its
factors and costs no forward of its own. Where the fast path does not apply, they run like full
fine-tuning with W + B A computed per batch.

`functional_call` and the per-image LayerNorms swap tensors on the shared modules for the duration of a
call, so every image
forward of one engine runs on its single worker thread; callers preprocess images on their own threads
and wait on a future. Concurrent requests, for the same or different models, are batched together there.
"""

from __future__ import annotations

import contextlib
import functools
import queue
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

from core.adapt import fast
from core.adapt.artifact import CLASSIFIER_FILE, WEIGHTS_FILE, ArtifactError, check_base, classifier_tensors, load_artifact, read_manifest
from core.adapt.data import build_transforms
from core.adapt.models import ClipBase
from core.adapt.trainer import autocast

VISUAL_PREFIX = "clip.visual."
# How core.adapt.methods.lora names its factors: <module>.parametrizations.<weight>.0.lora_a / lora_b.
LOW_RANK_NAME = re.compile(r"^(?P<module>.+)\.parametrizations\.(?P<weight>\w+)\.0\.lora_(?P<factor>[ab])$")


class EngineClosed(RuntimeError):
    """The engine was closed (evicted from a cache) before the request reached it."""


@dataclass(eq=False)
class LowRank:
    """A LoRA update of one image-tower weight: W + scale B_t A_t on its targeted row blocks."""

    a: torch.Tensor  # [targets, rank, in]
    b: torch.Tensor  # [targets, out, rank]
    blocks: int
    targets: list[int]
    scale: float

    def weight(self, base_weight: torch.Tensor) -> torch.Tensor:
        from core.adapt.methods.lora import updated_weight

        return updated_weight(base_weight, self.a, self.b, self.blocks, self.targets, self.scale)

    def output(self, x: torch.Tensor) -> torch.Tensor:
        """x (B A)^T * scale, what the update adds to the layer's output for inputs x [..., in]."""
        z = torch.einsum("...i,tri->...tr", x, self.a.to(x.dtype))
        update = torch.einsum("...tr,tor->...to", z, self.b.to(x.dtype)) * self.scale  # [..., targets, out]
        if list(self.targets) != list(range(self.blocks)):
            rows = x.new_zeros(*update.shape[:-2], self.blocks, update.shape[-1])
            rows[..., self.targets, :] = update
            update = rows
        return update.flatten(-2)

    def to(self, device: torch.device) -> LowRank:
        return LowRank(self.a.to(device, non_blocking=True), self.b.to(device, non_blocking=True), self.blocks, self.targets, self.scale)


@dataclass(eq=False)
class Delta:
    """What one fine-tuned model adds to its base at inference time."""

    classnames: list[str]
    visual: dict[str, torch.Tensor]  # image-tower tensors by name under `clip.visual`; empty: the base's
    classifier: dict[str, torch.Tensor]  # logit_scale + class_embeddings, or linear.weight + linear.bias
    low_rank: dict[str, LowRank] = field(default_factory=dict)  # LoRA updates by image-tower weight name

    @property
    def projected(self) -> bool:
        """Text classifiers use CLIP-space image embeddings; the linear probe the features before."""
        return "class_embeddings" in self.classifier

    @property
    def own_tower(self) -> bool:
        """Whether its image tower differs from the base's."""
        return bool(self.visual or self.low_rank)

    @property
    def nbytes(self) -> int:
        factors = [t for update in self.low_rank.values() for t in (update.a, update.b)]
        return sum(t.numel() * t.element_size() for t in (*self.visual.values(), *self.classifier.values(), *factors))

    def to(self, device: torch.device) -> Delta:
        move = lambda tensors: {name: t.to(device, non_blocking=True) for name, t in tensors.items()}  # noqa: E731
        return Delta(self.classnames, move(self.visual), move(self.classifier),
                     {name: update.to(device) for name, update in self.low_rank.items()})

    def tower_tensors(self, base_visual: nn.Module) -> dict[str, torch.Tensor]:
        """Every image-tower tensor that differs from the base's, by name under `clip.visual`."""
        tensors = dict(self.visual)
        if self.low_rank:
            params = dict(base_visual.named_parameters())
            for name, update in self.low_rank.items():
                tensors[name] = update.weight(tensors.get(name, params[name]))
        return tensors

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """The same arithmetic as the heads in `core.adapt.modules` (Head.logits, LinearHead.logits)."""
        c = self.classifier
        if "class_embeddings" in c:
            features = F.normalize(features, dim=-1)
            return c["logit_scale"].exp() * features @ c["class_embeddings"].to(features.dtype).T
        weight = c["linear.weight"]
        return F.linear(features.to(weight.dtype), weight, c["linear.bias"])


def load_delta(path: str | Path, base: ClipBase) -> Delta:
    """Read a fine-tuned model's delta from its artifact: the classifier file and the image-tower tensors.

    Artifacts written before `classifier.safetensors` existed are rebuilt once with `load_artifact`."""
    path = Path(path)
    manifest = read_manifest(path)
    check_base(manifest, base)
    try:
        classifier = load_file(path / CLASSIFIER_FILE)
    except FileNotFoundError:
        with torch.no_grad():
            classifier = classifier_tensors(load_artifact(path, base))
    except OSError as exc:
        raise ArtifactError(f"cannot read {path / CLASSIFIER_FILE}: {exc}") from exc
    visual: dict[str, torch.Tensor] = {}
    factors: dict[str, dict[str, torch.Tensor]] = {}
    try:
        with safe_open(path / WEIGHTS_FILE, framework="pt") as weights:
            # Only the image tower's tensors are read: the text side is already in the class embeddings.
            for name in weights.keys():
                if name.startswith(VISUAL_PREFIX):
                    name_in_tower = name[len(VISUAL_PREFIX):]
                    if match := LOW_RANK_NAME.match(name_in_tower):
                        weight = f"{match['module']}.{match['weight']}"
                        factors.setdefault(weight, {})[match["factor"]] = weights.get_tensor(name)
                    else:
                        visual[name_in_tower] = weights.get_tensor(name)
    except (FileNotFoundError, OSError) as exc:
        raise ArtifactError(f"cannot read {path / WEIGHTS_FILE}: {exc}") from exc
    low_rank = {}
    if factors:
        from core.adapt.methods.lora import update_layout

        for weight, ab in factors.items():
            if ab.keys() != {"a", "b"}:
                raise ArtifactError(f"{path / WEIGHTS_FILE} holds only one LoRA factor of {weight}")
            low_rank[weight] = LowRank(ab["a"], ab["b"], *update_layout(manifest["recipe"], weight.rsplit(".", 1)[-1]))
    return Delta(list(manifest["classnames"]), visual, classifier, low_rank)


def zero_shot_delta(base: ClipBase, classnames: list[str], templates: list[str] | None = None) -> Delta:
    """A zero-shot classifier (template ensemble) as a delta: class embeddings from the base's text tower."""
    from core.adapt.methods.zero_shot import openai_templates
    from core.adapt.modules import TemplateHead

    head = TemplateHead(base.tokenizer, classnames, templates or openai_templates()).to(base.model.logit_scale.device)
    with torch.no_grad():
        embeddings = head.class_embeddings(base.model)
    return Delta(list(classnames), {}, {"logit_scale": base.model.logit_scale.detach().clone(), "class_embeddings": embeddings})


class _ImageFeatures(nn.Module):
    """The image tower as a module whose parameters `functional_call` can replace by name ("visual.*").
    Returns (pooled features before the projection, CLIP-space embeddings or None)."""

    def __init__(self, visual: nn.Module):
        super().__init__()
        self.visual = visual

    def forward(self, images: torch.Tensor, projected: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        visual = self.visual
        if fast.vision_supported(visual):
            pooled = fast.encode_image(visual, images, projected=False)
            if not projected:
                return pooled, None
            return pooled, (pooled @ visual.proj if visual.proj is not None else pooled)
        # open_clip's VisionTransformer.forward minus the projection, as `modules.encode_images` does.
        pooled, _ = visual._pool(visual.transformer(visual._embeds(images)))
        return pooled, (visual(images) if projected else None)


@dataclass(eq=False)
class _Request:
    models: list[Delta]  # already on the engine's device
    pixels: torch.Tensor
    done: Future


class ServingEngine:
    """One base model on one device serving any number of deltas, with a worker thread that batches
    concurrent requests across models (see the module docstring)."""

    def __init__(self, base: ClipBase, device: str | torch.device | None = None, device_cache_size: int = 64,
                 max_batch: int = 32, max_wait_ms: float = 0.0):
        self.base = base
        self.device = torch.device(device) if device else next(base.model.parameters()).device
        base.model.to(self.device)
        self.features = _ImageFeatures(base.model.visual)
        self.visual_shapes = {name: p.shape for name, p in base.model.visual.named_parameters()}
        visual = base.model.visual
        self.norms = {name: m for name, m in visual.named_modules() if isinstance(m, nn.LayerNorm) and m.weight is not None}
        self.norm_params = {f"{name}.{p}" for name in self.norms for p in ("weight", "bias")}
        self.attentions = {name: m for name, m in visual.named_modules() if isinstance(m, nn.MultiheadAttention)}
        self.low_rank_weights = {f"{name}.{w}" for name in self.attentions for w in ("in_proj_weight", "out_proj.weight")}
        # The fast blocks keep every activation batch-first, so per-image deltas can ride one pass.
        self.per_image_deltas = fast.vision_supported(visual)
        _, self.transform = build_transforms(**base.preprocess)
        self.device_cache_size = device_cache_size
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000
        self._on_device: OrderedDict[Hashable, Delta] = OrderedDict()
        self._lock = threading.Lock()
        self._closed = False
        self._requests: queue.Queue[_Request | None] = queue.Queue()
        self._thread = threading.Thread(target=self._serve, name="serving-engine", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------------------------ deltas

    def load(self, path: str | Path) -> Delta:
        delta = load_delta(path, self.base)
        for name, tensor in delta.visual.items():
            if self.visual_shapes.get(name) != tensor.shape:
                raise ArtifactError(f"image-tower tensor {name} of shape {tuple(tensor.shape)} does not fit the base model")
        for name, update in delta.low_rank.items():
            shape = self.visual_shapes.get(name)
            (targets, rank, inputs), (_, outputs, _) = update.a.shape, update.b.shape
            if (shape is None or update.b.shape != (targets, outputs, rank) or targets != len(update.targets)
                    or shape != (update.blocks * outputs, inputs)):
                raise ArtifactError(f"LoRA factors of {name} do not fit the base model")
        return delta

    def on_device(self, key: Hashable, delta: Delta) -> Delta:
        """The device-resident copy of a host delta, from an LRU of `device_cache_size` of them."""
        if self.device.type == "cpu":
            return delta  # host memory is device memory
        with self._lock:
            if key in self._on_device:
                self._on_device.move_to_end(key)
                return self._on_device[key]
        moved = delta.to(self.device)
        with self._lock:
            self._on_device[key] = moved
            while len(self._on_device) > self.device_cache_size:
                self._on_device.popitem(last=False)
        return moved

    # ------------------------------------------------------------------------------------ prediction

    def pixels(self, images: Sequence[Image.Image]) -> torch.Tensor:
        size = self.base.image_size
        if not images:
            return torch.empty(0, 3, size, size)
        # Uploads arrive decoded as RGB (core.adapt.data.open_image); convert() would copy them again.
        return torch.stack([self.transform(image if image.mode == "RGB" else image.convert("RGB")) for image in images])

    def probabilities(self, models: Sequence[Delta], pixels: torch.Tensor) -> list[torch.Tensor]:
        """Class probabilities [images, classes] of each model (device-resident deltas) for the same images."""
        if len(pixels) == 0:
            return [torch.empty(0, len(model.classnames)) for model in models]
        done: Future = Future()
        with self._lock:  # nothing is queued behind close()'s sentinel, where no worker would see it
            if self._closed:
                raise EngineClosed("this serving engine is closed")
            self._requests.put(_Request(list(models), pixels, done))
        return done.result()

    def predict(self, models: Sequence[Delta], images: Sequence[Image.Image], top_k: int = 5) -> list[list[list[dict[str, Any]]]]:
        """Top-k labels per model, per image."""
        probabilities = self.probabilities(models, self.pixels(images))
        return [rank(model.classnames, p, top_k) for model, p in zip(models, probabilities)]

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._requests.put(None)
        self._thread.join()
        self._on_device.clear()

    # ------------------------------------------------------------------------------------ worker

    def _serve(self) -> None:
        while (first := self._requests.get()) is not None:
            batch, waiting, stop = [first], len(first.pixels), False
            deadline = time.monotonic() + self.max_wait
            # Take what is already queued (and, with max_wait, what arrives in time) up to max_batch images.
            while waiting < self.max_batch:
                try:
                    remaining = deadline - time.monotonic()
                    request = self._requests.get(timeout=remaining) if remaining > 0 else self._requests.get_nowait()
                except queue.Empty:
                    break
                if request is None:
                    stop = True
                    break
                batch.append(request)
                waiting += len(request.pixels)
            try:
                results = self._run(batch)
            except Exception as exc:  # noqa: BLE001 - every waiting caller gets the error
                for request in batch:
                    request.done.set_exception(exc)
            else:
                for request, result in zip(batch, results):
                    request.done.set_result(result)
            if stop:
                return

    def _shared(self, model: Delta) -> bool:
        """Whether a model runs in the shared image-tower pass: the base's tower, or LayerNorm tensors and
        LoRA updates of attention only (applied per sample there), where the fast blocks keep every
        activation batch-first."""
        return not model.own_tower or (self.per_image_deltas and model.visual.keys() <= self.norm_params
                                       and model.low_rank.keys() <= self.low_rank_weights)

    @torch.no_grad()
    def _run(self, batch: list[_Request]) -> list[list[torch.Tensor]]:
        # One shared pass over every request's images, once per (request, LayerNorm or LoRA model) and once
        # per request for all base-tower models; models with other image-tower tensors (full) run per model.
        segments: list[tuple[int, Delta | None]] = []
        separate: dict[int, tuple[Delta, list[int]]] = {}
        for i, request in enumerate(batch):
            for model in request.models:
                if not self._shared(model):
                    members = separate.setdefault(id(model), (model, []))[1]
                    if i not in members:
                        members.append(i)
                elif (i, model if model.own_tower else None) not in segments:
                    segments.append((i, model if model.own_tower else None))
        projected = any(m.projected for request in batch for m in request.models)
        features: dict[tuple[int | None, int], tuple[torch.Tensor, torch.Tensor | None]] = {}
        with autocast(self.device):
            if segments:
                pixels = torch.cat([batch[i].pixels for i, _ in segments]).to(self.device, non_blocking=True)
                if any(model is not None for _, model in segments):
                    with self._per_sample_deltas([(len(batch[i].pixels), model) for i, model in segments]):
                        out = self.features(pixels, projected)
                else:
                    out = self.features(pixels, projected)
                self._split(out, [(None if m is None else id(m), i) for i, m in segments], batch, features)
            for key, (model, members) in separate.items():
                pixels = torch.cat([batch[i].pixels for i in members]).to(self.device, non_blocking=True)
                params = {f"visual.{name}": t for name, t in model.tower_tensors(self.features.visual).items()}
                out = torch.func.functional_call(self.features, params, (pixels, projected))
                self._split(out, [(key, i) for i in members], batch, features)
            results = []
            for i, request in enumerate(batch):
                out = []
                for model in request.models:
                    pooled, embedded = features[id(model) if model.own_tower else None, i]
                    out.append(model.logits(embedded if model.projected else pooled).float().softmax(dim=-1).cpu())
                results.append(out)
        return results

    @staticmethod
    def _split(out, keys, batch, features) -> None:
        pooled, embedded = out
        start = 0
        for key, i in keys:
            n = len(batch[i].pixels)
            features[key, i] = (pooled[start : start + n], None if embedded is None else embedded[start : start + n])
            start += n

    @contextlib.contextmanager
    def _per_sample_deltas(self, segments: list[tuple[int, Delta | None]]):
        """Each image-tower LayerNorm applies, to each image, the gamma/beta of the model it runs for, and
        each attention adds that model's LoRA update (S-LoRA-style batching of deltas); the base's
        computation itself is shared. Set on the instances, on the worker thread, only for this call."""
        try:
            for name, norm in self.norms.items():
                weight = torch.cat([(m.visual.get(f"{name}.weight", norm.weight) if m else norm.weight).expand(n, -1) for n, m in segments])
                bias = torch.cat([(m.visual.get(f"{name}.bias", norm.bias) if m else norm.bias).expand(n, -1) for n, m in segments])
                norm.forward = functools.partial(_sample_norm, norm, weight, bias)
            for name, attn in self.attentions.items():
                qkv = [(n, m.low_rank.get(f"{name}.in_proj_weight") if m else None) for n, m in segments]
                if any(update for _, update in qkv):
                    attn.per_sample_qkv = functools.partial(_sample_low_rank, qkv)
                out = [(n, m.low_rank.get(f"{name}.out_proj.weight") if m else None) for n, m in segments]
                if any(update for _, update in out):
                    projection = attn.out_proj
                    projection.forward = lambda x, p=projection, u=out: F.linear(x, p.weight, p.bias) + _sample_low_rank(u, x)
            yield
        finally:
            for norm in self.norms.values():
                norm.__dict__.pop("forward", None)
            for attn in self.attentions.values():
                attn.__dict__.pop("per_sample_qkv", None)
                attn.out_proj.__dict__.pop("forward", None)


def _sample_norm(norm: nn.LayerNorm, weight: torch.Tensor, bias: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    shape = (x.shape[0],) + (1,) * (x.ndim - 2) + (x.shape[-1],)
    normalized = F.layer_norm(x, norm.normalized_shape, None, None, norm.eps)
    return normalized * weight.view(shape).to(x.dtype) + bias.view(shape).to(x.dtype)


def _sample_low_rank(segments: list[tuple[int, LowRank | None]], x: torch.Tensor) -> torch.Tensor:
    """What each image's LoRA update adds for inputs x [images, ..., in], images in segment order."""
    width = next(u.blocks * u.b.shape[1] for _, u in segments if u is not None)
    parts, start = [], 0
    for n, update in segments:
        part = x[start : start + n]
        parts.append(update.output(part) if update is not None else part.new_zeros(*part.shape[:-1], width))
        start += n
    return torch.cat(parts)


def rank(classnames: list[str], probabilities: torch.Tensor, top_k: int) -> list[list[dict[str, Any]]]:
    k = max(1, min(top_k, len(classnames)))
    top = probabilities.topk(k, dim=-1)
    return [
        [{"label": classnames[i], "probability": float(p)} for p, i in zip(values.tolist(), indices.tolist())]
        for values, indices in zip(top.values, top.indices)
    ]
