"""Tiny real image datasets for tests: scikit-learn's bundled 8x8 digits, written as PNG files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits


def write_digits_folder(
    root: Path,
    per_class: int = 20,
    classes: int = 10,
    image_size: int = 32,
    split_folders: bool = False,
) -> Path:
    """Write ``per_class`` digits per class as ``root/digit_<n>/<i>.png`` and return ``root``.

    With ``split_folders`` the same images go to ``root/{train,val,test}/digit_<n>/``, split
    60/20/20 per class (at least one image in each split, so ``per_class`` must be >= 3).
    """
    if not 2 <= classes <= 10:
        raise ValueError("classes must be between 2 and 10")
    if split_folders and per_class < 3:
        raise ValueError("split_folders needs per_class >= 3")
    digits = load_digits()
    root = Path(root)
    for digit in range(classes):
        images = digits.images[digits.target == digit][:per_class]
        if len(images) < per_class:
            raise ValueError(f"only {len(images)} images of digit {digit} are available")
        for i, pixels in enumerate(images):
            if split_folders:
                n_test = n_val = max(1, per_class // 5)
                split = "test" if i < n_test else "val" if i < n_test + n_val else "train"
                folder = root / split / f"digit_{digit}"
            else:
                folder = root / f"digit_{digit}"
            folder.mkdir(parents=True, exist_ok=True)
            img = Image.fromarray((pixels * (255 / 16)).astype(np.uint8))  # 2-D uint8 -> mode "L"
            img = img.resize((image_size, image_size), Image.Resampling.BILINEAR)
            img.save(folder / f"{i}.png")
    return root
