"""Serving deltas over one shared base: every method gives load_artifact's logits, deltas are small,
mixed batches group correctly, and the device LRU evicts."""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from core.adapt.artifact import CLASSIFIER_FILE, ArtifactError, load_artifact
from core.adapt.data import open_image
from core.adapt.methods import METHODS
from core.adapt.predictor import Predictor, zero_shot_model
from core.adapt.serving import ServingEngine, load_delta, zero_shot_delta
from core.adapt.models import ModelSpec, load_base_model
from tests.helpers.artifacts import synthetic_artifact
from tests.helpers.pretrained import TINY_CONFIG

CASES = [
    (name, mode)
    for name, method in METHODS.items()
    for mode in (("none", "joint", "init") if method.config.supports_layernorm else ("none",))
]
IDS = [f"{name}-{mode}" for name, mode in CASES]
# Methods whose image tower differs from the base's; SEPARATE ones run their own forward (not LayerNorm
# tensors and LoRA updates, which ride the shared pass per image).
SEPARATE = {(n, m) for n, m in CASES if n == "full"}
TOWER = {("layernorm", "none")} | SEPARATE | {(n, m) for n, m in CASES if m != "none" or n == "lora"}


@pytest.fixture(scope="module")
def tiny_base():
    """Random weights are enough to compare two computations (and skip the session's pretraining)."""
    return load_base_model(ModelSpec(name=str(TINY_CONFIG)))


@pytest.fixture(scope="module")
def artifacts(tiny_base, digits, tmp_path_factory):
    root = tmp_path_factory.mktemp("artifacts")
    return {case: synthetic_artifact(tiny_base, case[0], digits.classnames, root / "-".join(case), layernorm=case[1], seed=i)
            for i, case in enumerate(CASES)}


@pytest.fixture(scope="module")
def engine(tiny_base):
    engine = ServingEngine(tiny_base)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def photos(digits):
    return [open_image(s.path) for s in digits.samples[:6]]


def reference(tiny_base, path, photos):
    return Predictor(load_artifact(path, tiny_base)).probabilities(photos)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_delta_served_probabilities_equal_load_artifact(tiny_base, artifacts, engine, photos, case):
    delta = engine.load(artifacts[case])
    assert delta.own_tower == (case in TOWER)  # only image-tower methods carry image-tower tensors
    served = engine.probabilities([delta], engine.pixels(photos))[0]
    torch.testing.assert_close(served, reference(tiny_base, artifacts[case], photos), rtol=0, atol=1e-6)


@pytest.mark.parametrize("options", [{"targets": ["q", "v", "out"], "rank": 3, "alpha": 6.0}, {"encoders": ["text"]}],
                         ids=["qv-out-rank3", "text-only"])
def test_lora_variants_served_equal_load_artifact(tiny_base, engine, photos, digits, tmp_path, options):
    path = synthetic_artifact(tiny_base, "lora", digits.classnames, tmp_path / "lora", seed=7, **options)
    delta = engine.load(path)
    # The delta keeps the factors (kilobytes), not merged weights; a text-only LoRA shares the base's tower.
    assert delta.own_tower == ("image" in options.get("encoders", ["image"])) and not delta.visual
    served = engine.probabilities([delta], engine.pixels(photos))[0]
    torch.testing.assert_close(served, reference(tiny_base, path, photos), rtol=0, atol=1e-6)


