"""Zip and tar bombs are refused before they fill the disk (core.adapt.data.ArchiveLimits)."""

from __future__ import annotations

import io
import os
import struct
import tarfile
import zipfile
import zlib
from pathlib import Path

import pytest
from PIL import Image

from core.adapt.data import ArchiveLimits, DatasetError, extract_archive, load_dataset

MiB = 1024 * 1024


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(buffer, "PNG")
    return buffer.getvalue()


def _zip(path: Path, files: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", compression) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return path


def _tgz(path: Path, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def _du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _assert_clean(root: Path) -> None:
    leftovers = [p for p in root.iterdir() if p.name != "in"]
    assert leftovers == [], leftovers


@pytest.fixture
def work(tmp_path: Path) -> Path:
    (tmp_path / "in").mkdir()
    return tmp_path


@pytest.mark.parametrize("make", [_zip, _tgz], ids=["zip", "tar.gz"])
def test_compression_bomb_is_refused_by_ratio(work: Path, make) -> None:
    suffix = ".zip" if make is _zip else ".tar.gz"
    bomb = make(work / "in" / f"bomb{suffix}", {"a/1.png": _png(), "b/zeros.png": b"\0" * (8 * MiB)})
    assert bomb.stat().st_size < 64 * 1024
    with pytest.raises(DatasetError, match="times its size"):
        extract_archive(bomb, work / "out", limits=ArchiveLimits(max_ratio=50))
    _assert_clean(work)


@pytest.mark.parametrize("make", [_zip, _tgz], ids=["zip", "tar.gz"])
def test_total_size_limit(work: Path, make) -> None:
    suffix = ".zip" if make is _zip else ".tar.gz"
    archive = make(work / "in" / f"big{suffix}", {"a/1.png": _png(), "b/big.png": os.urandom(2 * MiB)})
    with pytest.raises(DatasetError, match="more than 1 MiB"):
        load_dataset(archive, work / "out", limits=ArchiveLimits(max_total_bytes=MiB))
    _assert_clean(work)
    # The same archive within the limits extracts (and then fails only on its broken image).
    with pytest.raises(DatasetError, match="big.png"):
        load_dataset(archive, work / "out", limits=ArchiveLimits(max_total_bytes=4 * MiB))


@pytest.mark.parametrize("make", [_zip, _tgz], ids=["zip", "tar.gz"])
def test_file_count_limit(work: Path, make) -> None:
    suffix = ".zip" if make is _zip else ".tar.gz"
    files = {f"{c}/{i}.png": _png() for c in "ab" for i in range(5)}
    archive = make(work / "in" / f"many{suffix}", files)
    with pytest.raises(DatasetError, match="more than 9 files"):
        extract_archive(archive, work / "out", limits=ArchiveLimits(max_files=9))
    _assert_clean(work)
    assert load_dataset(archive, work / "ok", limits=ArchiveLimits(max_files=10)).class_ids == ["a", "b"]


def test_zip_bomb_is_refused_before_anything_is_written(work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The central directory is checked up front: no member is opened when the total is too big."""
    bomb = _zip(work / "in" / "bomb.zip", {f"a/{i}.png": b"\0" * MiB for i in range(20)})
    opened: list[str] = []
    original = zipfile.ZipFile.open
    monkeypatch.setattr(zipfile.ZipFile, "open", lambda self, name, *a, **k: opened.append(str(name)) or original(self, name, *a, **k))
    with pytest.raises(DatasetError, match="more than 10 MiB"):
        extract_archive(bomb, work / "out", limits=ArchiveLimits(max_total_bytes=10 * MiB, max_ratio=10_000))
    assert opened == []
    _assert_clean(work)


def _lying_zip(path: Path, real: bytes, claimed: int) -> Path:
    """A zip whose headers claim ``claimed`` bytes for a member that inflates to ``len(real)``."""
    deflater = zlib.compressobj(9, zlib.DEFLATED, -15)
    packed = deflater.compress(real) + deflater.flush()
    crc = zlib.crc32(real)
    name = b"a/zeros.png"
    local = struct.pack("<4s5H3I2H", b"PK\x03\x04", 20, 0, 8, 0, 0, crc, len(packed), claimed, len(name), 0) + name
    central = struct.pack(
        "<4s6H3I5H2I", b"PK\x01\x02", 20, 20, 0, 8, 0, 0, crc, len(packed), claimed, len(name), 0, 0, 0, 0, 0, 0
    ) + name
    end = struct.pack("<4s4H2IH", b"PK\x05\x06", 0, 0, 1, 1, len(central), len(local) + len(packed), 0)
    path.write_bytes(local + packed + central + end)
    return path


def test_zip_member_larger_than_its_header_is_refused(work: Path) -> None:
    archive = _lying_zip(work / "in" / "liar.zip", b"\0" * (4 * MiB), claimed=100)
    with pytest.raises(DatasetError, match="cannot extract|larger than its header"):
        extract_archive(archive, work / "out", limits=ArchiveLimits(max_total_bytes=MiB, max_ratio=10_000))
    _assert_clean(work)
    assert not (work / "out").exists()


def test_defaults_accept_ordinary_datasets(work: Path) -> None:
    archive = _zip(work / "in" / "ok.zip", {f"{c}/{i}.png": _png() for c in "ab" for i in range(3)})
    out = extract_archive(archive, work / "out")
    assert _du(out) == 6 * len(_png())
