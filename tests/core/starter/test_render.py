"""The starter's generator: deterministic, true to its vocabulary, and holding out what it says."""

from __future__ import annotations

import colorsys
from collections import Counter

import numpy as np
import pytest
import torch

from core.starter import render
from core.starter.pretrain import true_captions
from core.starter.tasks import TASKS, write_task


def test_a_sample_is_a_pure_function_of_seed_and_index() -> None:
    scene_a, image_a, caption_a = render.pretraining_sample(3, 41)
    scene_b, image_b, caption_b = render.pretraining_sample(3, 41)
    assert scene_a == scene_b and caption_a == caption_b
    assert np.array_equal(np.asarray(image_a), np.asarray(image_b))
    _, image_c, _ = render.pretraining_sample(4, 41)
    assert not np.array_equal(np.asarray(image_a), np.asarray(image_c)) or image_a.size != image_c.size


def test_held_out_pairs_are_never_drawn_and_the_vocabulary_is_covered() -> None:
    scenes = [render.pretraining_sample(0, i)[0] for i in range(3000)]
    shapes = [s for s in scenes if s.kind == "shape"]
    assert not {(s.colour, s.thing) for s in shapes} & render.HELD_OUT_PAIRS
    assert {s.colour for s in shapes} == set(render.COLOURS)
    assert {s.thing for s in shapes} == set(render.SHAPES)
    assert {s.count for s in shapes} == {1, 2, 3}
    assert {s.background for s in scenes} == set(render.BACKGROUNDS)
    assert {s.size for s in shapes} == set(render.SIZES)
    chars = [s for s in scenes if s.kind == "char"]
    assert {s.font for s in chars} == set(render.FONTS)
    assert any(s.thing in render.DIGITS for s in chars) and any(s.thing in render.LETTERS for s in chars)
    sizes = Counter(render.pretraining_sample(0, i)[1].width for i in range(300))
    assert min(sizes) < 48 and max(sizes) > 128


@pytest.mark.parametrize("name", list(render.COLOURS))
def test_sampled_colours_stay_inside_their_name(name: str) -> None:
    ranges = render.COLOURS[name]
    for i in range(200):
        r, g, b = render.sample_colour(render.scene_rng(9, i), name)
        h, s, v = colorsys.rgb_to_hsv(r / 255, g / 255, b / 255)
        if v > 0.2:  # on near-black colours, 8-bit rounding moves the saturation a lot
            assert ranges["s"][0] - 0.01 <= s <= ranges["s"][1] + 0.01
        assert ranges["v"][0] - 0.01 <= v <= ranges["v"][1] + 0.01
        if ranges["h"][1] - ranges["h"][0] < 360 and s > 0.05:
            hue = h * 360 if h * 360 >= ranges["h"][0] - 1 else h * 360 + 360  # ranges may wrap past 360
            assert ranges["h"][0] - 1 <= hue <= ranges["h"][1] + 1


def test_captions_state_what_is_drawn() -> None:
    for i in range(300):
        scene, _, caption = render.pretraining_sample(1, i)
        words = caption.text.replace(".", "").split()
        if "colour" in caption.mentions:
            assert scene.colour in words
        if scene.kind == "shape":
            noun = render.plural(scene.thing) if scene.count > 1 else scene.thing
            assert noun in words
            if scene.count > 1:
                assert render.COUNT_WORDS[scene.count] in words
        assert {"thing", "count"} <= caption.mentions


def test_a_caption_matches_every_image_it_is_true_of() -> None:
    red_circle = render.Scene("shape", "red", "circle", size="small", background="noise")
    other_red_circle = render.Scene("shape", "red", "circle", size="large", background="plain")
    blue_circle = render.Scene("shape", "blue", "circle", size="small", background="noise")
    scenes = [red_circle, other_red_circle, blue_circle]
    attributes = torch.from_numpy(np.stack([render.attributes(s) for s in scenes]))
    says = [frozenset({"thing", "count", "colour"}), frozenset({"thing", "count", "colour", "size"}), frozenset({"thing", "count"})]
    mentions = torch.from_numpy(np.stack([render.Caption("", m).mask() for m in says]))
    matches = true_captions(attributes, mentions)
    # "a red circle" is true of both red circles; "a large red circle" only of the large one;
    # "a circle" of all three.
    assert matches.tolist() == [[True, False, True], [True, True, True], [False, False, True]]


def test_tasks_are_image_folders_with_every_class(tmp_path) -> None:
    for name, task in TASKS.items():
        root = write_task(name, tmp_path / name, train_per_class=2, test_per_class=1)
        for split, count in (("train", 2), ("test", 1)):
            folders = sorted(p.name for p in (root / split).iterdir())
            assert folders == sorted(task.classes)
            assert all(len(list((root / split / c).glob("*.png"))) == count for c in folders)
