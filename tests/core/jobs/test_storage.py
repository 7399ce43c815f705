from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from core.jobs.storage import LocalStorage, S3Storage, Storage, StorageError, storage_from_settings
from core.settings import Settings


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture(params=["local", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    if request.param == "local":
        return storage_from_settings(Settings(data_dir=tmp_path))
    endpoint = request.getfixturevalue("s3_endpoint")
    settings = Settings(
        storage_url="s3://clipadapt-test/some/prefix",
        s3_endpoint_url=endpoint,
        s3_access_key_id="test",
        s3_secret_access_key="test",
    )
    store = storage_from_settings(settings)
    assert isinstance(store, S3Storage) and store.prefix == "some/prefix"
    store.client.create_bucket(Bucket="clipadapt-test")
    return store


def test_round_trip_exists_delete(storage: Storage, tmp_path: Path) -> None:
    source = tmp_path / "in.bin"
    source.write_bytes(b"\x00clipadapt" * 1000)
    storage.check()
    assert not storage.exists("datasets/a/archive.zip")
    storage.put_file("datasets/a/archive.zip", source)
    assert storage.exists("datasets/a/archive.zip")
    storage.get_file("datasets/a/archive.zip", tmp_path / "out" / "copy.bin")
    assert (tmp_path / "out" / "copy.bin").read_bytes() == source.read_bytes()
    storage.delete("datasets/a/archive.zip")
    assert not storage.exists("datasets/a/archive.zip")
    storage.delete("datasets/a/archive.zip")  # deleting twice is fine


def test_delete_prefix_deletes_one_folder_only(storage: Storage, tmp_path: Path) -> None:
    source = tmp_path / "in.bin"
    source.write_bytes(b"stage")
    kept = ["sweeps/s1/stagesX.pt", "sweeps/s10/stages/a.pt", "artifacts/j/artifact.tar.gz"]
    for key in ["sweeps/s1/stages/a.pt", "sweeps/s1/stages/b.pt", "sweeps/s1/stages/deeper/c.pt", *kept]:
        storage.put_file(key, source)
    assert storage.delete_prefix("sweeps/s1/stages/") == 3
    assert not storage.exists("sweeps/s1/stages/a.pt") and all(storage.exists(key) for key in kept)
    assert storage.delete_prefix("sweeps/s1/stages/") == 0  # twice is fine
    for prefix in ("sweeps/s1", "", "../sweeps/", "/abs/"):  # a prefix is a folder, never the whole store
        with pytest.raises(StorageError):
            storage.delete_prefix(prefix)


def test_missing_object_and_bad_keys_raise(storage: Storage, tmp_path: Path) -> None:
    with pytest.raises(StorageError):
        storage.get_file("artifacts/nope/artifact.tar.gz", tmp_path / "x")
    assert not (tmp_path / "x").exists()
    for key in ("../escape", "/abs/key", "a/../../b", ""):
        with pytest.raises(StorageError):
            storage.exists(key)


def test_unreachable_s3_fails_check() -> None:
    settings = Settings(storage_url="s3://bucket", s3_endpoint_url="http://127.0.0.1:9", s3_access_key_id="x", s3_secret_access_key="y")
    with pytest.raises(StorageError):
        storage_from_settings(settings).check()


def test_storage_url_forms(tmp_path: Path) -> None:
    assert isinstance(storage_from_settings(Settings(data_dir=tmp_path)), LocalStorage)
    local = storage_from_settings(Settings(storage_url=f"file://{tmp_path}/objects"))
    assert isinstance(local, LocalStorage) and local.root == tmp_path / "objects"
    with pytest.raises(ValueError, match="unsupported storage URL"):
        storage_from_settings(Settings(storage_url="gs://bucket"))
    with pytest.raises(ValueError, match="no bucket"):
        storage_from_settings(Settings(storage_url="s3://"))


def test_init_creates_the_bucket_or_directory_once(s3_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from core.cli import app
    from core.settings import get_settings

    local = storage_from_settings(Settings(storage_url=str(tmp_path / "objects")))
    assert local.init().endswith("created") and local.init().endswith("exists")
    # `clipadapt storage init`, as docker-compose.yml's storage-init service runs it.
    for name, value in {"CLIPADAPT_STORAGE_URL": "s3://made-by-init", "CLIPADAPT_S3_ENDPOINT_URL": s3_endpoint,
                        "CLIPADAPT_S3_ACCESS_KEY_ID": "test", "CLIPADAPT_S3_SECRET_ACCESS_KEY": "test"}.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    try:
        first = CliRunner().invoke(app, ["storage", "init"])
        second = CliRunner().invoke(app, ["storage", "init"])
    finally:
        get_settings.cache_clear()
    assert first.exit_code == 0 and "s3://made-by-init created" in first.output, first.output
    assert second.exit_code == 0 and "s3://made-by-init exists" in second.output
    s3 = storage_from_settings(Settings(storage_url="s3://made-by-init", s3_endpoint_url=s3_endpoint,
                                        s3_access_key_id="test", s3_secret_access_key="test"))
    s3.check()


def test_init_reports_an_unreachable_store() -> None:
    from typer.testing import CliRunner

    from core.cli import app

    settings = Settings(storage_url="s3://b", s3_endpoint_url="http://127.0.0.1:9", s3_access_key_id="x",
                        s3_secret_access_key="y")
    with pytest.raises(StorageError, match="not reachable"):
        storage_from_settings(settings).init()
    result = CliRunner().invoke(app, ["storage", "init"], env={"CLIPADAPT_STORAGE_URL": "ftp://nowhere"})
    assert result.exit_code == 2 and "unsupported storage URL" in result.output
