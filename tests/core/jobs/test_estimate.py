"""Recipe checks made before a job exists: the training-set size they work from is the one training
will sample, counted from the dataset's stored split counts alone."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.adapt.data import Dataset, Sample, make_splits
from core.adapt.methods.base import ScheduleError
from core.adapt.recipe import parse_recipe
from core.jobs.estimate import check_schedule, plan, train_images


def _dataset(per_class: list[int], val: int = 0) -> Dataset:
    """Unequal classes; `val` images per class in the dataset's own val split."""
    samples = [Sample(Path(f"c{c}/{i}.png"), c, None) for c, n in enumerate(per_class) for i in range(n)]
    samples += [Sample(Path(f"c{c}/val{i}.png"), c, "val") for c in range(len(per_class)) for i in range(val)]
    ids = [f"c{c}" for c in range(len(per_class))]
    return Dataset(Path("."), ids, ids, samples)


@pytest.mark.parametrize("per_class", [[1, 5, 30], [12, 12], [40, 3, 7, 100]])
@pytest.mark.parametrize("own_val", [0, 2])
@pytest.mark.parametrize(("shots", "val_per_class"), [(None, None), (None, 4), (4, None), (16, 2), (64, None)])
def test_train_images_is_what_make_splits_samples(per_class, own_val, shots, val_per_class):
    dataset = _dataset(per_class, own_val)
    expected = len(make_splits(dataset, shots, seed=0, val_per_class=val_per_class).train)
    assert train_images(dataset.split_counts(), shots, val_per_class) == expected


def test_check_schedule_refuses_what_training_would_refuse():
    counts = _dataset([20] * 10).split_counts()  # 16 shots of 10 classes: 160 images, 5 steps an epoch
    with pytest.raises(ScheduleError, match="1,600 epochs"):
        check_schedule(parse_recipe({"method": "lora", "shots": 16}), counts)
    check_schedule(parse_recipe({"method": "lora", "shots": 16, "iterations_per_shot": 300}), counts)
    check_schedule(parse_recipe({"method": "lora", "shots": 16, "epochs": 10}), counts)
    check_schedule(parse_recipe({"method": "layernorm", "shots": 16}), counts)  # epochs, not steps
    # The planned stages are the trainer's: 300 x 16 steps in 5-step epochs, LayerNorm init first.
    planned = plan(parse_recipe({"method": "lora", "shots": 16, "iterations_per_shot": 300, "layernorm": "init"}), 160)
    assert [(s.name, s.epochs) for s in planned] == [("layernorm_init", 960), ("lora", 960)]
