"""Adaptation works: facts on the starter model that fail when learning breaks (a wrong learning rate,
a method training the wrong tensors, a broken best-epoch selection, an `auto` rule that misreads the
task).

A reduced grid: 15 epochs with learning rates raised to suit them (the paper's rates are tuned for
ViT-B/16 and 100 epochs; `docs/results/` holds the full grid at the paper's settings). Each margin
asserted is well inside what was measured on two seeds (comments); seed 0 runs here.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from core.adapt.artifact import load_artifact, read_manifest, save_artifact
from core.adapt.data import Dataset, ImageSamples, build_transforms, load_dataset
from core.adapt.models import ClipBase, ModelSpec, load_base_model
from core.adapt.predictor import zero_shot_model
from core.adapt.recipe import parse_recipe
from core.adapt.trainer import TrainResult, evaluate, score_split, train
from core.jobs.catalog import load_catalog
from core.starter.tasks import write_task

CPU = torch.device("cpu")
EPOCHS = 15
# Learning rates for the 15-epoch budget (full fine-tuning at the paper's 5e-4 diverges; see README).
LR = {"linear_probe": 1e-2, "prompt_tuning": 5e-3, "layernorm": 1e-2, "adapter": 1e-2, "compacter": 5e-2,
      "full": 1e-4, "lora": 1e-2}


@pytest.fixture(scope="module")
def starter() -> ClipBase:
    return load_base_model(ModelSpec(**load_catalog("")["clipadapt-starter"].spec()))


@pytest.fixture(scope="module")
def tasks(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Dataset]:
    root = tmp_path_factory.mktemp("starter-tasks")
    return {name: load_dataset(write_task(name, root / name, train_per_class=32, test_per_class=20))
            for name in ("restyled", "outlines", "greek")}


@pytest.fixture(scope="module")
def zero_shot(starter: ClipBase, tasks: dict[str, Dataset]) -> dict[str, float]:
    """Zero-shot test accuracy per task (80 templates): restyled 0.84, outlines 0.22, greek 0.11."""
    _, eval_tf = build_transforms(**starter.preprocess)
    return {
        name: evaluate(zero_shot_model(starter, data.classnames),
                       ImageSamples([s for s in data.samples if s.split == "test"], eval_tf), CPU)["accuracy"]
        for name, data in tasks.items()
    }


def fit(starter: ClipBase, data: Dataset, method: str, shots: int, **fields) -> TrainResult:
    recipe = {"method": method, "shots": shots, "seed": 0, "epochs": EPOCHS, "val_per_class": 8}
    if method in LR:
        recipe["lr"] = LR[method]
    return train(starter, data, parse_recipe(recipe | fields), device=CPU)


# Measured test accuracy at 16 shots (seeds 0 / 1) against zero-shot's 0.22: linear probe 0.44 / 0.48,
# prompt tuning 0.31 / 0.35, LayerNorm 0.40 / 0.41, adapter 0.49 / 0.43, compacter 0.44 / 0.39,
# full 0.39 / 0.40, LoRA 0.41 / 0.40. A method that learns nothing keeps zero-shot's 0.22 (its best
# epoch is its untrained start) or worse. Prompt tuning is the noisiest in 15 epochs (0.26 to 0.34
# over learning rates 2e-3 to 1e-2), hence the margin of 0.05.
@pytest.mark.parametrize("method", list(LR))
def test_every_trained_method_beats_zero_shot_on_the_shifted_task_at_16_shots(starter, tasks, zero_shot, method) -> None:
    result = fit(starter, tasks["outlines"], method, shots=16)
    assert result.test_metrics["accuracy"] >= zero_shot["outlines"] + 0.05, (result.test_metrics, zero_shot)


# Measured 0.39 / 0.32 (seeds 0 / 1).
def test_layernorm_tuning_beats_zero_shot_at_4_shots(starter, tasks, zero_shot) -> None:
    result = fit(starter, tasks["outlines"], "layernorm", shots=4)
    assert result.test_metrics["accuracy"] >= zero_shot["outlines"] + 0.05, (result.test_metrics, zero_shot)


# Measured 0.24 -> 0.44 and 0.25 -> 0.48 (seeds 0 / 1).
def test_the_linear_probe_improves_from_1_to_16_shots(starter, tasks) -> None:
    one, sixteen = (fit(starter, tasks["outlines"], "linear_probe", shots=k).test_metrics["accuracy"] for k in (1, 16))
    assert sixteen >= one + 0.1, (one, sixteen)


def test_the_kept_artifact_is_the_best_epoch_and_scores_what_its_manifest_says(starter, tasks, tmp_path) -> None:
    """Two stages (LayerNorm, then adapters initialized by it): the artifact keeps the second stage's best
    validation epoch, and loaded back it scores on both splits exactly what the manifest records."""
    result = fit(starter, tasks["outlines"], "adapter", shots=4, layernorm="init", init_epochs=5)
    last_stage = [h for h in result.history if h["stage"] == max(h["stage"] for h in result.history)]
    assert result.val_metrics["accuracy"] == max(h["val"]["accuracy"] for h in last_stage)

    manifest = read_manifest(save_artifact(result, tmp_path / "artifact"))
    loaded = load_artifact(tmp_path / "artifact", starter)
    for split in ("val", "test"):
        scored = score_split(loaded, tasks["outlines"], result.recipe, split, CPU)
        assert scored["accuracy"] == manifest["metrics"][split]["accuracy"], split


@pytest.mark.parametrize(("task", "picked"), [
    ("restyled", "layernorm"),  # similar: zero-shot validation accuracy about 0.8
    ("greek", "compacter + LayerNorm (init)"),  # dissimilar: about 0.1
])
def test_auto_picks_by_the_task_s_similarity_to_pretraining(starter, tasks, task, picked) -> None:
    result = fit(starter, tasks[task], "auto", shots=4, epochs=1)
    assert result.auto_decision["picked"] == picked, result.auto_decision
