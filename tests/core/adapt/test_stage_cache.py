"""Shared stages: a run that takes its LayerNorm-init stage from another run's (a sweep's trials share
it) ends exactly where it would have ended training that stage itself, and a stage is only reused
when everything it depends on is the same."""

from __future__ import annotations

import pytest
import torch

from core.adapt.recipe import parse_recipe
from core.adapt.trainer import MemoryStageCache, NoCallbacks, train

# The init stage has LayerNorm's own learning rate, so these recipes share it whatever their `lr`; it
# takes the other shared fields from the recipe (LoRA's default weight decay is its own, so it is set).
INIT = {"layernorm": "init", "shots": 4, "epochs": 2, "init_epochs": 2, "batch_size": 16, "feature_views": 1,
        "weight_decay": 0.02}


class Recording(NoCallbacks):
    def __init__(self) -> None:
        self.stages: list[int] = []
        self.epochs: list[tuple[int, int]] = []
        self.messages: list[str] = []

    def on_stage_start(self, stage, name, epochs):
        self.stages.append(stage)

    def on_epoch_end(self, report):
        self.epochs.append((report.stage, report.epoch))

    def on_message(self, message):
        self.messages.append(message)


def _assert_same_run(got, expected) -> None:
    assert got.history == expected.history
    params, wanted = dict(got.adapted.named_parameters()), dict(expected.adapted.named_parameters())
    assert got.trained_names == expected.trained_names
    for name in expected.trained_names:
        torch.testing.assert_close(params[name], wanted[name], rtol=0, atol=0)
    assert got.val_metrics == expected.val_metrics and got.test_metrics == expected.test_metrics


@pytest.mark.parametrize("method", ["lora", "adapter"])  # LoRA draws its initialization after the init stage
def test_a_reused_init_stage_gives_the_run_it_would_have_trained(tiny_base, digits, method):
    cache = MemoryStageCache()
    train(tiny_base, digits, parse_recipe({**INIT, "method": "linear_probe", "lr": 1e-2}), stage_cache=cache)
    assert len(cache.outcomes) == 1

    callbacks = Recording()
    recipe = {**INIT, "method": method, "lr": 5e-3}
    reused = train(tiny_base, digits, parse_recipe(recipe), callbacks=callbacks, stage_cache=cache)
    assert callbacks.stages == [1] and [stage for stage, _ in callbacks.epochs] == [1, 1]  # stage 0 not trained
    assert any("stage 0 (layernorm_init) reused" in m for m in callbacks.messages)
    assert len(cache.outcomes) == 1  # the last stage is never kept

    torch.manual_seed(99)  # another process: train() seeds itself
    _assert_same_run(reused, train(tiny_base, digits, parse_recipe(recipe)))
    assert [h["stage"] for h in reused.history] == [0, 0, 1, 1]


@pytest.mark.parametrize("change", [{"seed": 1}, {"shots": 2}, {"init_epochs": 1}, {"batch_size": 8}, {"weight_decay": 0.01}])
def test_a_stage_that_differs_in_anything_is_trained(tiny_base, digits, change):
    cache = MemoryStageCache()
    train(tiny_base, digits, parse_recipe({**INIT, "method": "linear_probe"}), stage_cache=cache)
    callbacks = Recording()
    train(tiny_base, digits, parse_recipe({**INIT, "method": "linear_probe", **change}), callbacks=callbacks, stage_cache=cache)
    assert callbacks.stages == [0, 1] and len(cache.outcomes) == 2


def test_an_outcome_from_another_random_state_is_not_reused(tiny_base, digits):
    cache = MemoryStageCache()
    recipe = parse_recipe({**INIT, "method": "linear_probe"})
    train(tiny_base, digits, recipe, stage_cache=cache)
    (outcome,) = cache.outcomes.values()
    outcome.start_torch_rng_state = torch.Generator().manual_seed(12345).get_state()
    callbacks = Recording()
    train(tiny_base, digits, recipe, callbacks=callbacks, stage_cache=cache)
    assert callbacks.stages == [0, 1] and not any("reused" in m for m in callbacks.messages)


def test_each_epoch_reports_the_parameters_trained_so_far(tiny_base, digits):
    """A sweep shows a trial's size even when it is stopped early: the last stage's reports carry the
    count the result would have; the init stage's, only its LayerNorms."""
    reports = []

    class Reports(NoCallbacks):
        def on_epoch_end(self, report):
            reports.append((report.stage, report.final_stage, report.trainable_params))

    result = train(tiny_base, digits, parse_recipe({**INIT, "method": "adapter"}), callbacks=Reports())
    layernorm = train(tiny_base, digits, parse_recipe({**INIT, "method": "layernorm", "layernorm": "none"})).trainable_params
    assert reports == [(0, False, layernorm)] * 2 + [(1, True, result.trainable_params)] * 2
    assert 0 < layernorm < result.trainable_params
