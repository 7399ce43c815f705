"""Hostile and broken uploads through HTTP: refused cleanly (4xx, the reason named), nothing written
outside the data directory, nothing half-stored."""

from __future__ import annotations

import io
import os
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from core.settings import Settings
from tests.api.conftest import assert_error, authed_client

MiB = 1024 * 1024


def _png(size: tuple[int, int] = (16, 16), fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (30, 120, 200)).save(buffer, fmt)
    return buffer.getvalue()


def _zip(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buffer.getvalue()


def _tgz(members: list[tarfile.TarInfo], payloads: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tf:
        for member in members:
            data = payloads.get(member.name)
            if data is not None:
                member.size = len(data)
            tf.addfile(member, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def _file(name: str, size: int | None = None) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    if size is not None:
        info.size = size
    return info


def _system_temp_uploads() -> set[str]:
    return {p for p in os.listdir(tempfile.gettempdir()) if p.startswith("clipadapt-upload-")}


@pytest.fixture
def limited(make_settings: Callable[..., Settings], database_url: str) -> Iterator[tuple[TestClient, Settings]]:
    settings = make_settings(
        database_url=database_url, max_upload_mb=2, max_dataset_mb=4, max_dataset_files=50, max_archive_ratio=50,
        max_image_mb=1, max_image_pixels=64 * 64, max_predict_images=4,
    )
    with authed_client(settings) as client:
        yield client, settings


def _assert_nothing_stored(client: TestClient, settings: Settings) -> None:
    assert client.get("/datasets").json()["count"] == 0
    storage = settings.data_dir / "storage"
    assert not any(p.is_file() for p in storage.rglob("*")) if storage.exists() else True
    scratch = settings.data_dir / "tmp"
    assert not scratch.exists() or list(scratch.iterdir()) == []


def _stream_to_app(app, path: str, headers: dict[str, str], chunks: Iterator[bytes]) -> tuple[int, dict, int]:
    """Send a body chunk by chunk straight to the ASGI app (as a server does with a chunked body,
    and unlike TestClient, which reads the whole body first); returns the status, the JSON answer and
    how many body bytes the app pulled before answering."""
    import json

    import anyio

    pulled = 0
    sent: list[dict] = []

    async def receive() -> dict:
        nonlocal pulled
        chunk = next(chunks, None)
        if chunk is None:
            return {"type": "http.request", "body": b"", "more_body": False}
        pulled += len(chunk)
        return {"type": "http.request", "body": chunk, "more_body": True}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
        "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000), "state": {},
    }
    anyio.run(app, scope, receive, send)
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, json.loads(body), pulled


def test_chunked_upload_over_the_limit_is_refused_while_streaming(limited) -> None:
    client, settings = limited

    def body() -> Iterator[bytes]:  # 64 MiB offered, no Content-Length; the limit is 2 MiB
        yield b'--x\r\nContent-Disposition: form-data; name="file"; filename="big.zip"\r\n\r\n'
        for _ in range(256):
            yield b"\0" * (256 * 1024)
        yield b"\r\n--x--\r\n"

    headers = {"content-type": "multipart/form-data; boundary=x", "transfer-encoding": "chunked",
               "authorization": client.headers["authorization"]}
    before = _system_temp_uploads()
    status, answer, pulled = _stream_to_app(client.app, "/datasets", headers, body())
    assert status == 413 and answer["error"]["code"] == "upload_too_large", answer
    assert pulled <= 3 * MiB  # refused at the limit, not after reading the whole body
    _assert_nothing_stored(client, settings)
    assert _system_temp_uploads() <= before  # nothing written outside the data directory


def test_declared_oversize_is_refused_before_the_body(limited) -> None:
    client, settings = limited
    response = client.post("/datasets", files={"file": ("big.zip", b"\0" * (3 * MiB))})
    assert_error(response, 413, "upload_too_large")
    _assert_nothing_stored(client, settings)


def test_other_bodies_are_limited_too(limited) -> None:
    client, _ = limited
    huge = {"dataset_id": "x" * (2 * MiB), "base_model": "clipadapt-tiny"}
    assert_error(client.post("/jobs", json=huge), 413, "upload_too_large")


@pytest.mark.parametrize(
    ("archive", "filename", "reason"),
    [
        (lambda: _zip({"a/1.png": _png(), "b/zeros.png": b"\0" * (3 * MiB)}), "bomb.zip", "times its size"),
        (lambda: _tgz([_file("a/1.png"), _file("b/zeros.png")], {"a/1.png": _png(), "b/zeros.png": b"\0" * (3 * MiB)}),
         "bomb.tar.gz", "times its size"),
        (lambda: _zip({f"c{i % 2}/{i}.png": _png() for i in range(60)}), "many.zip", "more than 50 files"),
        (lambda: _zip({"a/1.png": _png(), "../../evil.png": _png()}), "dotdot.zip", "refusing member"),
        (lambda: _tgz([_file("a/1.png"), _file("/etc/evil.png")], {"a/1.png": _png(), "/etc/evil.png": _png()}),
         "absolute.tgz", "refusing member"),
        (lambda: _tgz([_file("a/1.png"), _symlink("b/link.png", "/etc/passwd")], {"a/1.png": _png()}),
         "link.tgz", "link or special file"),
        (lambda: _tgz([_file("a/1.png"), _device("b/dev.png")], {"a/1.png": _png()}), "device.tar", "special file"),
    ],
    ids=["zip-bomb", "tar-bomb", "too-many-files", "dotdot", "absolute", "symlink", "device"],
)
def test_hostile_archives_are_refused(limited, archive, filename: str, reason: str) -> None:
    client, settings = limited
    error = assert_error(client.post("/datasets", files={"file": (filename, archive())}), 400, "invalid_dataset")
    assert reason in error["message"] and filename in error["message"]
    _assert_nothing_stored(client, settings)
    assert not (settings.data_dir.parent / "evil.png").exists()


def _symlink(name: str, target: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = tarfile.SYMTYPE, target
    return info


def _device(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.CHRTYPE
    return info


@pytest.mark.parametrize(
    ("files", "reason"),
    [
        ({"cat/a.png": _png(), "cat/b.png": _png()}, "at least 2 classes"),
        ({"train/cat/a.png": _png(), "train/dog/b.png": _png(), "test/bird/c.png": _png()}, "'bird'"),
        ({"cat/a.png": _png(), "dog/b.png": _png()[:40]}, "dog/b.png"),
        ({"cat/a.png": _png(), "dog/notes.png": b"just some text"}, "dog/notes.png"),
    ],
    ids=["one-class", "class-without-training-images", "truncated", "not-an-image"],
)
def test_unusable_datasets_are_refused_with_the_reason(limited, files: dict[str, bytes], reason: str) -> None:
    client, settings = limited
    error = assert_error(client.post("/datasets", files={"file": ("d.zip", _zip(files))}), 400, "invalid_dataset")
    assert reason in error["message"]
    assert str(settings.data_dir) not in error["message"] and "/tmp" not in error["message"]  # no server paths
    _assert_nothing_stored(client, settings)


def test_decompression_bomb_image_is_refused(limited, monkeypatch: pytest.MonkeyPatch) -> None:
    client, settings = limited
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow's limit, shrunk so 64x64 is a "bomb"
    archive = _zip({"cat/a.png": _png((64, 64)), "dog/b.png": _png()})
    error = assert_error(client.post("/datasets", files={"file": ("d.zip", archive)}), 400, "invalid_dataset")
    assert "too large" in error["message"] and "cat/a.png" in error["message"]
    _assert_nothing_stored(client, settings)


PREDICT = {"base_model": "clipadapt-tiny", "classnames": "a,b"}


@pytest.mark.parametrize(
    ("image", "status", "code", "reason"),
    [
        (lambda: b"\x89PNG\r\n\x1a\n" + b"\0" * (MiB + 10), 413, "image_too_large", "larger than 1 MiB"),
        (lambda: _png((65, 64)), 413, "image_too_large", "65x64"),
        (lambda: _png((8, 8), "PPM"), 422, "validation_error", "x.img"),
        (lambda: _png((8, 8), "ICO"), 422, "validation_error", "x.img"),
        (lambda: b"GIF89a garbage", 422, "validation_error", "x.img"),
    ],
    ids=["bytes", "pixels", "ppm-format", "ico-format", "truncated"],
)
def test_predict_refuses_oversized_and_unsupported_images(limited, image, status: int, code: str, reason: str) -> None:
    client, _ = limited
    error = assert_error(client.post("/predict", data=PREDICT, files=[("images", ("x.img", image()))]), status, code)
    assert reason in error["message"]


def test_predict_body_over_the_limit_and_unknown_models(limited) -> None:
    client, _ = limited
    many = [("images", (f"{i}.png", b"\0" * MiB)) for i in range(5)]  # over 4 images x 1 MiB
    assert_error(client.post("/predict", data=PREDICT, files=many), 413, "upload_too_large")
    files = [("images", ("x.png", _png()))]
    assert_error(client.post("/predict", data={"base_model": "nope", "classnames": "a,b"}, files=files), 422, "validation_error")
    assert_error(client.post("/predict", data={"job_id": "nope"}, files=files), 422, "validation_error")
    ok = client.post("/predict", data=PREDICT, files=files)
    assert ok.status_code == 200, ok.text


def test_zero_shot_work_per_request_is_bounded(limited) -> None:
    client, _ = limited
    files = [("images", ("x.png", _png()))]
    many = ",".join(f"class {i}" for i in range(1001))
    error = assert_error(client.post("/predict", data={"base_model": "clipadapt-tiny", "classnames": many}, files=files),
                         422, "validation_error")
    assert "at most 1000 class names" in error["message"]
    long = "a," + "b" * 201
    assert_error(client.post("/predict", data={"base_model": "clipadapt-tiny", "classnames": long}, files=files),
                 422, "validation_error")
