"""Downstream tasks for the starter model, of graded similarity to its pretraining data (the paper's
second axis, section 4: zero-shot accuracy as a proxy for similarity to the pretraining data).

- `restyled` (similar): ten colour x shape classes the model was pretrained on, drawn in a style it
  never saw: shaded objects, patterned fills, larger canvases;
- `outlines` (shifted): the eight shape names as classes, drawn as outlines only in any colour: the
  concepts are known, their look is not;
- `greek` (dissimilar): ten lowercase Greek letters, named ("alpha", "beta", ...): glyphs like the
  pretraining characters, but no caption ever named them.

`write_task` writes a task as an ImageFolder with `train/` (the pool k-shot training and validation
images are sampled from, as the paper's appendix A.3 does) and `test/` folders.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.starter import render

GREEK = {
    "alpha": "α", "beta": "β", "gamma": "γ", "delta": "δ", "epsilon": "ε",
    "theta": "θ", "lambda": "λ", "pi": "π", "sigma": "σ", "omega": "ω",
}
RESTYLED_CLASSES = (
    ("red", "circle"), ("green", "square"), ("blue", "triangle"), ("yellow", "star"), ("orange", "heart"),
    ("purple", "cross"), ("pink", "hexagon"), ("brown", "ring"), ("black", "triangle"), ("white", "heart"),
)
GREEK_FONTS = ("DejaVuSans.ttf", "DejaVuSerif.ttf", "DejaVuSans-Bold.ttf", "STIXGeneral.ttf")


@dataclass(frozen=True)
class Task:
    name: str
    similarity: str  # "similar", "shifted" or "dissimilar" to the pretraining data
    description: str
    classes: tuple[str, ...]  # folder names; prompts read underscores as spaces

    def scene(self, label: int, rng: np.random.Generator) -> render.Scene:
        background = str(rng.choice(render.BACKGROUNDS))
        colour = str(rng.choice(list(render.COLOURS)))
        if self.name == "restyled":
            colour, shape = RESTYLED_CLASSES[label]
            style = render.Style(shading=True, texture=bool(rng.random() < 0.5), min_canvas=96, max_canvas=224)
            return render.Scene("shape", colour, shape, count=1, size=str(rng.choice(["medium", "large"])),
                                background=background, style=style)
        if self.name == "outlines":
            return render.Scene("shape", colour, self.classes[label], count=1, size=str(rng.choice(["medium", "large"])),
                                background=background, style=render.Style(outline=True))
        if self.name == "greek":
            return render.Scene("char", colour, GREEK[self.classes[label]], size=str(rng.choice(["medium", "large"])),
                                background=background, font=str(rng.choice(GREEK_FONTS)))
        raise ValueError(f"unknown task {self.name!r}")

    def draw(self, label: int, seed: int, index: int):
        """Image `index` of class `label` from generator stream `seed` (the same arguments, the same image)."""
        rng = render.scene_rng(seed, index)
        return render.draw_scene(self.scene(label, rng), rng)


TASKS = {
    task.name: task
    for task in (
        Task("restyled", "similar", "pretraining colour x shape pairs, shaded and pattern-filled",
             tuple(f"{c}_{s}" for c, s in RESTYLED_CLASSES)),
        Task("outlines", "shifted", "the eight shapes drawn as outlines in any colour", render.SHAPES),
        Task("greek", "dissimilar", "lowercase Greek letters, never named in a caption", tuple(GREEK)),
    )
}
# Each task's images come from their own generator stream, apart from pretraining's (seed 0) and the
# model card's evaluation.
TASK_SEEDS = {"restyled": 2_000_001, "outlines": 2_000_002, "greek": 2_000_003}


def write_task(name: str, root: str | Path, train_per_class: int = 32, test_per_class: int = 30, seed: int | None = None) -> Path:
    """Write task `name` under `root` as train/<class>/NNN.png and test/<class>/NNN.png; returns root."""
    task = TASKS[name]
    seed = TASK_SEEDS[name] if seed is None else seed
    root = Path(root)
    for split, count, offset in (("train", train_per_class, 0), ("test", test_per_class, 500_000)):
        for label, class_name in enumerate(task.classes):
            folder = root / split / class_name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                task.draw(label, seed, offset + label * 10_000 + i).save(folder / f"{i:03d}.png")
    return root
