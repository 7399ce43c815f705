from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from core.jobs.dispatch import DispatchError
from core.jobs.runner import run_job
from core.settings import Settings
from tests.api.conftest import assert_error


def _create(client: TestClient, dataset: dict, **body) -> dict:
    response = client.post("/jobs", json={"dataset_id": dataset["id"], "base_model": "clipadapt-tiny"} | body)
    assert response.status_code == 201, response.text
    return response.json()


def test_create_job_is_queued_with_defaults_filled_in(client: TestClient, dataset: dict) -> None:
    job = _create(client, dataset, name="first", metadata={"team": "vision"},
                  recipe={"method": "layernorm", "layernorm": "none", "shots": 4})
    assert job["state"] == "queued" and job["name"] == "first" and job["metadata"] == {"team": "vision"}
    assert job["recipe"]["method"] == "layernorm" and job["recipe"]["shots"] == 4
    assert job["recipe"]["seed"] == 0 and "weight_decay" in job["recipe"]
    assert job["progress"] == {"stage": None, "stage_name": None, "epoch": None, "epochs": None}
    assert client.app.state.dispatcher.submitted == [job["id"]]
    assert _create(client, dataset)["recipe"]["method"] == "auto"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"recipe": {"method": "no-such-method"}}, "recipe"),
        ({"recipe": {"method": "layernorm", "epochs": -1}}, "epochs"),
        ({"recipe": {"method": "layernorm", "layernorm": "sideways"}}, "layernorm"),
        ({"recipe": {"method": "layernorm", "learning_rate": 1}}, "learning_rate"),
        ({"base_model": "no-such-model"}, "base_model"),
        ({"dataset_id": "no-such-dataset"}, "dataset_id"),
        ({"name": "x" * 300}, "name"),
    ],
)
def test_invalid_job_requests_name_the_field(client: TestClient, dataset: dict, body: dict, field: str) -> None:
    payload = {"dataset_id": dataset["id"], "base_model": "clipadapt-tiny"} | body
    error = assert_error(client.post("/jobs", json=payload), 422, "validation_error")
    assert field in error["message"]
    assert any(field in map(str, e["loc"]) for e in error["detail"])
    assert client.get("/jobs").json()["count"] == 0


def test_a_lora_schedule_over_the_epoch_limit_is_refused_with_the_fix(client: TestClient, dataset: dict) -> None:
    # 3 classes x 4 shots = 12 images, one step an epoch: 500 x 4 steps would be 2,000 epochs.
    payload = {"dataset_id": dataset["id"], "base_model": "clipadapt-tiny", "recipe": {"method": "lora", "shots": 4}}
    error = assert_error(client.post("/jobs", json=payload), 422, "validation_error")
    assert error["message"].startswith("body.recipe: lora: iterations_per_shot 500 x 4 shots = 2,000 steps")
    assert "2,000 epochs, more than the limit of 1000" in error["message"]
    assert error["message"].endswith("Set epochs (at most 1000) or iterations_per_shot (at most 250 on this data)")
    assert error["detail"][0]["loc"] == ["body", "recipe"] and error["detail"][0]["input"]["shots"] == 4
    assert client.get("/jobs").json()["count"] == 0 and client.app.state.dispatcher.submitted == []
    # Either fix it names is accepted.
    for fix in ({"iterations_per_shot": 250}, {"epochs": 3}):
        assert _create(client, dataset, recipe=payload["recipe"] | fix)["state"] == "queued"


