"""The sweeps API: create, watch, promote, predict with the sweep, cancel; owners see only theirs."""

from __future__ import annotations

import zipfile
from pathlib import Path

from fastapi.testclient import TestClient

from core.jobs.files import stage_cache_key
from core.jobs.runner import run_job
from core.jobs.storage import get_storage
from core.settings import Settings
from tests.api.conftest import assert_error, authed_client

RECIPE = {"epochs": 1, "batch_size": 8, "feature_views": 1}


def _image(example_zip: Path) -> list[tuple[str, tuple[str, bytes, str]]]:
    with zipfile.ZipFile(example_zip) as zf:
        name = next(n for n in zf.namelist() if n.startswith("test/") and n.endswith(".png"))
        return [("images", ("x.png", zf.read(name), "image/png"))]


def _upload(client: TestClient, example_zip: Path) -> dict:
    with example_zip.open("rb") as f:
        response = client.post("/datasets", files={"file": ("digits.zip", f, "application/zip")})
    assert response.status_code == 201, response.text
    return response.json()


def test_sweep_runs_promotes_and_predicts_and_stays_with_its_owner(settings: Settings, example_zip: Path) -> None:
    with authed_client(settings, "alice") as alice, authed_client(settings, "bob", app=alice.app) as bob:
        dataset = _upload(alice, example_zip)
        body = {"dataset_id": dataset["id"], "base_model": "clipadapt-tiny", "name": "digits",
                "space": {"methods": ["layernorm", "linear_probe"], "seeds": [0, 1], "recipe": RECIPE}}
        response = alice.post("/sweeps", json=body)
        assert response.status_code == 201, response.text
        sweep = response.json()
        assert sweep["state"] == "running" and sweep["grid_size"] == 4 and sweep["progress"]["trials"] == 4
        trials = alice.app.state.dispatcher.submitted
        assert len(trials) == 4
        jobs = alice.get("/jobs").json()["data"]  # trials are ordinary jobs
        assert {j["id"] for j in jobs} == set(trials) and {j["sweep_id"] for j in jobs} == {sweep["id"]}
        assert_error(alice.post("/predict", data={"sweep_id": sweep["id"]}, files=_image(example_zip)), 409, "model_unavailable")
        assert_error(alice.post(f"/sweeps/{sweep['id']}/promote"), 409, "sweep_not_finished")

        for job_id in trials:
            assert run_job(job_id, settings=settings) == "succeeded"
        done = alice.get(f"/sweeps/{sweep['id']}").json()
        assert done["state"] == "succeeded" and done["test_metrics"]["count"] == 6
        board = done["leaderboard"]
        assert [r["method"] for r in board] and {r["method"] for r in board} == {"layernorm", "linear_probe"}
        assert all(r["complete"] and r["seeds"] == [0, 1] and r["val_accuracy_std"] is not None for r in board)
        assert board[0]["val_accuracy_mean"] >= board[1]["val_accuracy_mean"]
        assert done["best_job_id"] in board[0]["job_ids"] and done["progress"]["epochs_trained"] == 4
        # Only the selected best is scored on the test split.
        assert [j["id"] for j in alice.get("/jobs").json()["data"] if j["test_metrics"]] == [done["best_job_id"]]

        # /predict with the sweep uses its best until another trial is promoted.
        prediction = alice.post("/predict", data={"sweep_id": sweep["id"]}, files=_image(example_zip))
        assert prediction.status_code == 200, prediction.text
        assert prediction.json()["model"]["job_id"] == done["best_job_id"]
        other = next(j for j in trials if j != done["best_job_id"])
        promoted = alice.post(f"/sweeps/{sweep['id']}/promote", json={"job_id": other})
        assert promoted.status_code == 200 and promoted.json()["promoted_job_id"] == other
        prediction = alice.post("/predict", data={"sweep_id": sweep["id"]}, files=_image(example_zip))
        assert prediction.json()["model"] | {"classnames": None} == {
            "kind": "fine-tuned", "job_id": other, "sweep_id": sweep["id"], "base_model": "clipadapt-tiny", "classnames": None}
        assert "job_id" in assert_error(alice.post(f"/sweeps/{sweep['id']}/promote", json={"job_id": "nope"}),
                                        422, "validation_error")["message"]
        assert_error(alice.post(f"/sweeps/{sweep['id']}/cancel"), 409, "sweep_finished")

        # Bob: as if the sweep did not exist.
        for path in (f"/sweeps/{sweep['id']}",):
            assert_error(bob.get(path), 404, "sweep_not_found")
        assert_error(bob.post(f"/sweeps/{sweep['id']}/promote"), 404, "sweep_not_found")
        assert_error(bob.post(f"/sweeps/{sweep['id']}/cancel"), 404, "sweep_not_found")
        assert "sweep_id" in assert_error(bob.post("/predict", data={"sweep_id": sweep["id"]}, files=_image(example_zip)),
                                          422, "validation_error")["message"]
        assert "dataset_id" in assert_error(bob.post("/sweeps", json=body), 422, "validation_error")["message"]
        assert bob.get("/sweeps").json() == {"data": [], "count": 0}
        assert [s["id"] for s in alice.get("/sweeps").json()["data"]] == [sweep["id"]]


def test_cancel_and_bad_requests(client: TestClient, dataset: dict, settings: Settings, tmp_path: Path) -> None:
    base = {"dataset_id": dataset["id"], "base_model": "clipadapt-tiny"}
    sweep = client.post("/sweeps", json=base | {"space": {"preset": "paper", "recipe": RECIPE},
                                                "budget": {"max_trials": 5}}).json()
    assert sweep["grid_size"] == 13 and sweep["progress"]["trials"] == 5
    stage = stage_cache_key(sweep["id"], "some-stage")  # as if a trial had shared its LayerNorm-init stage
    (tmp_path / "stage.pt").write_bytes(b"stage")
    get_storage(settings).put_file(stage, tmp_path / "stage.pt")
    cancelled = client.post(f"/sweeps/{sweep['id']}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    assert cancelled.json()["progress"]["states"] == {"cancelled": 5}
    assert not get_storage(settings).exists(stage)  # no trial is left to use it

    for space, field in (
        ({"preset": "everything"}, "space.preset"),
        ({"methods": ["auto"]}, "space"),
        ({"preset": "quick", "recipe": {"epochs": 0.5}}, "space"),
        ({"preset": "quick", "seeds": [0, 1], "lrs": []}, "space.lrs"),
    ):
        error = assert_error(client.post("/sweeps", json=base | {"space": space}), 422, "validation_error")
        assert field in error["message"], error
    error = assert_error(client.post("/sweeps", json=base | {"space": {"preset": "quick", "seeds": [0, 1]},
                                                             "budget": {"max_trials": 1}}), 422, "validation_error")
    assert "max_trials" in error["message"]
    # A LoRA trial whose derived schedule is over the epoch limit on this dataset (as POST /jobs refuses it).
    error = assert_error(client.post("/sweeps", json=base | {"space": {"methods": ["layernorm", "lora"], "shots": [4]}}),
                         422, "validation_error")
    assert "lora/none shots=4: lora: iterations_per_shot 500 x 4 shots" in error["message"]
    assert client.get("/sweeps").json()["count"] == 1  # only the cancelled one above
    assert_error(client.post("/sweeps", json=base | {"base_model": "nope", "space": {"preset": "quick"}}), 422, "validation_error")
    assert_error(client.get("/sweeps/nope"), 404, "sweep_not_found")
