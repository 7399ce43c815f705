"""A recipe's cost before it is submitted (the dashboard's form): its stages, and the parameters it
trains on the base model's architecture. Imports torch when called, never on import."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from core.adapt.methods import RecipeBase


@dataclass(frozen=True)
class PlannedStage:
    name: str
    epochs: int
    batch_size: int


def plan(recipe: RecipeBase) -> list[PlannedStage]:
    """The stages a job would train for `recipe` (not `auto`: it picks its recipe when the job runs)."""
    from core.adapt.adapted import plan_stages

    return [PlannedStage(s.name, s.epochs, s.recipe.batch_size) for s in plan_stages(recipe)]


@functools.lru_cache(maxsize=1)
def _architecture(spec_json: str) -> Any:
    """The base model's architecture with random weights: counts do not depend on the weights, and this
    never downloads any. The last one is kept, as the form asks again on every change."""
    from core.adapt.models import ModelSpec, load_base_model

    return load_base_model(ModelSpec(**{**json.loads(spec_json), "pretrained": None}))


def count_trainable(spec: dict[str, Any], recipe: RecipeBase, classes: int) -> int:
    """Parameters `recipe` trains on the base model `spec` with `classes` classes, counted on the real
    architecture as `clipadapt methods` counts. Slow the first time (builds the model): call it off the
    event loop. The cached model stays unadapted (the count adapts a deep copy)."""
    from core.adapt.adapted import count_trainable as count

    base = _architecture(json.dumps(spec, sort_keys=True))
    return count(base.model, recipe, classes, base.tokenizer, base.preprocess)