def test_mixed_batch_of_every_method_from_concurrent_requests(tiny_base, artifacts, engine, photos):
    deltas = {case: engine.load(path) for case, path in artifacts.items()}
    expected = {case: reference(tiny_base, artifacts[case], photos) for case in CASES}
    calls = []
    original = engine.features.forward
    engine.features.forward = lambda *a: (calls.append(len(a[0])), original(*a))[1]
    try:
        gate = threading.Barrier(len(CASES))

        def one(case):
            gate.wait()
            return engine.probabilities([deltas[case]], engine.pixels(photos))[0]

        with ThreadPoolExecutor(len(CASES)) as pool:
            results = dict(zip(CASES, pool.map(one, CASES)))
        # One request comparing every model on the same images.
        together = engine.probabilities(list(deltas.values()), engine.pixels(photos))
    finally:
        del engine.features.forward
    for case, probabilities in zip(CASES, together):
        torch.testing.assert_close(results[case], expected[case], rtol=0, atol=1e-6)
        torch.testing.assert_close(probabilities, expected[case], rtol=0, atol=1e-6)
    # The combined request: one shared pass holding the images once for all base-tower models and once per
    # LayerNorm or LoRA model (per-sample deltas), and one forward per full model's own tower.
    shared_pass = (1 + len(TOWER - SEPARATE)) * len(photos)
    assert sorted(calls[-1 - len(SEPARATE):]) == sorted([len(photos)] * len(SEPARATE) + [shared_pass])
    assert len(calls) < 2 * len(CASES) + 1  # concurrent requests were batched, not run one by one


def test_shared_base_is_left_untouched(tiny_base, artifacts, engine, photos):
    before = {n: (p.clone(), p.requires_grad) for n, p in tiny_base.model.named_parameters()}
    engine.probabilities([engine.load(artifacts["layernorm", "none"]), engine.load(artifacts["full", "none"])], engine.pixels(photos))
    for name, p in tiny_base.model.named_parameters():
        assert torch.equal(p, before[name][0]) and p.requires_grad == before[name][1], name


def test_delta_is_small_and_cold_load_runs_no_text_tower(tiny_base, artifacts, engine, monkeypatch):
    base_bytes = sum(p.numel() * p.element_size() for p in tiny_base.model.parameters())
    for case in CASES:
        if case[0] != "full":
            assert engine.load(artifacts[case]).nbytes < base_bytes / 10, case
    monkeypatch.setattr(tiny_base.model.transformer, "forward", lambda *a, **k: pytest.fail("text tower ran"))
    monkeypatch.setattr("core.adapt.serving.load_artifact", lambda *a: pytest.fail("model rebuilt"))
    for case in CASES:
        engine.load(artifacts[case])


def test_legacy_artifact_without_classifier_file(tiny_base, artifacts, engine, photos, tmp_path):
    import shutil

    legacy = shutil.copytree(artifacts["adapter", "joint"], tmp_path / "legacy")
    os.remove(legacy / CLASSIFIER_FILE)
    served = engine.probabilities([engine.load(legacy)], engine.pixels(photos))[0]
    torch.testing.assert_close(served, reference(tiny_base, legacy, photos), rtol=0, atol=1e-6)


def test_zero_shot_delta_matches_zero_shot_predictor(tiny_base, engine, digits, photos):
    served = engine.probabilities([zero_shot_delta(tiny_base, digits.classnames)], engine.pixels(photos))[0]
    torch.testing.assert_close(served, Predictor(zero_shot_model(tiny_base, digits.classnames)).probabilities(photos), rtol=0, atol=1e-6)


def test_device_lru_evicts_least_recently_used(tiny_base, artifacts, monkeypatch):
    engine = ServingEngine(tiny_base, device_cache_size=2)
    try:
        engine.device = torch.device("meta")  # any non-CPU device takes the LRU path; meta copies cost nothing
        deltas = [load_delta(artifacts[case], tiny_base) for case in CASES[:3]]
        first = engine.on_device("a", deltas[0])
        assert first.classifier["logit_scale"].device.type == "meta"
        engine.on_device("b", deltas[1])
        assert engine.on_device("a", deltas[0]) is first  # a hit, and now the most recent
        engine.on_device("c", deltas[2])
        assert list(engine._on_device) == ["a", "c"]
    finally:
        engine.device = torch.device("cpu")
        engine.close()


def test_errors(tiny_base, artifacts, engine, tmp_path, digits):
    with pytest.raises(ArtifactError, match="manifest.json is missing"):
        engine.load(tmp_path)
    assert engine.probabilities([engine.load(artifacts["adapter", "none"])], engine.pixels([]))[0].shape == (0, len(digits.classnames))
    ranked = engine.predict([engine.load(artifacts["adapter", "none"])], [open_image(digits.samples[0].path)], top_k=3)
    assert len(ranked) == 1 and len(ranked[0]) == 1 and len(ranked[0][0]) == 3
