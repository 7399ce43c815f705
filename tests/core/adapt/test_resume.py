"""Checkpoints: a run resumed from any epoch's checkpoint, in a fresh process state, ends exactly where
the uninterrupted run ends."""

from __future__ import annotations

import pytest
import torch

from core.adapt.recipe import parse_recipe
from core.adapt.trainer import Checkpoint, NoCallbacks, TrainingCancelled, train


class KeepCheckpoints(NoCallbacks):
    def __init__(self, tmp_path, stop_after: int | None = None):
        self.tmp_path, self.saved, self.stop_after = tmp_path, [], stop_after

    def on_checkpoint(self, make):
        path = self.tmp_path / f"checkpoint-{len(self.saved)}.pt"
        make().save(path)
        self.saved.append(path)

    def should_stop(self):
        return self.stop_after is not None and len(self.saved) >= self.stop_after


RECIPE = {"method": "adapter", "layernorm": "init", "shots": 4, "epochs": 2, "init_epochs": 2, "lr": 5e-3,
          "feature_views": None, "batch_size": 16}


@pytest.mark.parametrize("interrupted_after", [1, 2, 3])  # mid first stage, end of it, mid second stage
def test_resumed_run_matches_the_uninterrupted_run(tiny_base, digits, tmp_path, interrupted_after):
    torch.manual_seed(0)
    full_callbacks = KeepCheckpoints(tmp_path / "full")
    (tmp_path / "full").mkdir()
    uninterrupted = train(tiny_base, digits, parse_recipe(RECIPE), callbacks=full_callbacks)
    assert len(full_callbacks.saved) == 4  # one per epoch of both stages

    (tmp_path / "cut").mkdir()
    with pytest.raises(TrainingCancelled):
        train(tiny_base, digits, parse_recipe(RECIPE), callbacks=KeepCheckpoints(tmp_path / "cut", interrupted_after))
    checkpoint = Checkpoint.load(tmp_path / "cut" / f"checkpoint-{interrupted_after - 1}.pt")
    torch.manual_seed(1234)  # another process: its random state is not the interrupted one's
    resumed = train(tiny_base, digits, parse_recipe(RECIPE), resume=checkpoint)

    assert [h["epoch"] for h in resumed.history] == [1, 2, 1, 2]
    assert [h["train_loss"] for h in resumed.history] == pytest.approx([h["train_loss"] for h in uninterrupted.history])
    expected, got = dict(uninterrupted.adapted.named_parameters()), dict(resumed.adapted.named_parameters())
    for name in uninterrupted.trained_names:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=1e-6)
    assert resumed.test_metrics == uninterrupted.test_metrics


LORA = {"method": "lora", "shots": 4, "epochs": 3, "init_epochs": 2, "lr": 5e-3, "batch_size": 16, "dropout": 0.25}


@pytest.mark.parametrize(("layernorm", "interrupted_after"), [("none", 2), ("init", 1), ("init", 2), ("init", 4)])
def test_resumed_lora_run_matches_the_uninterrupted_run(tiny_base, digits, tmp_path, layernorm, interrupted_after):
    # LoRA draws a dropout mask per block forward and initializes A randomly when its stage is built
    # (after the LayerNorm stage with 'init'): both must come out the same after a resume.
    recipe = {**LORA, "layernorm": layernorm}
    uninterrupted = train(tiny_base, digits, parse_recipe(recipe))
    with pytest.raises(TrainingCancelled):
        train(tiny_base, digits, parse_recipe(recipe), callbacks=KeepCheckpoints(tmp_path, interrupted_after))
    checkpoint = Checkpoint.load(tmp_path / f"checkpoint-{interrupted_after - 1}.pt")
    torch.manual_seed(1234)  # another process
    resumed = train(tiny_base, digits, parse_recipe(recipe), resume=checkpoint)

    assert resumed.history == uninterrupted.history  # train losses and validation metrics, epoch by epoch
    assert resumed.trained_names == uninterrupted.trained_names
    assert any("lora_a" in n for n in resumed.trained_names) and any("lora_b" in n for n in resumed.trained_names)
    expected, got = dict(uninterrupted.adapted.named_parameters()), dict(resumed.adapted.named_parameters())
    for name in uninterrupted.trained_names:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=0, msg=name)
    assert resumed.val_metrics == uninterrupted.val_metrics and resumed.test_metrics == uninterrupted.test_metrics


def test_resume_keeps_the_auto_decision(tiny_base, digits, tmp_path):
    callbacks = KeepCheckpoints(tmp_path, stop_after=1)
    with pytest.raises(TrainingCancelled):
        train(tiny_base, digits, parse_recipe({"method": "auto", "shots": 2, "epochs": 2}), callbacks=callbacks)
    checkpoint = Checkpoint.load(callbacks.saved[0])
    resumed = train(tiny_base, digits, parse_recipe({"method": "auto", "shots": 2, "epochs": 2}), resume=checkpoint)
    assert resumed.auto_decision == checkpoint.auto_decision
    assert resumed.recipe.model_dump(mode="json") == checkpoint.recipe