def test_a_job_submitted_while_the_broker_is_down_is_dispatched_once_it_is_back(
    client: TestClient, dataset: dict, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from datetime import timedelta

    from core.jobs.recovery import dispatch_pending

    class Down:
        def submit(self, job_id: str) -> None:
            raise DispatchError("cannot reach the broker: connection refused")

    up = client.app.state.dispatcher
    client.app.state.dispatcher = Down()
    response = client.post("/jobs", json={"dataset_id": dataset["id"], "base_model": "clipadapt-tiny"})
    assert response.status_code == 201, response.text  # stored, in the outbox
    job = response.json()
    assert job["state"] == "queued" and job["dispatch_pending"] and job["error"] is None

    monkeypatch.setattr("core.jobs.recovery.DISPATCH_GRACE", timedelta(0))
    assert dispatch_pending(settings, Down().submit) == []  # the broker is still away
    assert client.get(f"/jobs/{job['id']}").json()["dispatch_pending"]
    assert dispatch_pending(settings, up.submit) == [job["id"]]  # back: dispatched once
    assert dispatch_pending(settings, up.submit) == []
    assert up.submitted == [job["id"]]
    job = client.get(f"/jobs/{job['id']}").json()
    assert job["state"] == "queued" and not job["dispatch_pending"]
    messages = [e["message"] for e in client.get(f"/jobs/{job['id']}/events").json()["data"]]
    assert any(m.startswith("not dispatched yet") for m in messages) and "dispatched by the recovery loop" in messages


def test_a_dispatched_job_is_not_pending(client: TestClient, dataset: dict, settings: Settings) -> None:
    from datetime import timedelta

    from core.jobs.db import transaction
    from core.jobs.repository import JobRepository

    job = _create(client, dataset)
    assert not job["dispatch_pending"] and client.app.state.dispatcher.submitted == [job["id"]]
    with transaction(settings.resolved_database_url) as session:
        assert JobRepository(session).pending_dispatch(older_than=timedelta(0)) == []


def test_list_paginates_and_filters(client: TestClient, dataset: dict) -> None:
    ids = [_create(client, dataset, name=f"j{i}")["id"] for i in range(3)]
    client.post(f"/jobs/{ids[1]}/cancel")
    page = client.get("/jobs", params={"limit": 2}).json()
    assert page["count"] == 3 and len(page["data"]) == 2
    assert client.get("/jobs", params={"limit": 2, "offset": 2}).json()["data"][0]["id"] in ids
    cancelled = client.get("/jobs", params={"state": "cancelled"}).json()
    assert cancelled["count"] == 1 and cancelled["data"][0]["id"] == ids[1]
    assert_error(client.get("/jobs", params={"state": "paused"}), 422, "validation_error")
    assert_error(client.get("/jobs", params={"limit": 0}), 422, "validation_error")


def test_cancel_rules(client: TestClient, dataset: dict) -> None:
    job = _create(client, dataset)
    cancelled = client.post(f"/jobs/{job['id']}/cancel").json()
    assert cancelled["state"] == "cancelled" and cancelled["finished_at"]
    assert_error(client.post(f"/jobs/{job['id']}/cancel"), 409, "job_finished")
    assert_error(client.post("/jobs/nope/cancel"), 404, "job_not_found")
    states = [e["state"] for e in client.get(f"/jobs/{job['id']}/events").json()["data"]]
    assert states == ["queued", "cancelled"]


def test_trained_job_exposes_metrics_events_artifact_and_model(
    client: TestClient, dataset: dict, settings: Settings, example_zip: Path
) -> None:
    job = _create(client, dataset, recipe={"method": "layernorm", "epochs": 2, "batch_size": 8})
    assert_error(client.get(f"/jobs/{job['id']}/artifact"), 409, "artifact_unavailable")
    run_job(job["id"], settings=settings)

    job = client.get(f"/jobs/{job['id']}").json()
    assert job["state"] == "succeeded", job["error"]
    assert job["progress"] == {"stage": 0, "stage_name": "layernorm", "epoch": 2, "epochs": 2}
    assert job["trainable_params"] > 0 and job["artifact_available"]
    assert set(job["val_metrics"]) >= {"accuracy", "macro_f1"} and "accuracy" in job["test_metrics"]
    assert job["resolved_recipe"]["method"] == "layernorm"
    assert job["started_at"] <= job["finished_at"]

    metrics = client.get(f"/jobs/{job['id']}/metrics").json()
    assert metrics["count"] == 2 and [m["epoch"] for m in metrics["data"]] == [1, 2]
    events = client.get(f"/jobs/{job['id']}/events").json()["data"]
    assert [e["state"] for e in events if e["kind"] == "state"] == ["queued", "running", "succeeded"]

    tgz = client.get(f"/jobs/{job['id']}/artifact")
    assert tgz.status_code == 200 and tgz.headers["content-type"] == "application/gzip"
    assert f'{job["id"]}.tar.gz' in tgz.headers["content-disposition"]
    with tarfile.open(fileobj=io.BytesIO(tgz.content)) as tar:
        tar_names = {m.name for m in tar.getmembers() if m.isfile()}
    archive = client.get(f"/jobs/{job['id']}/artifact", params={"format": "zip"})
    assert archive.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(archive.content)) as zf:
        assert set(zf.namelist()) == tar_names
        assert zf.testzip() is None
    assert f"{job['id']}/manifest.json" in tar_names

    models = client.get("/models").json()["data"]
    tuned = [m for m in models if m["kind"] == "fine-tuned"]
    assert [m["job_id"] for m in tuned] == [job["id"]]
    assert tuned[0]["classnames"] == dataset["classnames"] and tuned[0]["method"] == "layernorm"


def test_unknown_job_is_404_everywhere(client: TestClient) -> None:
    for path in ("/jobs/nope", "/jobs/nope/metrics", "/jobs/nope/events", "/jobs/nope/artifact"):
        assert_error(client.get(path), 404, "job_not_found")
