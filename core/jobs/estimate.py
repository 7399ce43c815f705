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


def plan(recipe: RecipeBase, train_size: int | None = None) -> list[PlannedStage]:
    """The stages a job would train for `recipe` (not `auto`: it picks its recipe when the job runs)
    on `train_size` training images (`train_images`; methods whose schedule is in steps need it).
    Raises ScheduleError when the schedule is out of range on that data."""
    from core.adapt.adapted import plan_stages

    return [PlannedStage(s.name, s.epochs, s.recipe.batch_size) for s in plan_stages(recipe, train_size)]


def train_images(split_counts: dict[str, dict[str, int]], shots: int | None, val_per_class: int | None = None) -> int:
    """Training images a job samples from a dataset with these `split_counts` (Dataset.split_counts),
    without opening it: the count `make_splits` gives (a test keeps the two equal)."""
    pool = list(split_counts.get("train", {}).values())
    if shots is not None:
        return sum(min(shots, n) for n in pool)
    if "val" in split_counts or not pool:  # its own val split: the whole pool trains
        return sum(pool)
    per_class = val_per_class if val_per_class is not None else max(1, min(pool) // 10)
    return sum(n - max(0, min(per_class, n - 1)) for n in pool)  # never the last image of a class


def check_schedule(recipe: RecipeBase, split_counts: dict[str, dict[str, int]]) -> None:
    """Raise ScheduleError when `recipe`'s schedule is out of range on a dataset with these counts,
    so a job that could only fail is refused when it is submitted. Torch-free (the API calls it)."""
    recipe.resolved_epochs(train_images(split_counts, recipe.shots, recipe.val_per_class))


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
