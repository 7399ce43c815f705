"""The method table: every method in METHODS, with every LayerNorm combination it supports, goes through
the same tests on the tiny model."""

from __future__ import annotations

import copy
import re

import pytest
import torch
import torch.nn.functional as F

from core.adapt.adapted import build_adapted, plan_stages
from core.adapt.artifact import load_artifact, read_manifest, save_artifact
from core.adapt.methods import METHODS
from core.adapt.methods.layernorm import LAYERNORM_NAMES
from core.adapt.recipe import parse_recipe
from core.adapt.trainer import train

CASES = [
    (name, mode)
    for name, method in METHODS.items()
    for mode in (("none", "joint", "init") if method.config.supports_layernorm else ("none",))
]
IDS = [f"{name}-{mode}" for name, mode in CASES]

LAYERNORM = re.compile(LAYERNORM_NAMES)
VISUAL_LAYERNORM = re.compile(r"^clip\.visual\.")


def expected_trained(name: str, mode: str, all_names: list[str]) -> set[str]:
    own = {n for n in all_names if re.match(METHODS[name].trains, n)}
    if mode == "none":
        return own
    layernorms = {n for n in all_names if LAYERNORM.match(n)}
    if mode == "joint" and name == "linear_probe":  # the text tower is not on its path
        layernorms = {n for n in layernorms if VISUAL_LAYERNORM.match(n)}
    return own | layernorms


def build(base, name, mode, classnames):
    recipe = parse_recipe({"method": name, "layernorm": mode})
    return build_adapted(copy.deepcopy(base.model), recipe, classnames, base.tokenizer, base.preprocess)


def images(n=4, size=32):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize(("name", "mode"), CASES, ids=IDS)
def test_trainable_set_is_what_the_method_names(tiny_base, digits, name, mode):
    model, trained = build(tiny_base, name, mode, digits.classnames)
    names = [n for n, _ in model.named_parameters()]
    assert trained == expected_trained(name, mode, names)
    if mode != "init":  # with 'init' the LayerNorms trained in the first stage are frozen in the second
        assert set(model.trainable_parameters()) == trained


@pytest.mark.parametrize(("name", "mode"), CASES, ids=IDS)
def test_frozen_tensors_are_bit_identical_after_a_step(tiny_base, digits, name, mode):
    model, _ = build(tiny_base, name, mode, digits.classnames)
    trainable = model.trainable_parameters()
    before = {n: p.detach().clone() for n, p in model.state_dict().items()}
    if trainable:
        optimizer = torch.optim.AdamW(trainable.values(), lr=1e-2, weight_decay=0.02)
        labels = torch.arange(4) % len(digits.classnames)
        F.cross_entropy(model(images()), labels).backward()
        optimizer.step()
    after = model.state_dict()
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    frozen = set(before) - set(trainable)
    assert not changed & frozen
    if trainable:
        assert changed, "a training step changed nothing"


# New heads (a linear layer, learned prompt vectors) are not the identity by design.
IDENTITY_CASES = [(name, mode) for name, mode in CASES if name not in {"linear_probe", "prompt_tuning"}]


@pytest.mark.parametrize(("name", "mode"), IDENTITY_CASES, ids=[f"{n}-{m}" for n, m in IDENTITY_CASES])
def test_injected_modules_leave_outputs_unchanged_before_training(tiny_base, digits, name, mode):
    """Adapters and compacters start as the identity; LayerNorm and full tuning change nothing until they
    train: class embeddings equal the base model's with the same templates, image embeddings too."""
    model, _ = build(tiny_base, name, mode, digits.classnames)
    reference, _ = build(tiny_base, "zero_shot", "none", digits.classnames)
    reference.head = model.head  # the same prompts, on the untouched base
    with torch.no_grad():
        torch.testing.assert_close(model.class_embeddings(), reference.class_embeddings())
        torch.testing.assert_close(model.encode_images(images()), reference.encode_images(images()))


@pytest.mark.parametrize(("name", "mode"), CASES, ids=IDS)
def test_training_beats_chance_and_round_trips(tiny_base, digits, tmp_path, name, mode):
    recipe = parse_recipe({"method": name, "layernorm": mode, "shots": 8, "epochs": 4, "init_epochs": 2,
                           "lr": 1e-4 if name == "full" else 5e-3})
    result = train(tiny_base, digits, recipe)
    chance = 1 / len(digits.classnames)
    assert result.test_metrics["accuracy"] >= 4 * chance
    assert len(result.history) == sum(s.epochs for s in plan_stages(recipe) if s.recipe.method != "zero_shot")
    if result.history:
        losses = [h["train_loss"] for h in result.history if h["stage"] == len(plan_stages(recipe)) - 1]
        assert losses[-1] < losses[0]

    out = save_artifact(result, tmp_path / "artifact")
    manifest = read_manifest(out)
    assert manifest["recipe"]["method"] == name and manifest["classnames"] == digits.classnames
    assert manifest["trainable_params"] == result.trainable_params
    assert manifest["metrics"]["test"]["accuracy"] == result.test_metrics["accuracy"]
    loaded = load_artifact(out, tiny_base)
    with torch.no_grad():
        torch.testing.assert_close(loaded(images()), result.adapted(images()), rtol=0, atol=1e-5)


FROZEN_IMAGE_METHODS = ["linear_probe", "prompt_tuning", "adapter", "compacter"]


@pytest.mark.parametrize("name", FROZEN_IMAGE_METHODS)
def test_cached_image_features_train_like_the_uncached_path(tiny_base, digits, monkeypatch, name):
    """With deterministic transforms both paths see identical features in identical batches, so the
    cache changes speed, not results."""
    from core.adapt import trainer

    eval_only = trainer.build_transforms(**tiny_base.preprocess)[1]
    monkeypatch.setattr(trainer, "build_transforms", lambda **_: (eval_only, eval_only))
    results = [
        train(tiny_base, digits, parse_recipe({"method": name, "shots": 4, "epochs": 3, "lr": 5e-3, "feature_views": views}))
        for views in (None, 2)
    ]
    uncached, cached = (dict(r.adapted.named_parameters()) for r in results)
    for param_name in results[0].trained_names:
        torch.testing.assert_close(cached[param_name], uncached[param_name], atol=1e-4, rtol=1e-4)
    assert [h["train_loss"] for h in results[0].history] == pytest.approx([h["train_loss"] for h in results[1].history], rel=1e-4)
