"""Zero-shot classifiers, prediction, and the auto recipe."""

from __future__ import annotations

import pytest
import torch
from open_clip import build_zero_shot_classifier
from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

from core.adapt.auto import choose_recipe
from core.adapt.data import ImageSamples, build_transforms, open_image
from core.adapt.methods.zero_shot import openai_templates
from core.adapt.predictor import Predictor, zero_shot_model
from core.adapt.recipe import AutoConfig, parse_recipe
from core.adapt.trainer import train


def test_zero_shot_uses_the_80_openai_templates_like_open_clip(tiny_base, digits):
    assert len(openai_templates()) == 80
    model = zero_shot_model(tiny_base, digits.classnames)
    ours = model.class_embeddings()
    theirs = build_zero_shot_classifier(tiny_base.model, tiny_base.tokenizer, digits.classnames, OPENAI_IMAGENET_TEMPLATES)
    torch.testing.assert_close(ours, theirs.T, atol=1e-5, rtol=1e-4)


def test_zero_shot_custom_templates(tiny_base):
    model = zero_shot_model(tiny_base, ["cat", "dog"], templates=["a {} photo.", "art of a {}."])
    assert model.head.num_templates == 2
    with pytest.raises(ValueError, match="exactly one"):
        parse_recipe({"method": "zero_shot", "templates": ["no slot"]})


def test_predictor_matches_the_model_and_ranks(tiny_base, digits):
    result = train(tiny_base, digits, parse_recipe({"method": "adapter", "shots": 4, "epochs": 2, "lr": 5e-3}))
    predictor = Predictor(result.adapted)
    paths = [s.path for s in digits.samples[:5]]
    predictions = predictor.predict([open_image(p) for p in paths], top_k=3)
    assert len(predictions) == 5 and all(len(p) == 3 for p in predictions)
    for ranked in predictions:
        probs = [p["probability"] for p in ranked]
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
    _, eval_tf = build_transforms(**tiny_base.preprocess)
    batch = torch.stack([ImageSamples(digits.samples[:5], eval_tf)[i][0] for i in range(5)])
    with torch.no_grad():
        expected = result.adapted(batch).softmax(-1).argmax(-1)
    assert [digits.classnames.index(p[0]["label"]) for p in predictions] == expected.tolist()
    assert len(predictor.predict([open_image(paths[0])], top_k=50)[0]) == len(digits.classnames)


@pytest.mark.parametrize(
    ("accuracy", "shots", "picked"),
    [(0.80, 4, ("layernorm", "none")), (0.20, 4, ("compacter", "init")), (0.20, 256, ("linear_probe", "init")),
     (0.90, 512, ("linear_probe", "init")), (0.55, 16, ("layernorm", "none")), (0.549, 17, ("linear_probe", "init"))],
)
def test_auto_follows_section_6(accuracy, shots, picked):
    recipe, decision = choose_recipe(AutoConfig(seed=3, batch_size=8), accuracy, shots)
    assert (recipe.method, recipe.layernorm) == picked
    assert recipe.seed == 3 and recipe.batch_size == 8
    assert decision["zero_shot_val_accuracy"] == accuracy
    assert f"{shots} shots per class" in decision["reason"] and "Figure" in decision["reason"]


def test_auto_measures_and_records_its_choice(tiny_base, digits):
    result = train(tiny_base, digits, parse_recipe({"method": "auto", "shots": 2, "epochs": 1}))
    decision = result.auto_decision
    assert decision["shots_per_class"] == 2
    expected = "layernorm" if decision["zero_shot_val_accuracy"] >= 0.55 else "compacter"
    assert result.recipe.method == expected
    assert decision["recipe"] == result.recipe.model_dump(mode="json")


def test_batching_predictor_gathers_concurrent_requests(tiny_base, digits):
    from concurrent.futures import ThreadPoolExecutor

    from core.adapt.predictor import BatchingPredictor

    predictor = Predictor(zero_shot_model(tiny_base, digits.classnames))
    batch_sizes = []
    original = predictor.probabilities
    predictor.probabilities = lambda images: (batch_sizes.append(len(images)), original(images))[1]
    batching = BatchingPredictor(predictor, max_batch=8, max_wait_ms=200)
    images = [open_image(s.path) for s in digits.samples[:12]]
    try:
        with ThreadPoolExecutor(12) as pool:
            results = list(pool.map(lambda image: batching.predict([image], top_k=2), images))
    finally:
        batching.close()
    alone = [Predictor(zero_shot_model(tiny_base, digits.classnames)).predict([image], top_k=2) for image in images]
    for together, single in zip(results, alone):
        assert [p["label"] for p in together[0]] == [p["label"] for p in single[0]]
        assert [p["probability"] for p in together[0]] == pytest.approx([p["probability"] for p in single[0]], abs=1e-5)
    assert sum(batch_sizes) == 12 and max(batch_sizes) <= 8 and len(batch_sizes) < 12


def test_batching_predictor_passes_errors_to_every_caller(tiny_base):
    from core.adapt.predictor import BatchingPredictor

    predictor = Predictor(zero_shot_model(tiny_base, ["a", "b"]))
    predictor.probabilities = lambda images: (_ for _ in ()).throw(RuntimeError("device lost"))
    batching = BatchingPredictor(predictor, max_wait_ms=1)
    try:
        with pytest.raises(RuntimeError, match="device lost"):
            batching.predict([], top_k=1)
    finally:
        batching.close()
