"""Artifacts: a directory with the trained tensors only (safetensors) and a JSON manifest.

Loading rebuilds the recipe's structure on a copy of the base model from the method registry, then
loads the tensors; it refuses a base model whose identity differs from the one the artifact records.
"""

from __future__ import annotations

import copy
import json
import shutil
import tempfile
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from core.adapt.adapted import AdaptedModel, build_adapted, merge_for_prediction
from core.adapt.models import ClipBase
from core.adapt.recipe import parse_recipe
from core.adapt.trainer import TrainResult

FORMAT_VERSION = 1
WEIGHTS_FILE = "weights.safetensors"
MANIFEST_FILE = "manifest.json"
# The classifier precomputed for serving (core.adapt.serving): class embeddings and logit scale, or the
# linear probe's head. Derived from the weights, written so that serving never runs the text tower.
CLASSIFIER_FILE = "classifier.safetensors"
# What must match between the base an artifact was trained on and the one it is applied to.
IDENTITY_KEYS = ("config_sha256", "weights_fingerprint", "quick_gelu")


class ArtifactError(ValueError):
    """The directory is not a usable artifact, or it belongs to another base model."""


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def build_manifest(result: TrainResult) -> dict[str, Any]:
    head = result.adapted.head
    return {
        "format_version": FORMAT_VERSION,
        "created_at": datetime.now(timezone.utc).isoformat(),
        "base_model": {"spec": result.base.spec.model_dump(mode="json"), "identity": result.base.identity},
        "recipe": result.recipe.model_dump(mode="json"),
        "stages": [{"name": s.name, "method": s.recipe.method, "epochs": s.epochs, "joint_layernorm": s.joint_layernorm}
                   for s in result.stages],
        "auto_decision": result.auto_decision,
        "classnames": result.adapted.classnames,
        "class_ids": result.class_ids,
        "head": type(head).__name__,
        "preprocess": result.adapted.preprocess,
        "trainable_params": result.trainable_params,
        "metrics": {"val": result.val_metrics, "test": result.test_metrics},
        "split_sizes": result.split_sizes,
        "versions": {name: _version(name) for name in ("clipadapt", "torch", "open_clip_torch")},
    }


def classifier_tensors(model: AdaptedModel) -> dict[str, torch.Tensor]:
    """What turns image features into logits: for text heads the class embeddings [C, D] and the logit
    scale, for the linear probe its weight and bias (same arithmetic as the model's `logits`)."""
    head = model.head
    if not head.uses_text:
        return {"linear.weight": head.linear.weight.detach().cpu().contiguous(),
                "linear.bias": head.linear.bias.detach().cpu().contiguous()}
    with torch.no_grad():
        embeddings = model.class_embeddings()
    return {"class_embeddings": embeddings.detach().float().cpu().contiguous(),
            "logit_scale": model.clip.logit_scale.detach().cpu().contiguous()}


def save_artifact(result: TrainResult, out_dir: str | Path) -> Path:
    """Write the artifact; the directory appears complete or not at all."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    params = dict(result.adapted.named_parameters())
    tensors = {name: params[name].detach().cpu().contiguous() for name in sorted(result.trained_names)}
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        save_file(tensors, staging / WEIGHTS_FILE)
        save_file(classifier_tensors(result.adapted), staging / CLASSIFIER_FILE)
        (staging / MANIFEST_FILE).write_text(json.dumps(build_manifest(result), indent=2))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staging.rename(out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir


def read_manifest(path: str | Path) -> dict[str, Any]:
    manifest_path = Path(path) / MANIFEST_FILE
    try:
        manifest = json.loads(manifest_path.read_text())
    except FileNotFoundError as exc:
        raise ArtifactError(f"{path} is not an artifact: {MANIFEST_FILE} is missing") from exc
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{manifest_path} is not valid JSON: {exc}") from exc
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(f"unsupported artifact format {manifest.get('format_version')!r} (expected {FORMAT_VERSION})")
    return manifest


def check_base(manifest: dict[str, Any], base: ClipBase) -> None:
    recorded = manifest["base_model"]["identity"]
    if any(recorded.get(key) != base.identity.get(key) for key in IDENTITY_KEYS):
        raise ArtifactError(
            f"this artifact was trained on base model {manifest['base_model']['spec']} "
            f"(identity {recorded}); it cannot be applied to {base.spec.model_dump()} (identity {base.identity})"
        )


def load_artifact(path: str | Path, base: ClipBase) -> AdaptedModel:
    """Rebuild the adapted model on a copy of `base`, for prediction; same outputs as the model that was
    saved (methods with a `merge` are folded into the base weights)."""
    path = Path(path)
    manifest = read_manifest(path)
    check_base(manifest, base)
    recipe = parse_recipe(manifest["recipe"])
    clip = copy.deepcopy(base.model)
    model, trained = build_adapted(clip, recipe, manifest["classnames"], base.tokenizer, manifest["preprocess"])
    try:
        tensors = load_file(path / WEIGHTS_FILE)
    except (FileNotFoundError, OSError) as exc:
        raise ArtifactError(f"cannot read {path / WEIGHTS_FILE}: {exc}") from exc
    if set(tensors) != trained:
        raise ArtifactError(
            f"artifact tensors do not match its recipe: unexpected {sorted(set(tensors) - trained)[:5]}, "
            f"missing {sorted(trained - set(tensors))[:5]}"
        )
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, tensor in tensors.items():
            if params[name].shape != tensor.shape:
                raise ArtifactError(f"tensor {name} has shape {tuple(tensor.shape)}, expected {tuple(params[name].shape)}")
            params[name].copy_(tensor)
    return merge_for_prediction(model, recipe).requires_grad_(False).eval()
