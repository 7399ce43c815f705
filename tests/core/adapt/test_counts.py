"""Figure 2 of the paper: exact trainable-parameter counts on the real ViT-B/16 architecture."""

from __future__ import annotations

import pytest

from core.adapt.adapted import count_trainable
from core.adapt.methods import METHODS
from core.adapt.models import ModelSpec, load_base_model

# What each method declares (Figure 2 of the paper for the paper's methods).
FIGURE_2 = {name: method.vit_b16.fixed for name, method in METHODS.items() if not method.vit_b16.per_class}


def test_declared_counts_are_figure_2():
    """The paper's numbers, written out once here so that a changed declaration cannot go unnoticed."""
    paper = {"zero_shot": 0, "linear_probe": 0, "prompt_tuning": 4_096, "compacter": 19_360, "layernorm": 65_536,
             "adapter": 301_344, "full": 149_620_737}
    assert {name: METHODS[name].vit_b16.fixed for name in paper} == paper
    assert METHODS["linear_probe"].vit_b16.per_class == 769


@pytest.fixture(scope="module")
def vit_b16():
    return load_base_model(ModelSpec(name="ViT-B-16"))  # random weights: the counts depend on shapes only


@pytest.mark.slow
@pytest.mark.parametrize("classes", [10, 100])
def test_figure_2_counts_on_vit_b16(vit_b16, classes):
    counts = {
        name: count_trainable(vit_b16.model, METHODS[name].config(), classes, vit_b16.tokenizer, vit_b16.preprocess)
        for name in METHODS
    }
    assert counts == {name: method.vit_b16.at(classes) for name, method in METHODS.items()}


@pytest.mark.slow
def test_layernorm_combinations_add_the_layernorm_parameters(vit_b16):
    def count(name, mode):
        return count_trainable(vit_b16.model, METHODS[name].config(layernorm=mode), 10, vit_b16.tokenizer, vit_b16.preprocess)

    # Joint linear probe tunes only the image tower's LayerNorms: 768 * 2 * (2 per block * 12 + ln_pre + ln_post).
    assert count("linear_probe", "joint") == 7_690 + 39_936
    assert count("linear_probe", "init") == 7_690 + 65_536
    for name in [n for n, m in METHODS.items() if m.config.supports_layernorm and n != "linear_probe"]:
        assert count(name, "joint") == count(name, "init") == FIGURE_2[name] + 65_536


@pytest.mark.slow
def test_layernorm_last_blocks(vit_b16):
    count = count_trainable(vit_b16.model, METHODS["layernorm"].config(last_blocks=2), 10, vit_b16.tokenizer, vit_b16.preprocess)
    # 2 blocks x 2 LayerNorms x (768 + 512) x 2, plus ln_post (2 x 768) and ln_final (2 x 512).
    assert count == 2 * 2 * (768 + 512) * 2 + 2 * 768 + 2 * 512
