"""Export a fine-tuned model for use outside clipadapt.

- `open_clip`: a merged checkpoint that plain `open_clip.create_model(config, pretrained=FILE)` loads:
  the base weights with every trained tensor that plain CLIP has a place for (LayerNorms, full
  fine-tuning's weights, the logit scale). Injected modules (adapters, compacters, prompt vectors) have
  no place in plain CLIP; what they change is the class embeddings, saved beside it with the linear
  probe's head (`classifier.safetensors`), so `logits = classifier(model.encode_image(x))`.
- `onnx`: one graph from preprocessed images [N, 3, H, W] to logits [N, classes].

Both directories hold `export.json`: class names, preprocessing, and how to compute logits.
"""

from __future__ import annotations

import copy
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any, Literal

import open_clip
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from core.adapt.artifact import WEIGHTS_FILE, ArtifactError
from core.adapt.models import ClipBase
from core.adapt.serving import Delta, _ImageFeatures, load_delta

ExportFormat = Literal["open_clip", "onnx"]
FORMATS: tuple[str, ...] = ("open_clip", "onnx")
CHECKPOINT_FILE = "open_clip_model.safetensors"
CONFIG_FILE = "open_clip_config.json"
CLASSIFIER_FILE = "classifier.safetensors"
ONNX_FILE = "model.onnx"
INFO_FILE = "export.json"


def merged_clip(path: str | Path, base: ClipBase) -> tuple[nn.Module, Delta]:
    """A copy of the base CLIP with the artifact's tensors that plain CLIP has, and the model's delta."""
    path = Path(path)
    delta = load_delta(path, base)
    clip = copy.deepcopy(base.model).cpu()
    state = clip.state_dict()
    try:
        trained = load_file(path / WEIGHTS_FILE)
    except OSError as exc:
        raise ArtifactError(f"cannot read {path / WEIGHTS_FILE}: {exc}") from exc
    merged = {name.removeprefix("clip."): t for name, t in trained.items() if name.removeprefix("clip.") in state}
    clip.load_state_dict({**state, **merged})
    return clip.eval(), Delta(delta.classnames, {}, {k: v.cpu() for k, v in delta.classifier.items()})


class ExportedClassifier(nn.Module):
    """Images -> logits with the merged image tower and the saved classifier (what the ONNX graph holds)."""

    def __init__(self, clip: nn.Module, delta: Delta):
        super().__init__()
        self.visual = clip.visual
        self.projected = delta.projected
        for name, tensor in delta.classifier.items():
            self.register_buffer(name.replace(".", "_"), tensor.clone())
        self.classnames = delta.classnames

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # The serving engine's image path (fast blocks when supported), then Delta.logits' arithmetic.
        pooled, embedded = _ImageFeatures.forward(self, images, self.projected)
        if self.projected:
            return self.logit_scale.exp() * F.normalize(embedded, dim=-1) @ self.class_embeddings.T
        return F.linear(pooled, self.linear_weight, self.linear_bias)


def _info(base: ClipBase, delta: Delta, fmt: str, manifest_path: Path) -> dict[str, Any]:
    manifest = json.loads((manifest_path / "manifest.json").read_text())
    how = {
        "open_clip": "model = open_clip.create_model(<architecture from open_clip_config.json, registered with "
        "open_clip.add_model_config>, pretrained='open_clip_model.safetensors'); c = load_file('classifier.safetensors'); "
        + ("logits = c['logit_scale'].exp() * normalize(model.encode_image(x)) @ c['class_embeddings'].T"
           if delta.projected else
           "pooled = image features before visual.proj; logits = pooled @ c['linear.weight'].T + c['linear.bias']"),
        "onnx": "logits = session.run(None, {'images': x})[0]; x is [N, 3, H, W] preprocessed as below",
    }[fmt]
    return {
        "format": fmt,
        "classnames": delta.classnames,
        "preprocess": base.preprocess,
        "base_model": manifest["base_model"],
        "recipe": manifest["recipe"],
        "logits": how,
    }


def export_artifact(path: str | Path, base: ClipBase, fmt: ExportFormat, out_dir: str | Path) -> Path:
    """Write the export into `out_dir` (a directory; it appears complete or not at all)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    path, out_dir = Path(path), Path(out_dir)
    clip, delta = merged_clip(path, base)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        if fmt == "open_clip":
            _write_open_clip(clip, base, delta, staging)
        else:
            _write_onnx(clip, base, delta, staging)
        (staging / INFO_FILE).write_text(json.dumps(_info(base, delta, fmt, path), indent=2))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staging.rename(out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir


def _write_open_clip(clip: nn.Module, base: ClipBase, delta: Delta, out: Path) -> None:
    config = copy.deepcopy(open_clip.get_model_config(base.identity["architecture"]))
    if base.identity.get("quick_gelu"):
        config["quick_gelu"] = True  # OpenAI weights load silently wrong without it
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=2))
    save_file({name: t.contiguous() for name, t in clip.state_dict().items()}, out / CHECKPOINT_FILE)
    save_file({name: t.contiguous() for name, t in delta.classifier.items()}, out / CLASSIFIER_FILE)


def _write_onnx(clip: nn.Module, base: ClipBase, delta: Delta, out: Path) -> None:
    module = ExportedClassifier(clip, delta).eval()
    example = torch.zeros(2, 3, base.image_size, base.image_size)
    with torch.no_grad():
        torch.onnx.export(
            module, (example,), str(out / ONNX_FILE), input_names=["images"], output_names=["logits"],
            dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False, opset_version=18,
        )
