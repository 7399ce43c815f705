"""Datasets for adaptation: loading, validating, splitting and decoding images.

A dataset is an ImageFolder directory (optionally with ``train``/``val``/``test`` split folders), a
``manifest.csv`` / ``manifest.jsonl`` listing ``image,label[,split]``, or a ``.zip`` / ``.tar`` /
``.tar.gz`` / ``.tgz`` archive of either. Every problem a user can fix is reported as a
``DatasetError`` whose message names the offending file or class.

Splits follow appendix A.3 of the paper: ``shots`` training images per class and a validation set of
``shots`` per class in the low-data regime (``shots // 10`` in the high-data regime).
"""

from __future__ import annotations

import csv
import json
import os
import random
import shutil
import stat
import tarfile
import tempfile
import threading
import warnings
import zipfile
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

import torch.utils.data
from PIL import Image
from torchvision import transforms as T

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
SPLITS = ("train", "val", "test")
MANIFEST_NAMES = ("manifest.csv", "manifest.jsonl")
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz")
_SPLIT_ORDER = {None: 0, "train": 0, "val": 1, "test": 2}


class DatasetError(ValueError):
    """A dataset the user supplied cannot be used; the message says why and names the file/class."""


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int  # index into Dataset.classnames
    split: str | None  # "train" | "val" | "test" | None (no split given)


@dataclass
class Dataset:
    root: Path
    class_ids: list[str]  # raw folder / label names, sorted
    classnames: list[str]  # for prompts: underscores -> spaces, same order as class_ids
    samples: list[Sample]

    def split_counts(self) -> dict[str, dict[str, int]]:
        """Images per split and class; unsplit samples count as "train"; empty splits omitted."""
        counts: dict[str, Counter[int]] = defaultdict(Counter)
        for s in self.samples:
            counts[s.split or "train"][s.label] += 1
        return {
            split: {cid: counts[split][i] for i, cid in enumerate(self.class_ids)}
            for split in SPLITS
            if split in counts
        }


@dataclass
class Splits:
    train: list[Sample]
    val: list[Sample]
    test: list[Sample]


# --------------------------------------------------------------------------------------- images


# Pillow formats decoded for datasets and predictions; the rest of Pillow's decoders stay unreachable.
IMAGE_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "WEBP", "TIFF")


def _open(source: str | Path | IO[bytes], name: str) -> Image.Image:
    try:
        with warnings.catch_warnings():
            # Pillow only warns between MAX_IMAGE_PIXELS and twice that; refuse those too.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source, formats=IMAGE_FORMATS) as img:
                img.load()  # decode now so truncated files fail here, not inside a DataLoader
                return img.convert("RGB")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise DatasetError(f"image {name} is too large: {_without_path(e, source, name)}") from e
    except Exception as e:  # Pillow's decoders raise many types (OSError, SyntaxError, ...)
        raise DatasetError(f"cannot read image {name}: {_without_path(e, source, name)}") from e


def _without_path(error: Exception, source: str | Path | IO[bytes], name: str) -> str:
    """Pillow's message with the file's path on this machine (an upload's extraction folder) replaced by
    the name the user knows it by: error messages go back to API clients."""
    message = str(error)
    if isinstance(source, (str, Path)):
        message = message.replace(str(source), name)
    return message


def open_image(path_or_file: str | Path | IO[bytes]) -> Image.Image:
    """Decode an image fully as RGB, or raise DatasetError naming the file."""
    if isinstance(path_or_file, (str, Path)):
        name = str(path_or_file)
    else:
        name = str(getattr(path_or_file, "name", "<file>"))
    return _open(path_or_file, name)


class ImageCache:
    """Decoded RGB images, shorter side resized to ``image_size``, kept while under ``max_bytes``.

    Training revisits the same few-shot images every epoch; decoding them once saves most of the
    data-loading time. Each DataLoader worker process holds its own copy.
    """

    def __init__(self, image_size: int, max_bytes: int = 2 * 1024**3):
        self.image_size = image_size
        self.max_bytes = max_bytes
        self.nbytes = 0
        self._images: dict[Path, Image.Image] = {}
        self._lock = threading.Lock()

    def get(self, path: str | Path) -> Image.Image:
        path = Path(path)
        img = self._images.get(path)
        if img is not None:
            return img
        img = self._resize(open_image(path))
        size = img.width * img.height * len(img.getbands())
        with self._lock:
            if path not in self._images and self.nbytes + size <= self.max_bytes:
                self._images[path] = img
                self.nbytes += size
        return img

    def _resize(self, img: Image.Image) -> Image.Image:
        w, h = img.size
        scale = self.image_size / min(w, h)
        if scale == 1:
            return img
        new = (max(1, round(w * scale)), max(1, round(h * scale)))
        return img.resize(new, Image.Resampling.BICUBIC)


