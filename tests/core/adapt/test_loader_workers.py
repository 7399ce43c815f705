"""Training images decoded and augmented in DataLoader worker processes: results depend on the seed
alone (not on the worker count, not on a resume), and workers start inside daemonic processes (a
Celery prefork worker) too."""

from __future__ import annotations

import multiprocessing

import pytest
import torch

from core.adapt.recipe import parse_recipe
from core.adapt.trainer import Checkpoint, TrainingCancelled, resolve_loader_workers, train
from tests.core.adapt.test_resume import KeepCheckpoints

# LoRA with LayerNorm init: both stages run the image tower every step, with random crops, and LoRA's
# dropout draws from the global random state the workers must leave alone.
RECIPE = {"method": "lora", "layernorm": "init", "shots": 4, "epochs": 2, "init_epochs": 1, "lr": 5e-3, "batch_size": 16}


def _same(a, b) -> None:
    assert a.history == b.history
    expected, got = dict(a.adapted.named_parameters()), dict(b.adapted.named_parameters())
    for name in a.trained_names:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=0, msg=name)
    assert a.test_metrics == b.test_metrics


def test_workers_give_the_same_run_every_time_and_for_any_count(tiny_base, digits):
    two = train(tiny_base, digits, parse_recipe(RECIPE), loader_workers=2)
    _same(two, train(tiny_base, digits, parse_recipe(RECIPE), loader_workers=2))
    _same(two, train(tiny_base, digits, parse_recipe(RECIPE), loader_workers=1))
    # The crops did change from the in-process loader's: the check above is not vacuous.
    assert two.history != train(tiny_base, digits, parse_recipe(RECIPE), loader_workers=0).history


@pytest.mark.parametrize("interrupted_after", [1, 2])  # end of the LayerNorm stage, mid LoRA stage
def test_resume_with_workers_matches_the_uninterrupted_run(tiny_base, digits, tmp_path, interrupted_after):
    uninterrupted = train(tiny_base, digits, parse_recipe(RECIPE), loader_workers=2)
    with pytest.raises(TrainingCancelled):
        train(tiny_base, digits, parse_recipe(RECIPE), callbacks=KeepCheckpoints(tmp_path, interrupted_after),
              loader_workers=2)
    torch.manual_seed(1234)  # another process
    checkpoint = Checkpoint.load(tmp_path / f"checkpoint-{interrupted_after - 1}.pt")
    _same(uninterrupted, train(tiny_base, digits, parse_recipe(RECIPE), resume=checkpoint, loader_workers=2))


def test_workers_start_in_a_daemonic_process(tiny_base, digits, monkeypatch):
    # Celery's prefork pool runs tasks in daemonic processes, where multiprocessing refuses children.
    config = multiprocessing.current_process()._config  # noqa: SLF001
    monkeypatch.setitem(config, "daemon", True)
    recipe = parse_recipe({**RECIPE, "layernorm": "none", "epochs": 1})
    result = train(tiny_base, digits, recipe, loader_workers=1)
    assert len(result.history) == 1 and config["daemon"] is True


def test_auto_uses_workers_on_cuda_only():
    assert resolve_loader_workers("auto", torch.device("cpu")) == 0
    assert 1 <= resolve_loader_workers("auto", torch.device("cuda")) <= 4
    assert resolve_loader_workers(3, torch.device("cpu")) == 3
