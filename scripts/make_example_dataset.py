#!/usr/bin/env python3
"""Write a small example dataset archive as PNG images, split into train/val/test ImageFolders,
zipped so it can be uploaded with ``POST /datasets``.

``--task digits`` (default): handwritten digits from scikit-learn's bundled set (no download; without
scikit-learn they are drawn with Pillow). ``--task outlines|restyled|greek``: one of the starter
model's downstream tasks (core/starter/tasks.py), drawn by its renderer; these are what
``clipadapt-starter`` learns on. Usage: ``python scripts/make_example_dataset.py shapes.zip --task outlines``.
"""

from __future__ import annotations

import argparse
import io
import os
import random
import stat
import sys
import tempfile
import zipfile
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # core.starter, run from a checkout

NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def sklearn_digits() -> dict[int, list[Image.Image]] | None:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        return None
    digits = load_digits()
    by_label: dict[int, list[Image.Image]] = {}
    for pixels, label in zip(digits.images, digits.target, strict=True):
        gray = (255 - pixels * 255 / 16).clip(0, 255).astype("uint8")  # dark ink on white
        by_label.setdefault(int(label), []).append(Image.fromarray(gray).convert("RGB"))
    return by_label


def drawn_digit(label: int, rng: random.Random) -> Image.Image:
    image = Image.new("RGB", (32, 32), "white")
    draw = ImageDraw.Draw(image)
    draw.text((rng.randint(6, 14), rng.randint(2, 10)), str(label), fill="black", font=ImageFont.load_default())
    return image.rotate(rng.uniform(-15, 15), fillcolor="white")


def starter_task_images(task_name: str, classes: int, counts: dict[str, int], seed: int):
    """(class name, split, index, image) of a starter downstream task, from the task's own generator
    stream (`seed` shifts it, so different seeds give different images)."""
    from core.starter.tasks import TASK_SEEDS, TASKS

    task = TASKS[task_name]
    for label, name in enumerate(task.classes[:classes]):
        for offset, (split, n) in enumerate(counts.items()):
            for i in range(n):
                yield name, split, i, task.draw(label, TASK_SEEDS[task_name] + seed, offset * 100_000 + label * 10_000 + i)


def digit_images(classes: int, counts: dict[str, int], seed: int, size: int):
    rng = random.Random(seed)
    source = sklearn_digits()
    for label in range(classes):
        pool = list(source[label]) if source else []
        rng.shuffle(pool)
        for split, n in counts.items():
            for i in range(n):
                image = pool.pop() if pool else drawn_digit(label, rng)
                yield NAMES[label], split, i, image.resize((size, size), Image.BILINEAR)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output", type=Path, help="archive to write (.zip)")
    parser.add_argument("--task", default="digits", choices=["digits", "outlines", "restyled", "greek"])
    parser.add_argument("--classes", type=int, default=4, choices=range(2, 11), metavar="2..10")
    parser.add_argument("--train", type=int, default=8, help="training images per class")
    parser.add_argument("--val", type=int, default=4, help="validation images per class")
    parser.add_argument("--test", type=int, default=4, help="test images per class")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels (digits; the tasks draw their own)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.output.suffix != ".zip":
        parser.error("output must end in .zip")

    counts = {"train": args.train, "val": args.val, "test": args.test}
    if args.task == "digits":
        images = digit_images(args.classes, counts, args.seed, args.size)
    else:
        from core.starter.tasks import TASKS

        if args.classes > len(TASKS[args.task].classes):
            parser.error(f"--task {args.task} has {len(TASKS[args.task].classes)} classes")
        images = starter_task_images(args.task, args.classes, counts, args.seed)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{args.output.name}.", dir=args.output.parent)
    os.close(fd)
    try:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
            for name, split, i, image in images:
                buffer = io.BytesIO()
                image.save(buffer, "PNG")
                info = zipfile.ZipInfo(f"{split}/{name}/{i:03d}.png", (2024, 1, 1, 0, 0, 0))
                info.external_attr = (stat.S_IFREG | 0o644) << 16  # a regular file
                info.compress_type = zipfile.ZIP_DEFLATED
                zf.writestr(info, buffer.getvalue())
        os.replace(tmp, args.output)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    total = args.classes * sum(counts.values())
    print(f"wrote {args.output}: {args.task}, {args.classes} classes, {total} images ({counts})")


if __name__ == "__main__":
    main()
