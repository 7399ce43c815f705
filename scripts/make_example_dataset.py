#!/usr/bin/env python3
"""Write a small example dataset archive: handwritten digits as PNG images, split into
train/val/test ImageFolders, zipped so it can be uploaded with ``POST /datasets``.

Images come from scikit-learn's bundled digits (no download); without scikit-learn they are drawn
with Pillow. Usage: ``python scripts/make_example_dataset.py digits.zip --classes 4 --train 8``.
"""

from __future__ import annotations

import argparse
import io
import os
import random
import stat
import tempfile
import zipfile
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output", type=Path, help="archive to write (.zip)")
    parser.add_argument("--classes", type=int, default=4, choices=range(2, 11), metavar="2..10")
    parser.add_argument("--train", type=int, default=8, help="training images per class")
    parser.add_argument("--val", type=int, default=4, help="validation images per class")
    parser.add_argument("--test", type=int, default=4, help="test images per class")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.output.suffix != ".zip":
        parser.error("output must end in .zip")

    rng = random.Random(args.seed)
    source = sklearn_digits()
    counts = {"train": args.train, "val": args.val, "test": args.test}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{args.output.name}.", dir=args.output.parent)
    os.close(fd)
    try:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
            for label in range(args.classes):
                pool = list(source[label]) if source else []
                rng.shuffle(pool)
                for split, n in counts.items():
                    for i in range(n):
                        image = pool.pop() if pool else drawn_digit(label, rng)
                        buffer = io.BytesIO()
                        image.resize((args.size, args.size), Image.BILINEAR).save(buffer, "PNG")
                        info = zipfile.ZipInfo(f"{split}/{NAMES[label]}/{i:03d}.png", (2024, 1, 1, 0, 0, 0))
                        info.external_attr = (stat.S_IFREG | 0o644) << 16  # a regular file
                        info.compress_type = zipfile.ZIP_DEFLATED
                        zf.writestr(info, buffer.getvalue())
        os.replace(tmp, args.output)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    total = args.classes * sum(counts.values())
    print(f"wrote {args.output}: {args.classes} classes, {total} images ({counts})")


if __name__ == "__main__":
    main()
