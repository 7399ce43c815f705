"""Base models: any open_clip architecture, by name or model-config JSON, with any weight source.

A base model carries an `identity` (architecture config hash, weight fingerprint, QuickGELU) that
artifacts record, so an artifact is only ever applied to the base it was trained on.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import open_clip
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from core.adapt.modules import check_supported

# Random-init base models must be identical in every process (API, workers, CLI) that loads them.
RANDOM_INIT_SEED = 0


class ModelLoadError(ValueError):
    """The model spec cannot be turned into a model (unknown name, missing file, unusable weights)."""


class ModelSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(
        description="open_clip architecture name (e.g. 'ViT-B-16'), a path to an open_clip model-config "
        "JSON file, or 'hf-hub:org/repo'."
    )
    pretrained: str | None = Field(
        None,
        description="open_clip pretrained tag (e.g. 'openai'), a local weights file (.pt, .bin, "
        ".safetensors), or null for random initialization. Ignored for 'hf-hub:' names.",
    )
    quick_gelu: bool | None = Field(
        None, description="Use QuickGELU; null decides automatically (on for OpenAI weights)."
    )


@dataclass
class ClipBase:
    """A loaded, frozen base model with what is needed to tokenize prompts and preprocess images."""

    spec: ModelSpec
    model: nn.Module
    tokenizer: Any
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    identity: dict[str, Any]

    @property
    def preprocess(self) -> dict[str, Any]:
        """Image preprocessing parameters, as `build_transforms(**preprocess)` takes them."""
        return {"image_size": self.image_size, "mean": list(self.mean), "std": list(self.std)}

    @property
    def context_length(self) -> int:
        return self.model.positional_embedding.shape[0]


_registered_configs: dict[str, str] = {}
_config_dir = Path(tempfile.mkdtemp(prefix="clipadapt-model-configs-"))


def _register_config_file(path: Path) -> tuple[str, dict]:
    """Register a model-config JSON under a content-derived name, so a user's file can never shadow a
    built-in architecture of the same file name."""
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"cannot read model config {path}: {exc}") from exc
    if not isinstance(config, dict) or not {"embed_dim", "vision_cfg", "text_cfg"} <= config.keys():
        raise ModelLoadError(f"{path} is not an open_clip model config (needs embed_dim, vision_cfg, text_cfg)")
    digest = _config_digest(config)
    name = f"clipadapt-{digest[:16]}"
    if name not in _registered_configs:
        registered = _config_dir / f"{name}.json"
        registered.write_text(json.dumps(config))
        open_clip.add_model_config(registered)
        _registered_configs[name] = digest
    return name, config


def _config_digest(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


def _hf_hub_config(name: str) -> dict:
    """The model config of an 'hf-hub:' model (from the local Hugging Face cache when offline)."""
    from huggingface_hub import hf_hub_download
    from open_clip.constants import HF_CONFIG_NAME

    try:
        with open(hf_hub_download(name.removeprefix("hf-hub:"), HF_CONFIG_NAME)) as f:
            return json.load(f)["model_cfg"]
    except Exception as exc:  # network, cache miss, malformed config: all mean "cannot load"
        raise ModelLoadError(f"cannot fetch the open_clip config of {name}: {exc}") from exc


def resolve_quick_gelu(spec: ModelSpec, architecture: str) -> bool:
    """OpenAI's CLIP weights were trained with QuickGELU; without it they load silently and give wrong
    outputs. Automatic rule: the 'openai' tag (or any tag open_clip marks quick_gelu), or a local
    weights file whose name contains 'openai'."""
    if spec.quick_gelu is not None:
        return spec.quick_gelu
    if architecture.endswith("-quickgelu") or spec.pretrained is None:
        return False
    tag_config = open_clip.get_pretrained_cfg(architecture, spec.pretrained)
    if tag_config:
        return bool(tag_config.get("quick_gelu", False)) or spec.pretrained == "openai"
    return "openai" in Path(spec.pretrained).name.lower()


def weights_fingerprint(model: nn.Module) -> str:
    """A cheap, deterministic digest of every tensor (shape plus a strided sample of its values)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        flat = tensor.detach().reshape(-1)
        sample = flat[:: max(1, flat.numel() // 4096)].float().cpu().numpy()
        digest.update(f"{name}:{tuple(tensor.shape)}:".encode())
        digest.update(sample.tobytes())
    return digest.hexdigest()


class _DropRandomInitWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("No pretrained weights loaded")


@contextmanager
def _quiet_random_init(random_init: bool):
    """open_clip warns (on the root logger) whenever a model gets random weights; here that is asked
    for, so the warning would only be noise a user cannot act on."""
    if not random_init:
        yield
        return
    root, quiet = logging.getLogger(), _DropRandomInitWarning()
    root.addFilter(quiet)
    try:
        yield
    finally:
        root.removeFilter(quiet)


def load_base_model(spec: ModelSpec, device: str | torch.device = "cpu") -> ClipBase:
    """Build the model, load its weights, freeze it. Raises ModelLoadError with a readable reason."""
    name = spec.name
    if name.startswith("hf-hub:"):
        architecture, config, pretrained = name, _hf_hub_config(name), None
    elif name.endswith(".json"):
        path = Path(name)
        if not path.is_file():
            raise ModelLoadError(f"model config file not found: {path}")
        architecture, config = _register_config_file(path)
        pretrained = spec.pretrained
    else:
        architecture = name.replace("/", "-")
        config = open_clip.get_model_config(architecture)
        if config is None:
            raise ModelLoadError(f"unknown open_clip architecture {name!r}")
        pretrained = spec.pretrained
    if pretrained is not None and not open_clip.get_pretrained_cfg(architecture, pretrained) and not Path(pretrained).is_file():
        raise ModelLoadError(f"pretrained weights {pretrained!r} are neither an open_clip tag for {architecture} nor a file")
    quick_gelu = resolve_quick_gelu(spec, architecture) if not name.startswith("hf-hub:") else bool(spec.quick_gelu)

    try:
        with torch.random.fork_rng(devices=[]), _quiet_random_init(pretrained is None and not name.startswith("hf-hub:")):
            torch.manual_seed(RANDOM_INIT_SEED)
            model = open_clip.create_model(architecture, pretrained=pretrained, force_quick_gelu=quick_gelu)
        tokenizer = open_clip.get_tokenizer(architecture)
    except (RuntimeError, OSError, KeyError, ValueError) as exc:
        raise ModelLoadError(f"cannot load model {name!r} with weights {pretrained!r}: {exc}") from exc
    check_supported(model)
    model.eval().requires_grad_(False).to(device)

    preprocess = model.visual.preprocess_cfg
    image_size = preprocess["size"] if isinstance(preprocess["size"], int) else preprocess["size"][0]
    identity = {
        "architecture": architecture,
        "config_sha256": _config_digest(config),
        "quick_gelu": quick_gelu,
        "weights_fingerprint": weights_fingerprint(model),
    }
    return ClipBase(
        spec=spec,
        model=model,
        tokenizer=tokenizer,
        image_size=int(image_size),
        mean=tuple(preprocess["mean"]),
        std=tuple(preprocess["std"]),
        identity=identity,
    )