class ImageSamples(torch.utils.data.Dataset):
    """(image tensor, label) pairs for a list of samples."""

    def __init__(self, samples: list[Sample], transform: Callable, cache: ImageCache | None = None):
        self.samples = samples
        self.transform = transform
        self.cache = cache

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        """By position, or by (position, seed): the random transforms then draw from that seed alone,
        not from the process's random state (which, in a DataLoader worker, depends on the worker)."""
        index, seed = index if isinstance(index, tuple) else (index, None)
        sample = self.samples[index]
        img = self.cache.get(sample.path) if self.cache else open_image(sample.path)
        if seed is None:
            return self.transform(img), sample.label
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.transform(img), sample.label


def build_transforms(
    image_size: int, mean: tuple[float, ...], std: tuple[float, ...]
) -> tuple[Callable, Callable]:
    """(train, eval) transforms from PIL images to normalized CHW tensors, as CLIP preprocesses."""
    resize = T.Resize(image_size, interpolation=T.InterpolationMode.BICUBIC)
    tail = [T.ToTensor(), T.Normalize(mean, std)]
    train = T.Compose([resize, T.RandomCrop(image_size), *tail])
    eval_ = T.Compose([resize, T.CenterCrop(image_size), *tail])
    return train, eval_


# -------------------------------------------------------------------------------------- loading


def load_dataset(
    source: str | Path,
    extract_dir: Path | None = None,
    *,
    verify_images: bool = True,
    limits: ArchiveLimits | None = None,
) -> Dataset:
    """Load a folder, manifest or archive (see module docstring) into a validated Dataset.

    Archives are extracted within ``limits`` (``ArchiveLimits()`` if None)."""
    source = Path(source)
    if not source.exists():
        raise DatasetError(f"dataset not found: {source}")
    if source.is_file():
        if source.name.lower().endswith(ARCHIVE_SUFFIXES):
            source = extract_archive(source, extract_dir, limits=limits)
        elif source.suffix.lower() in (".csv", ".jsonl"):
            return _finish(source.parent, *_read_manifest(source), verify_images)
        else:
            raise DatasetError(
                f"unsupported dataset file {source.name}: expected a folder, a manifest "
                f"(.csv, .jsonl) or an archive ({', '.join(ARCHIVE_SUFFIXES)})"
            )
    root = _descend(source)
    for name in MANIFEST_NAMES:
        if (root / name).is_file():
            return _finish(root, *_read_manifest(root / name), verify_images)
    return _finish(root, *_scan_folders(root), verify_images)


def _ignored(name: str) -> bool:
    return name.startswith(".") or name == "__MACOSX"


def _visible(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if not _ignored(p.name))


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file()


def _descend(root: Path) -> Path:
    """Step into a lone top-level folder, as archives usually wrap their content in one."""
    while True:
        entries = _visible(root)
        if len(entries) != 1 or not entries[0].is_dir() or entries[0].name in SPLITS:
            return root
        child = entries[0]
        if any(_is_image(p) for p in child.iterdir()):
            return root  # the lone folder is a class folder (a one-class dataset): report that
        root = child


RawSamples = list[tuple[Path, str, str | None]]  # (absolute path, class id, split)


def _images_under(class_dir: Path) -> Iterable[Path]:
    for dirpath, dirnames, filenames in os.walk(class_dir):
        dirnames[:] = sorted(d for d in dirnames if not _ignored(d))
        for f in sorted(filenames):
            path = Path(dirpath, f)
            if not _ignored(f) and _is_image(path):
                yield path


