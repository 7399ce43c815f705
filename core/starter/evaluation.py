"""Zero-shot evaluation of a starter model, as the model card reports it.

Both measurements use the product's own zero-shot classifier (`core.adapt.predictor`, the 80-template
ensemble) over all 88 colour x shape classes ("red circle", ...):
- on scenes from the starter's generator with another seed than pretraining, pairs seen in
  pretraining and pairs held out of it reported apart;
- on images drawn by another renderer (matplotlib's markers and CSS colour names), which shares no
  drawing code with ours: what a user's own images look like is closer to this.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from PIL import Image

from core.starter import render

# matplotlib's own drawing of each shape: a marker, or a glyph for the heart.
MATPLOTLIB_MARKERS = {"circle": "o", "square": "s", "triangle": "^", "star": "*", "cross": "P", "hexagon": "h", "ring": "o", "heart": "♥"}
# CSS colour names as matplotlib knows them; CSS "brown" is a dark red, so the usual brown is used.
CSS_COLOURS = {name: name for name in render.COLOURS} | {"brown": "saddlebrown"}


def all_pairs() -> list[tuple[str, str]]:
    return [(c, s) for c in render.COLOURS for s in render.SHAPES]


def pair_names(pairs: list[tuple[str, str]]) -> list[str]:
    return [f"{colour} {shape}" for colour, shape in pairs]


def generator_images(seed: int, per_pair: int, pairs: list[tuple[str, str]]) -> list[tuple[Image.Image, int]]:
    """`per_pair` images of each colour x shape pair, one object each, of any size, position and
    background, drawn like pretraining scenes: (image, pair index)."""
    out = []
    for label, (colour, shape) in enumerate(pairs):
        for i in range(per_pair):
            rng = render.scene_rng(seed, label * 10_000 + i)
            position = str(rng.choice(list(render.POSITIONS))) if rng.random() < 0.4 else None
            scene = render.Scene("shape", colour, shape, size=str(rng.choice(list(render.SIZES))), position=position,
                                 background=str(rng.choice(render.BACKGROUNDS)))
            out.append((render.draw_scene(scene, rng), label))
    return out


def matplotlib_image(colour: str, shape: str, rng: np.random.Generator) -> Image.Image:
    """One shape drawn by matplotlib on a plain background that contrasts with it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import to_rgb

    face = to_rgb(CSS_COLOURS[colour])
    background = "black" if max(face) > 0.85 and min(face) > 0.6 else str(rng.choice(["white", "whitesmoke", "lightgrey", "dimgrey"]))
    if colour in ("black", "grey") and background == "dimgrey":
        background = "white"
    inches = float(rng.uniform(1.0, 2.24))
    fig = plt.figure(figsize=(inches, inches), dpi=100, facecolor=background)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_axis_off()
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    x, y = rng.uniform(0.35, 0.65, size=2)
    points = inches * 72 * float(rng.uniform(0.35, 0.6))  # marker size in points
    marker = MATPLOTLIB_MARKERS[shape]
    if shape == "heart":
        ax.text(x, y, marker, fontsize=points * 1.1, color=face, ha="center", va="center")
    elif shape == "ring":
        ax.plot([x], [y], marker, markersize=points * 0.8, markerfacecolor="none", markeredgecolor=face, markeredgewidth=points * 0.15)
    else:
        ax.plot([x], [y], marker, markersize=points * 0.8, color=face, markeredgewidth=0)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", facecolor=background)
    plt.close(fig)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def matplotlib_images(seed: int, per_pair: int, pairs: list[tuple[str, str]]) -> list[tuple[Image.Image, int]]:
    out = []
    for label, (colour, shape) in enumerate(pairs):
        for i in range(per_pair):
            out.append((matplotlib_image(colour, shape, render.scene_rng(seed, label * 10_000 + i)), label))
    return out


def score(base: Any, samples: list[tuple[Image.Image, int]], pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """Top-1 of the zero-shot classifier over all pairs; seen and held-out pairs apart, with how often
    the colour alone and the shape alone were right."""
    from core.adapt.predictor import Predictor, zero_shot_model

    predictor = Predictor(zero_shot_model(base, pair_names(pairs)))
    predicted = predictor.probabilities([image for image, _ in samples]).argmax(dim=1).tolist()
    groups: dict[str, list[tuple[bool, bool, bool]]] = {"seen": [], "held_out": []}
    for (_, label), guess in zip(samples, predicted):
        truth, picked = pairs[label], pairs[guess]
        groups["held_out" if truth in render.HELD_OUT_PAIRS else "seen"].append(
            (truth == picked, truth[0] == picked[0], truth[1] == picked[1])
        )
    result: dict[str, Any] = {}
    for group, outcomes in groups.items():
        array = np.array(outcomes, dtype=float)
        result[group] = {"top1": float(array[:, 0].mean()), "colour": float(array[:, 1].mean()),
                         "shape": float(array[:, 2].mean()), "images": len(array)}
    return result


def zero_shot_report(base: Any, seed: int, per_pair: int, matplotlib_per_pair: int = 16) -> dict[str, Any]:
    pairs = all_pairs()
    return {
        "classes": len(pairs),
        "generator": score(base, generator_images(seed, per_pair, pairs), pairs),
        "matplotlib": score(base, matplotlib_images(seed, matplotlib_per_pair, pairs), pairs),
    }
