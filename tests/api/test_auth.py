"""API keys and tenancy: every dataset, job, artifact and model belongs to its key's owner; another
owner gets 404 (not 403) and lists show only one's own."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError
from typer.testing import CliRunner

from api.main import create_app
from core.jobs.runner import run_job
from core.settings import Settings
from tests.api.conftest import assert_error, authed_client, create_key


def _upload(client: TestClient, example_zip: Path) -> dict:
    response = client.post("/datasets", files={"file": ("digits.zip", example_zip.read_bytes())})
    assert response.status_code == 201, response.text
    return response.json()


def test_requests_without_a_valid_key_are_refused(settings: Settings) -> None:
    key = create_key(settings, "alice")
    with TestClient(create_app(settings)) as anonymous:
        for method, path in (("GET", "/jobs"), ("GET", "/datasets"), ("GET", "/models"), ("POST", "/jobs"),
                             ("POST", "/predict"), ("POST", "/datasets"), ("GET", "/jobs/x/artifact")):
            response = anonymous.request(method, path)
            assert_error(response, 401, "unauthorized")
            assert response.headers["www-authenticate"] == "Bearer"
        wrong_secret = key[:-1] + ("A" if key[-1] != "A" else "B")
        for bad in ("Bearer nope", f"Bearer {key}x", f"Bearer {wrong_secret}", f"Basic {key}", key):
            assert_error(anonymous.get("/jobs", headers={"Authorization": bad}), 401, "unauthorized")
        assert anonymous.get("/jobs", headers={"Authorization": f"Bearer {key}"}).status_code == 200
        # Health checks and the docs stay open; the schema documents bearer auth.
        assert anonymous.get("/healthz").status_code == 200 and anonymous.get("/readyz").status_code == 200
        schema = anonymous.get("/openapi.json").json()
        assert schema["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"


def test_each_owner_sees_only_their_own(settings: Settings, example_zip: Path) -> None:
    with authed_client(settings, "alice") as alice, authed_client(settings, "bob", app=alice.app) as bob:
        dataset = _upload(alice, example_zip)
        job = alice.post("/jobs", json={"dataset_id": dataset["id"], "base_model": "clipadapt-tiny",
                                        "recipe": {"method": "linear_probe", "epochs": 1, "batch_size": 8}}).json()
        assert run_job(job["id"], settings=settings) == "succeeded"
        bobs = _upload(bob, example_zip)

        for path in (f"/datasets/{dataset['id']}", f"/jobs/{job['id']}", f"/jobs/{job['id']}/metrics",
                     f"/jobs/{job['id']}/events", f"/jobs/{job['id']}/artifact"):
            assert bob.get(path).status_code == 404, path
            assert alice.get(path).status_code == 200, path
        for format in ("zip", "open_clip", "onnx"):  # exports too: refused before anything is built
            assert_error(bob.get(f"/jobs/{job['id']}/artifact", params={"format": format}), 404, "job_not_found")
        assert_error(bob.post(f"/jobs/{job['id']}/cancel"), 404, "job_not_found")
        assert_error(bob.delete(f"/datasets/{dataset['id']}"), 404, "dataset_not_found")
        # Bob cannot train on, or predict with, what is Alice's: as if it did not exist.
        error = assert_error(bob.post("/jobs", json={"dataset_id": dataset["id"], "base_model": "clipadapt-tiny"}),
                             422, "validation_error")
        assert "dataset_id" in error["message"]
        image = [("images", ("x.png", example_zip.read_bytes()))]
        assert "job_id" in assert_error(bob.post("/predict", data={"job_id": job["id"]}, files=image),
                                        422, "validation_error")["message"]

        assert [d["id"] for d in alice.get("/datasets").json()["data"]] == [dataset["id"]]
        assert [d["id"] for d in bob.get("/datasets").json()["data"]] == [bobs["id"]]
        assert [j["id"] for j in alice.get("/jobs").json()["data"]] == [job["id"]]
        assert bob.get("/jobs").json() == {"data": [], "count": 0}
        alice_models, bob_models = alice.get("/models").json()["data"], bob.get("/models").json()["data"]
        assert [m["job_id"] for m in alice_models if m["kind"] == "fine-tuned"] == [job["id"]]
        assert [m for m in bob_models if m["kind"] == "fine-tuned"] == []
        base = [m["name"] for m in alice_models if m["kind"] == "base"]
        assert base == [m["name"] for m in bob_models if m["kind"] == "base"] and "clipadapt-tiny" in base


def test_keys_cli_creates_lists_and_revokes(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    from core.cli import app as cli
    from core.settings import get_settings

    monkeypatch.setenv("CLIPADAPT_DATABASE_URL", settings.resolved_database_url)
    get_settings.cache_clear()
    try:
        runner = CliRunner()
        created = runner.invoke(cli, ["keys", "create", "--owner", "carol", "--json"])
        assert created.exit_code == 0, created.output
        key = json.loads(created.stdout)
        assert key["owner"] == "carol" and key["key"].startswith(f"ca_{key['id']}_")
        listed = json.loads(runner.invoke(cli, ["keys", "list", "--json"]).stdout)
        assert [(k["id"], k["owner"]) for k in listed] == [(key["id"], "carol")]
        assert "key" not in listed[0]  # the key itself is never shown again

        with TestClient(create_app(settings), headers={"Authorization": f"Bearer {key['key']}"}) as client:
            assert client.get("/jobs").status_code == 200
            assert runner.invoke(cli, ["keys", "revoke", key["id"]]).exit_code == 0
            assert_error(client.get("/jobs"), 401, "unauthorized")  # at once, no restart
        assert json.loads(runner.invoke(cli, ["keys", "list", "--json"]).stdout) == []
        assert json.loads(runner.invoke(cli, ["keys", "list", "--all", "--json"]).stdout)[0]["revoked_at"]
        assert runner.invoke(cli, ["keys", "revoke", "nope"]).exit_code == 2
        assert runner.invoke(cli, ["keys", "create", "--owner", "no spaces"]).exit_code == 2
    finally:
        get_settings.cache_clear()


def test_keys_are_stored_hashed(settings: Settings) -> None:
    from sqlalchemy import select

    from core.jobs.db import transaction
    from core.jobs.models import ApiKey

    key = create_key(settings, "alice")
    with transaction(settings.resolved_database_url) as session:
        row = session.scalars(select(ApiKey)).one()
    assert key.split("_")[2] not in row.secret_hash and len(row.secret_hash) == 64


def test_auth_can_be_disabled_only_on_loopback(make_settings: Callable[..., Settings], database_url: str,
                                               example_zip: Path, caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(ValidationError, match="loopback"):
        make_settings(database_url=database_url, auth="disabled", bind_host="0.0.0.0")
    settings = make_settings(database_url=database_url, auth="disabled", bind_host="127.0.0.1")
    with caplog.at_level(logging.WARNING, logger="api"):
        with TestClient(create_app(settings), client=("127.0.0.1", 40000)) as local:
            dataset = _upload(local, example_zip)
            assert local.get("/datasets").json()["data"][0]["id"] == dataset["id"]
    assert any("authentication is DISABLED" in r.message for r in caplog.records)
    # Started by hand on another address anyway: only local clients are served.
    with TestClient(create_app(settings), client=("192.0.2.7", 40000)) as remote:
        assert_error(remote.get("/datasets"), 403, "forbidden")