def _scan_folders(root: Path) -> tuple[RawSamples, str]:
    dirs = [p for p in _visible(root) if p.is_dir()]
    split_dirs = [d for d in dirs if d.name in SPLITS]
    if split_dirs and len(split_dirs) != len(dirs):
        others = ", ".join(repr(d.name) for d in dirs if d.name not in SPLITS)
        raise DatasetError(
            f"{root.name}: mixes split folders (train/val/test) with other folders: {others}"
        )
    groups = [(d, d.name) for d in split_dirs] if split_dirs else [(root, None)]
    raw: RawSamples = []
    for group_dir, split in groups:
        for class_dir in _visible(group_dir):
            if class_dir.is_dir():
                raw.extend((p, class_dir.name, split) for p in _images_under(class_dir))
    return raw, "folders"


def _read_manifest(manifest: Path) -> tuple[RawSamples, str]:
    root = manifest.parent.resolve()
    try:
        text = manifest.read_text(encoding="utf-8-sig")  # -sig: spreadsheets write a BOM
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"cannot read manifest {manifest.name}: {e}") from e
    if manifest.suffix.lower() == ".csv":
        reader = csv.DictReader(text.splitlines())
        columns = set(reader.fieldnames or [])
        rows: list[tuple[int, dict]] = [(i, row) for i, row in enumerate(reader, start=2)]
    else:
        rows = []
        for i, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DatasetError(f"{manifest.name} line {i}: invalid JSON: {e}") from e
            if not isinstance(row, dict):
                raise DatasetError(f"{manifest.name} line {i}: expected a JSON object")
            rows.append((i, row))
        columns = {"image", "label"}  # checked per row below
    missing = {"image", "label"} - columns
    if missing:
        raise DatasetError(f"{manifest.name} is missing column(s): {', '.join(sorted(missing))}")

    raw: RawSamples = []
    for line, row in rows:
        where = f"{manifest.name} line {line}"
        image, label = row.get("image"), row.get("label")
        if image in (None, "") or label in (None, ""):
            raise DatasetError(f"{where}: 'image' and 'label' are required")
        split = row.get("split") or None
        if split is not None and split not in SPLITS:
            raise DatasetError(f"{where}: unknown split {split!r} (expected train, val or test)")
        rel = PurePosixPath(str(image).replace("\\", "/"))
        if rel.is_absolute():
            raise DatasetError(f"{where}: image path {image!r} must be relative to the manifest")
        path = (root / rel).resolve()
        if not path.is_relative_to(root):
            raise DatasetError(f"{where}: image path {image!r} points outside the dataset folder")
        if path.suffix.lower() not in IMAGE_EXTENSIONS:
            raise DatasetError(f"{where}: {image!r} is not an allowed image type")
        if not path.is_file():
            raise DatasetError(f"{where}: image {image!r} not found")
        raw.append((path, str(label), split))
    return raw, manifest.name


def _finish(root: Path, raw: RawSamples, origin: str, verify_images: bool) -> Dataset:
    root = root.resolve()
    if not raw:
        raise DatasetError(f"no images found in {root.name} ({origin})")
    class_ids = sorted({cid for _, cid, _ in raw})
    if len(class_ids) < 2:
        raise DatasetError(
            f"needs at least 2 classes, found {len(class_ids)}: "
            + ", ".join(repr(c) for c in class_ids)
        )
    classnames = [cid.replace("_", " ") for cid in class_ids]
    duplicates = sorted(n for n, c in Counter(classnames).items() if c > 1)
    if duplicates:
        raise DatasetError(f"class names collide once underscores become spaces: {duplicates}")
    if any(split is not None for _, _, split in raw):
        trained = {cid for _, cid, split in raw if split in (None, "train")}
        untrained = [c for c in class_ids if c not in trained]
        if untrained:
            raise DatasetError(
                f"class(es) with no training images: {', '.join(repr(c) for c in untrained)}"
            )
    index = {cid: i for i, cid in enumerate(class_ids)}
    samples = sorted(
        (Sample(path.resolve(), index[cid], split) for path, cid, split in raw),
        key=lambda s: (_SPLIT_ORDER[s.split], s.label, str(s.path)),
    )
    if verify_images:
        _verify(root, samples)
    return Dataset(root=root, class_ids=class_ids, classnames=classnames, samples=samples)


