from __future__ import annotations

import io
import stat
import zipfile
from pathlib import Path

from fastapi.testclient import TestClient

from core.jobs.storage import get_storage
from core.settings import Settings
from tests.api.conftest import assert_error, authed_client


def _zip(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, data in files.items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFREG | 0o644) << 16  # as `zip` and zipfile.write record it
            zf.writestr(info, data)
    return buffer.getvalue()


def test_upload_validates_and_reports_classes_and_counts(
    client: TestClient, dataset: dict, settings: Settings
) -> None:
    assert dataset["name"] == "digits" and dataset["filename"] == "digits.zip"
    assert dataset["class_ids"] == ["one", "two", "zero"]
    assert dataset["split_counts"] == {
        split: {c: n for c in ("one", "two", "zero")} for split, n in (("train", 4), ("val", 2), ("test", 2))
    }
    assert client.get(f"/datasets/{dataset['id']}").json() == dataset
    listing = client.get("/datasets").json()
    assert listing["count"] == 1 and listing["data"] == [dataset]
    assert get_storage(settings).exists(f"datasets/{dataset['id']}/archive.zip")


def test_invalid_archives_are_refused_with_the_reason(client: TestClient, example_zip: Path) -> None:
    error = assert_error(client.post("/datasets", files={"file": ("notes.txt", b"hello")}), 400, "unsupported_archive")
    assert "notes.txt" in error["message"]
    error = assert_error(client.post("/datasets", files={"file": ("broken.zip", b"not a zip")}), 400, "invalid_dataset")
    assert "broken" in error["message"] or "zip" in error["message"]
    one_class = _zip({"cat/a.png": example_zip.read_bytes()[:10]})
    assert_error(client.post("/datasets", files={"file": ("one.zip", one_class)}), 400, "invalid_dataset")
    png = io.BytesIO()
    from PIL import Image

    Image.new("RGB", (8, 8)).save(png, "PNG")
    corrupt = _zip({"cat/a.png": png.getvalue(), "dog/b.png": b"\x89PNG truncated"})
    error = assert_error(client.post("/datasets", files={"file": ("corrupt.zip", corrupt)}), 400, "invalid_dataset")
    assert "b.png" in error["message"]
    assert client.get("/datasets").json()["count"] == 0  # nothing half-stored


def test_upload_size_limit(make_settings, database_url: str, example_zip: Path) -> None:
    with authed_client(make_settings(database_url=database_url, max_upload_mb=1)) as client:
        big = b"\0" * (1024 * 1024 + 1)
        assert_error(client.post("/datasets", files={"file": ("big.zip", big)}), 413, "upload_too_large")
        assert client.post("/datasets", files={"file": ("d.zip", example_zip.read_bytes())}).status_code == 201


def test_missing_file_field_is_422(client: TestClient) -> None:
    error = assert_error(client.post("/datasets", data={"name": "x"}), 422, "validation_error")
    assert "file" in error["message"]


def test_delete_refused_while_a_job_needs_it(client: TestClient, dataset: dict, settings: Settings) -> None:
    job = client.post("/jobs", json={"dataset_id": dataset["id"], "base_model": "clipadapt-tiny"}).json()
    assert_error(client.delete(f"/datasets/{dataset['id']}"), 409, "dataset_in_use")
    client.post(f"/jobs/{job['id']}/cancel")
    assert client.delete(f"/datasets/{dataset['id']}").status_code == 204
    assert_error(client.get(f"/datasets/{dataset['id']}"), 404, "dataset_not_found")
    assert_error(client.delete(f"/datasets/{dataset['id']}"), 404, "dataset_not_found")
    assert not get_storage(settings).exists(f"datasets/{dataset['id']}/archive.zip")
    assert client.get(f"/jobs/{job['id']}").json()["dataset_id"] is None
