"""Artifacts of every method without training: the method's structure with its trained tensors set to
seeded random values, saved like a training run would. Fast enough for tests and the serving benchmark,
and the tensors differ from the base (training would start LayerNorms at the base's values)."""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from core.adapt.adapted import build_adapted, plan_stages
from core.adapt.artifact import save_artifact
from core.adapt.models import ClipBase
from core.adapt.recipe import parse_recipe
from core.adapt.trainer import TrainResult


def synthetic_result(base: ClipBase, method: str, classnames: list[str], layernorm: str = "none", seed: int = 0,
                     **options) -> TrainResult:
    recipe = parse_recipe({"method": method, "layernorm": layernorm, "seed": seed, **options})
    model, trained = build_adapted(copy.deepcopy(base.model), recipe, classnames, base.tokenizer, base.preprocess)
    generator = torch.Generator().manual_seed(seed)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name in sorted(trained):
            p = params[name]
            p.add_(0.05 * torch.randn(p.shape, generator=generator).to(p.device, p.dtype))
    return TrainResult(adapted=model.requires_grad_(False).eval(), recipe=recipe, stages=plan_stages(recipe), base=base,
                       class_ids=list(classnames), trained_names=trained, history=[], val_metrics={}, test_metrics=None)


def synthetic_artifact(base: ClipBase, method: str, classnames: list[str], out: Path, layernorm: str = "none", seed: int = 0,
                       **options) -> Path:
    return save_artifact(synthetic_result(base, method, classnames, layernorm, seed, **options), out)