def _verify(root: Path, samples: list[Sample]) -> None:
    def check(sample: Sample) -> None:
        try:
            name = str(sample.path.relative_to(root))
        except ValueError:  # a symlink resolved outside the folder
            name = str(sample.path)
        _open(sample.path, name).close()

    # Decoding releases the GIL, so threads speed up checking large datasets.
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        for _ in pool.map(check, samples):
            pass


# ------------------------------------------------------------------------------------- archives


@dataclass(frozen=True)
class ArchiveLimits:
    """What extracting one archive may write. Zip and tar bombs are refused before they fill the
    disk: sizes declared in the headers are checked up front, and the bytes actually written are
    counted as they are written (headers can lie)."""

    max_total_bytes: int = 20 * 1024**3  # all extracted files together
    max_files: int = 200_000  # members, folders included
    max_ratio: float = 200.0  # extracted bytes per byte of archive


class _Budget:
    """Counts members and bytes against ArchiveLimits; raises DatasetError naming the limit."""

    def __init__(self, archive: Path, limits: ArchiveLimits) -> None:
        self.name, self.limits = archive.name, limits
        self.archive_bytes = max(archive.stat().st_size, 1)
        self.files = 0
        self.bytes = 0

    def member(self, count: int = 1) -> None:
        self.files += count
        if self.files > self.limits.max_files:
            raise DatasetError(f"{self.name}: more than {self.limits.max_files} files (the limit)")

    def write(self, size: int) -> None:
        self.check(size)
        self.bytes += size

    def check(self, size: int) -> None:
        """Raise if ``size`` more bytes would go over a limit."""
        total = self.bytes + size
        if total > self.limits.max_total_bytes:
            raise DatasetError(
                f"{self.name}: extracts to more than {_human(self.limits.max_total_bytes)} (the limit)"
            )
        if total > self.archive_bytes * self.limits.max_ratio:
            raise DatasetError(
                f"{self.name}: extracts to more than {self.limits.max_ratio:g} times its size (compression bomb?)"
            )


def _human(size: int) -> str:
    return f"{size / 1024**2:.0f} MiB" if size >= 1024**2 else f"{size} bytes"


_COPY_CHUNK = 1024 * 1024


def _copy_counted(source: IO[bytes], target: Path, budget: _Budget, declared: int, name: str) -> None:
    with target.open("wb") as out:
        written = 0
        while chunk := source.read(_COPY_CHUNK):
            written += len(chunk)
            if written > declared:
                raise DatasetError(f"{budget.name}: member {name!r} is larger than its header says")
            budget.write(len(chunk))
            out.write(chunk)


def _target(dest: Path, archive: Path, name: str) -> Path:
    """Where member ``name`` goes under ``dest``; refuses absolute paths and '..'."""
    _check_member_name(archive, name)
    parts = [p for p in PurePosixPath(name).parts if p not in ("", ".")]
    if not parts:
        raise DatasetError(f"{archive.name}: refusing member {name!r} (empty name)")
    return dest.joinpath(*parts)


def extract_archive(archive: Path, extract_dir: Path | None = None, *, limits: ArchiveLimits | None = None) -> Path:
    """Extract a zip/tar archive into ``extract_dir`` (default: a fresh temp dir) and return it.

    Members with absolute paths, ``..``, links or devices are refused, and so is an archive that
    would write more than ``limits`` allow. Extraction goes to a temp dir next to ``extract_dir``
    that is renamed at the end, so a failure leaves nothing behind.
    """
    limits = limits or ArchiveLimits()
    if extract_dir is None:
        extract_dir = Path(tempfile.mkdtemp(prefix="clipadapt-data-")) / "dataset"
    extract_dir = Path(extract_dir)
    if extract_dir.exists() and not (extract_dir.is_dir() and not any(extract_dir.iterdir())):
        raise DatasetError(f"extract_dir {extract_dir} already exists and is not an empty folder")
    extract_dir.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{extract_dir.name}.partial-", dir=extract_dir.parent))
    try:
        budget = _Budget(archive, limits)
        if archive.name.lower().endswith(".zip"):
            _extract_zip(archive, partial, budget)
        else:
            _extract_tar(archive, partial, budget)
        os.replace(partial, extract_dir)  # also replaces an existing empty directory
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return extract_dir


def _check_member_name(archive: Path, name: str) -> None:
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if name.startswith(("/", "\\")) or ".." in parts:
        raise DatasetError(f"{archive.name}: refusing member {name!r} (absolute path or '..')")


