"""Dataset loading (every format), validation errors, archive safety, splits, transforms, cache."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import tarfile
import zipfile
from pathlib import Path

import pytest
import torch
from PIL import Image

from core.adapt import data
from core.adapt.data import (
    DatasetError,
    ImageCache,
    ImageSamples,
    build_transforms,
    load_dataset,
    make_splits,
    open_image,
)
from tests.helpers.digits import write_digits_folder


def png_bytes(size: tuple[int, int] = (12, 10), color: int = 128) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (color, 0, 0)).save(buf, format="PNG")
    return buf.getvalue()


def write_png(path: Path, size: tuple[int, int] = (12, 10)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png_bytes(size))
    return path


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    return write_digits_folder(tmp_path_factory.mktemp("digits"), per_class=10, classes=3)


@pytest.fixture(scope="module")
def digits_split(tmp_path_factory) -> Path:
    return write_digits_folder(
        tmp_path_factory.mktemp("digits_split"), per_class=10, classes=3, split_folders=True
    )


def _tar(src: Path, dest: Path, mode: str) -> Path:
    with tarfile.open(dest, mode) as tf:
        tf.add(src, arcname="mydata")
    return dest


# ----------------------------------------------------------------------------------- formats


def test_image_folder(digits):
    ds = load_dataset(digits)
    assert ds.class_ids == ["digit_0", "digit_1", "digit_2"]
    assert ds.classnames == ["digit 0", "digit 1", "digit 2"]
    assert len(ds.samples) == 30
    assert {s.split for s in ds.samples} == {None}
    assert ds.split_counts() == {"train": {"digit_0": 10, "digit_1": 10, "digit_2": 10}}
    keys = [(s.label, str(s.path)) for s in ds.samples]
    assert keys == sorted(keys)
    assert ds.samples[0].path.is_absolute() and ds.samples[0].path.is_file()


def test_split_folders(digits_split):
    ds = load_dataset(digits_split)
    counts = ds.split_counts()
    assert counts["train"] == {"digit_0": 6, "digit_1": 6, "digit_2": 6}
    assert counts["val"]["digit_1"] == 2 and counts["test"]["digit_2"] == 2
    order = {"train": 0, "val": 1, "test": 2}
    keys = [(order[s.split], s.label, str(s.path)) for s in ds.samples]
    assert keys == sorted(keys)


def test_subset_of_split_folders_and_ignored_files(tmp_path):
    for cls in ("a", "b"):
        write_png(tmp_path / "train" / cls / "1.png")
        write_png(tmp_path / "test" / cls / "1.jpeg.png")
    write_png(tmp_path / "train" / "a" / ".hidden.png")  # hidden: ignored
    write_png(tmp_path / "__MACOSX" / "train" / "a" / "x.png")  # macOS resource forks: ignored
    (tmp_path / "train" / "a" / "notes.txt").write_text("not an image")  # not allowlisted
    ds = load_dataset(tmp_path)
    assert ds.split_counts() == {"train": {"a": 1, "b": 1}, "test": {"a": 1, "b": 1}}


def test_single_top_dir_is_descended(tmp_path, digits):
    shutil.copytree(digits, tmp_path / "outer" / "inner")
    (tmp_path / ".DS_Store").write_text("")
    ds = load_dataset(tmp_path)
    assert ds.root == (tmp_path / "outer" / "inner").resolve()
    assert len(ds.class_ids) == 3


def test_underscores_become_spaces(tmp_path):
    write_png(tmp_path / "golden_retriever" / "1.png")
    write_png(tmp_path / "tabby_cat" / "1.png")
    ds = load_dataset(tmp_path)
    assert ds.class_ids == ["golden_retriever", "tabby_cat"]
    assert ds.classnames == ["golden retriever", "tabby cat"]


def _manifest_rows(root: Path) -> list[dict]:
    rows = []
    entries = [("train", "cat", 0), ("train", "dog", 1), ("val", "cat", 2), ("", "dog", 3)]
    for split, cls, i in entries:
        write_png(root / "imgs" / f"{i}.png")
        rows.append({"image": f"imgs/{i}.png", "label": cls, "split": split})
    return rows


def test_manifest_csv(tmp_path):
    rows = _manifest_rows(tmp_path)
    with open(tmp_path / "manifest.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["image", "label", "split"])
        writer.writeheader()
        writer.writerows(rows)
    ds = load_dataset(tmp_path)
    assert ds.class_ids == ["cat", "dog"]
    assert [(s.path.name, s.label, s.split) for s in ds.samples] == [
        ("0.png", 0, "train"), ("1.png", 1, "train"), ("3.png", 1, None), ("2.png", 0, "val"),
    ]
    assert load_dataset(tmp_path / "manifest.csv").samples == ds.samples  # the file itself


def test_manifest_jsonl(tmp_path):
    rows = _manifest_rows(tmp_path)
    lines = [json.dumps({k: v for k, v in r.items() if v}) for r in rows]
    (tmp_path / "manifest.jsonl").write_text("\n".join(lines) + "\n\n")
    ds = load_dataset(tmp_path)
    assert ds.split_counts() == {"train": {"cat": 1, "dog": 2}, "val": {"cat": 1, "dog": 0}}


@pytest.mark.parametrize("kind", ["zip", "tar", "tar.gz", "tgz"])
def test_archives(tmp_path, digits, kind):
    archive = tmp_path / f"data.{kind}"
    if kind == "zip":
        shutil.make_archive(str(tmp_path / "data"), "zip", digits.parent, digits.name)
    else:
        _tar(digits, archive, "w" if kind == "tar" else "w:gz")
    extract_dir = tmp_path / "out" / "extracted"
    ds = load_dataset(archive, extract_dir)
    assert ds.root.is_relative_to(extract_dir.resolve())  # single top folder descended
    assert ds.class_ids == ["digit_0", "digit_1", "digit_2"] and len(ds.samples) == 30
    assert os.listdir(extract_dir.parent) == ["extracted"]  # no partial dir left behind


def test_archive_without_extract_dir_uses_temp_dir(tmp_path, digits):
    archive = _tar(digits, tmp_path / "d.tar", "w")
    ds = load_dataset(archive)
    try:
        assert len(ds.samples) == 30 and not ds.root.is_relative_to(tmp_path)
    finally:
        shutil.rmtree(ds.root.parent.parent)


# ------------------------------------------------------------------------------------ errors


def test_no_images(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "readme.txt").write_text("x")
    with pytest.raises(DatasetError, match="no images found"):
        load_dataset(tmp_path)


def test_one_class(tmp_path):
    write_png(tmp_path / "cat" / "1.png")
    with pytest.raises(DatasetError, match="needs at least 2 classes, found 1: 'cat'"):
        load_dataset(tmp_path)


def test_class_without_training_images(tmp_path):
    write_png(tmp_path / "train" / "cat" / "1.png")
    write_png(tmp_path / "train" / "dog" / "1.png")
    write_png(tmp_path / "test" / "bird" / "1.png")
    with pytest.raises(DatasetError, match="no training images: 'bird'"):
        load_dataset(tmp_path)


def test_unreadable_image_named_relative_to_root(tmp_path):
    write_png(tmp_path / "cat" / "ok.png")
    write_png(tmp_path / "dog" / "ok.png")
    (tmp_path / "dog" / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DatasetError, match=r"dog/broken\.jpg"):
        load_dataset(tmp_path)
    assert len(load_dataset(tmp_path, verify_images=False).samples) == 3


def test_truncated_image(tmp_path):
    write_png(tmp_path / "cat" / "ok.png")
    buf = io.BytesIO()
    Image.effect_noise((64, 64), 50).convert("RGB").save(buf, format="JPEG")
    write_png(tmp_path / "dog" / "ok.png")
    (tmp_path / "dog" / "cut.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(DatasetError, match=r"dog/cut\.jpg"):
        load_dataset(tmp_path)


def test_decompression_bomb_is_dataset_error(tmp_path, monkeypatch):
    path = write_png(tmp_path / "big.png", size=(100, 100))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 6000)  # 10_000 px: warning range (< 2x)
    with pytest.raises(DatasetError, match="big.png"):
        open_image(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # > 2x: Pillow's error
    with pytest.raises(DatasetError, match="big.png"):
        open_image(path)


def test_open_image_from_file_object_is_rgb():
    img = open_image(io.BytesIO(png_bytes((5, 7))))
    assert img.mode == "RGB" and img.size == (5, 7)
    with pytest.raises(DatasetError):
        open_image(io.BytesIO(b"garbage"))


def _write_manifest(root: Path, text: str, name: str = "manifest.csv") -> None:
    (root / name).write_text(text)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("image,split\na.png,train\n", "missing column.*label"),
        ("image,label,split\na.png,cat,holdout\nb.png,dog,train\n", "line 2: unknown split"),
        ("image,label\n../outside.png,cat\nb.png,dog\n", r"'\.\./outside\.png'.*outside"),
        ("image,label\n/etc/passwd.png,cat\nb.png,dog\n", "must be relative"),
        ("image,label\na.txt,cat\nb.png,dog\n", "'a.txt' is not an allowed image type"),
        ("image,label\nmissing.png,cat\nb.png,dog\n", "'missing.png' not found"),
    ],
)
def test_manifest_errors(tmp_path, text, match):
    root = tmp_path / "ds"
    write_png(root / "a.png")
    write_png(root / "b.png")
    (root / "a.txt").write_text("x")
    write_png(tmp_path / "outside.png")
    _write_manifest(root, text)
    with pytest.raises(DatasetError, match=match):
        load_dataset(root)


def test_jsonl_manifest_errors(tmp_path):
    write_png(tmp_path / "a.png")
    _write_manifest(tmp_path, '{"image": "a.png"}\n', "manifest.jsonl")
    with pytest.raises(DatasetError, match="line 1"):
        load_dataset(tmp_path)
    _write_manifest(tmp_path, "{not json\n", "manifest.jsonl")
    with pytest.raises(DatasetError, match="line 1: invalid JSON"):
        load_dataset(tmp_path)


# ---------------------------------------------------------------------------- archive safety


def _assert_nothing_written(tmp_path: Path, extract_dir: Path) -> None:
    assert not (tmp_path / "evil.png").exists()
    assert not extract_dir.exists()
    assert os.listdir(extract_dir.parent) == []  # no partial extraction left


@pytest.mark.parametrize("name", ["../../evil.png", "/tmp/evil-abs.png", "ok/../../evil.png"])
def test_zip_traversal_refused(tmp_path, name):
    archive = tmp_path / "bad.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("a/1.png", png_bytes())
        zf.writestr(name, png_bytes())
    extract_dir = tmp_path / "jobs" / "x" / "data"
    extract_dir.parent.mkdir(parents=True)
    with pytest.raises(DatasetError, match="refusing member"):
        load_dataset(archive, extract_dir)
    _assert_nothing_written(tmp_path, extract_dir)


def test_zip_members_without_file_type_bits_are_files(tmp_path):
    """zipfile.writestr(name, data) stores permission bits only; such members are plain files."""
    archive = tmp_path / "plain.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for label in ("a", "b"):
            zf.writestr(f"{label}/1.png", png_bytes())
    assert load_dataset(archive, tmp_path / "out").class_ids == ["a", "b"]


def test_zip_symlink_refused(tmp_path):
    archive = tmp_path / "link.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        info = zipfile.ZipInfo("a/link.png")
        info.external_attr = 0o120777 << 16  # S_IFLNK
        zf.writestr(info, "/etc/passwd")
    extract_dir = tmp_path / "x" / "data"
    extract_dir.parent.mkdir()
    with pytest.raises(DatasetError, match="link or special file"):
        load_dataset(archive, extract_dir)
    _assert_nothing_written(tmp_path, extract_dir)


def _tar_with(path: Path, member: tarfile.TarInfo, payload: bytes | None = None) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        ok = tarfile.TarInfo("a/1.png")
        data_ = png_bytes()
        ok.size = len(data_)
        tf.addfile(ok, io.BytesIO(data_))
        tf.addfile(member, io.BytesIO(payload) if payload is not None else None)
    return path


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink", "hardlink", "device"])
def test_tar_unsafe_members_refused(tmp_path, kind):
    payload = None
    if kind in ("dotdot", "absolute"):
        member = tarfile.TarInfo("../../evil.png" if kind == "dotdot" else "/tmp/evil-abs.png")
        payload = png_bytes()
        member.size = len(payload)
    elif kind in ("symlink", "hardlink"):
        member = tarfile.TarInfo("a/link.png")
        member.type = tarfile.SYMTYPE if kind == "symlink" else tarfile.LNKTYPE
        member.linkname = "/etc/passwd"
    else:
        member = tarfile.TarInfo("a/dev.png")
        member.type = tarfile.CHRTYPE
    archive = _tar_with(tmp_path / "bad.tgz", member, payload)
    extract_dir = tmp_path / "x" / "data"
    extract_dir.parent.mkdir()
    with pytest.raises(DatasetError, match="refusing member"):
        load_dataset(archive, extract_dir)
    _assert_nothing_written(tmp_path, extract_dir)


def test_corrupt_archive_and_nonempty_extract_dir(tmp_path, digits):
    (tmp_path / "bad.zip").write_bytes(b"not a zip")
    with pytest.raises(DatasetError, match="cannot extract bad.zip"):
        load_dataset(tmp_path / "bad.zip", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    archive = _tar(digits, tmp_path / "d.tar", "w")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(DatasetError, match="not an empty folder"):
        load_dataset(archive, tmp_path / "full")
    (tmp_path / "empty").mkdir()
    assert len(load_dataset(archive, tmp_path / "empty").samples) == 30


# ------------------------------------------------------------------------------------ splits


def _ids(samples) -> set[Path]:
    return {s.path for s in samples}


def test_fewshot_splits_from_unsplit_folder(digits):
    ds = load_dataset(digits, verify_images=False)
    sp = make_splits(ds, shots=2, seed=0)
    per_class = lambda xs: sorted(sum(s.label == c for s in xs) for c in range(3))  # noqa: E731
    assert per_class(sp.train) == [2, 2, 2]
    assert per_class(sp.val) == [2, 2, 2]  # val_per_class defaults to shots (<= 16)
    assert per_class(sp.test) == [6, 6, 6]  # the rest of the pool
    train, val, test = _ids(sp.train), _ids(sp.val), _ids(sp.test)
    assert not (train & val or train & test or val & test)
    assert train | val | test == _ids(ds.samples)

    again = make_splits(ds, shots=2, seed=0)
    assert (again.train, again.val, again.test) == (sp.train, sp.val, sp.test)
    assert make_splits(ds, shots=2, seed=1).train != sp.train


def test_high_shot_val_size_and_small_classes(digits):
    ds = load_dataset(digits, verify_images=False)
    sp = make_splits(ds, shots=20, seed=0)  # more shots than images: take all, val = 20 // 10
    assert len(sp.train) == 30 and sp.val == [] and sp.test == []
    sp = make_splits(ds, shots=4, seed=0, val_per_class=3)
    assert (len(sp.train), len(sp.val), len(sp.test)) == (12, 9, 9)


def test_all_shots_holds_out_ten_percent(digits):
    ds = load_dataset(digits, verify_images=False)
    sp = make_splits(ds, shots=None, seed=0)
    assert (len(sp.train), len(sp.val), len(sp.test)) == (27, 3, 0)
    assert not _ids(sp.train) & _ids(sp.val)


def test_dataset_splits_are_used(digits_split):
    ds = load_dataset(digits_split, verify_images=False)
    sp = make_splits(ds, shots=1, seed=3)
    assert len(sp.train) == 3 and {s.split for s in sp.train} == {"train"}
    assert _ids(sp.val) == {s.path for s in ds.samples if s.split == "val"}
    assert _ids(sp.test) == {s.path for s in ds.samples if s.split == "test"}
    assert len(make_splits(ds, shots=None, seed=0).train) == 18


# ------------------------------------------------------------------------ transforms & cache


def test_transforms_output_shape():
    train, eval_ = build_transforms(24, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    img = Image.new("RGB", (40, 30), (255, 0, 0))
    for t in (train, eval_):
        x = t(img)
        assert x.shape == (3, 24, 24) and x.dtype == torch.float32
    assert torch.allclose(eval_(img)[0], torch.full((24, 24), 2.0))  # (1 - 0.5) / 0.25


def test_image_samples_with_cache_decodes_once(digits, monkeypatch):
    ds = load_dataset(digits, verify_images=False)
    opened: list[Path] = []
    real_open = data.open_image
    monkeypatch.setattr(data, "open_image", lambda p: opened.append(p) or real_open(p))
    cache = ImageCache(image_size=16)
    _, eval_ = build_transforms(16, (0.0,) * 3, (1.0,) * 3)
    samples = ImageSamples(ds.samples[:5], eval_, cache)
    for _ in range(3):  # three "epochs"
        batch = [samples[i] for i in range(len(samples))]
    assert len(opened) == 5
    x, y = batch[0]
    assert x.shape == (3, 16, 16) and y == ds.samples[0].label
    assert min(cache.get(ds.samples[0].path).size) == 16 and len(opened) == 5


def test_cache_respects_max_bytes(tmp_path):
    paths = [write_png(tmp_path / f"{i}.png", size=(20, 10)) for i in range(3)]
    cache = ImageCache(image_size=10, max_bytes=2 * 20 * 10 * 3)  # room for two images
    for p in paths:
        img = cache.get(p)
        assert img.mode == "RGB" and img.size == (20, 10)
    assert cache.nbytes == 2 * 20 * 10 * 3


def test_image_formats_outside_the_allowlist_are_refused(tmp_path):
    """Pillow can decode dozens of formats; datasets and predictions only reach the common ones."""
    from PIL import Image

    path = tmp_path / "picture.png"  # the extension is allowed, the content (Netpbm) is not
    Image.new("RGB", (8, 8)).save(path, format="PPM")
    with pytest.raises(DatasetError, match="picture.png"):
        open_image(path)