def _extract_zip(archive: Path, dest: Path, budget: _Budget) -> None:
    try:
        with zipfile.ZipFile(archive) as zf:
            infos = zf.infolist()
            # The central directory first: refuse a bomb before writing a byte.
            budget.member(len(infos))
            declared = _Budget(archive, budget.limits)
            for info in infos:
                _check_member_name(archive, info.filename)
                mode = info.external_attr >> 16  # Unix mode, if the archiver recorded one
                # Zips written without a file type (zipfile.writestr) carry permission bits only.
                if stat.S_IFMT(mode) and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                    raise DatasetError(
                        f"{archive.name}: refusing member {info.filename!r} (link or special file)"
                    )
                declared.write(info.file_size)
            for info in infos:
                target = _target(dest, archive, info.filename)
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as source:
                    _copy_counted(source, target, budget, info.file_size, info.filename)
    except (zipfile.BadZipFile, OSError, RuntimeError, EOFError, NotImplementedError) as e:
        # RuntimeError: encrypted members; NotImplementedError: unsupported compression.
        raise DatasetError(f"cannot extract {archive.name}: {e}") from e


def _extract_tar(archive: Path, dest: Path, budget: _Budget) -> None:
    try:
        # Streaming mode: members are read once, in order, and each is checked (name, type,
        # declared size) before it is written; a bomb stops at the first byte over the limit.
        with tarfile.open(archive, mode="r|*") as tf:
            for member in tf:
                budget.member()
                target = _target(dest, archive, member.name)
                if member.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                if not member.isfile():
                    raise DatasetError(
                        f"{archive.name}: refusing member {member.name!r} (link or special file)"
                    )
                budget.check(member.size)  # the declared size alone may be over a limit
                target.parent.mkdir(parents=True, exist_ok=True)
                source = tf.extractfile(member)
                assert source is not None
                with source:
                    _copy_counted(source, target, budget, member.size, member.name)
    except (tarfile.TarError, OSError, EOFError) as e:
        raise DatasetError(f"cannot extract {archive.name}: {e}") from e


# --------------------------------------------------------------------------------------- splits


def make_splits(
    dataset: Dataset, shots: int | None, seed: int, val_per_class: int | None = None
) -> Splits:
    """Train/val/test samples following appendix A.3; deterministic for a seed, disjoint.

    Train: ``shots`` per class from the train pool (all of it if ``shots`` is None). Val: the
    dataset's own "val" split, else ``val_per_class`` per class from the rest of the pool. Test:
    the dataset's own "test" split, else whatever of the pool is left (possibly nothing).
    """
    if shots is not None and shots < 1:
        raise ValueError(f"shots must be >= 1 or None, got {shots}")
    if val_per_class is not None and val_per_class < 0:
        raise ValueError(f"val_per_class must be >= 0, got {val_per_class}")
    rng = random.Random(seed)
    pool: dict[int, list[Sample]] = {i: [] for i in range(len(dataset.class_ids))}
    own_val = [s for s in dataset.samples if s.split == "val"]
    own_test = [s for s in dataset.samples if s.split == "test"]
    for s in dataset.samples:
        if s.split in (None, "train"):
            pool[s.label].append(s)

    if val_per_class is None:
        if shots is None:
            val_per_class = max(1, min(len(p) for p in pool.values()) // 10)
        else:
            val_per_class = shots if shots <= 16 else max(1, shots // 10)

    train: list[Sample] = []
    val: list[Sample] = []
    rest: list[Sample] = []
    for items in pool.values():
        if shots is None:
            # Val first, and never the last image of a class: training needs every class.
            n_val = 0 if own_val else min(val_per_class, len(items) - 1)
            val_part = set(rng.sample(items, max(0, n_val)))
            train_part = set(items) - val_part
        else:
            train_part = set(rng.sample(items, min(shots, len(items))))
            remaining = [s for s in items if s not in train_part]
            n_val = 0 if own_val else min(val_per_class, len(remaining))
            val_part = set(rng.sample(remaining, n_val))
        train.extend(s for s in items if s in train_part)
        val.extend(s for s in items if s in val_part)
        rest.extend(s for s in items if s not in train_part and s not in val_part)
    return Splits(train=train, val=own_val or val, test=own_test or rest)
