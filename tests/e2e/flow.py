"""The user's flow through HTTP, shared by the Celery and the embedded end-to-end tests."""

from __future__ import annotations

import io
import tarfile
import time
import zipfile
from pathlib import Path

import httpx


def wait_for_job(client: httpx.Client, job_id: str, timeout: float = 180) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = client.get(f"/jobs/{job_id}").json()
        if job["state"] not in ("queued", "running"):
            return job
        assert time.monotonic() < deadline, f"job still {job['state']} after {timeout}s: {job}"
        time.sleep(0.5)


def upload_train_predict(client: httpx.Client, example_zip: Path, timeout: float = 180) -> dict:
    """Upload, create a job, poll it to success, download the artifact and predict with it."""
    with example_zip.open("rb") as f:
        response = client.post("/datasets", files={"file": ("digits.zip", f, "application/zip")})
    assert response.status_code == 201, response.text
    dataset = response.json()

    recipe = {"method": "layernorm", "layernorm": "none", "epochs": 3, "batch_size": 8, "seed": 1}
    response = client.post("/jobs", json={"dataset_id": dataset["id"], "base_model": "clipadapt-tiny",
                                          "recipe": recipe, "name": "e2e", "metadata": {"run": "e2e"}})
    assert response.status_code == 201, response.text
    assert response.json()["state"] == "queued"
    job = wait_for_job(client, response.json()["id"], timeout)
    assert job["state"] == "succeeded", job["error"]
    assert job["progress"]["epoch"] == job["progress"]["epochs"] == 3
    assert job["trainable_params"] > 0 and "accuracy" in job["val_metrics"]

    metrics = client.get(f"/jobs/{job['id']}/metrics").json()
    assert [m["epoch"] for m in metrics["data"]] == [1, 2, 3]

    artifact = client.get(f"/jobs/{job['id']}/artifact")
    assert artifact.status_code == 200
    with tarfile.open(fileobj=io.BytesIO(artifact.content)) as tar:
        assert f"{job['id']}/weights.safetensors" in tar.getnames()

    with zipfile.ZipFile(example_zip) as zf:
        images = [("images", (n.replace("/", "_"), zf.read(n), "image/png")) for n in zf.namelist() if n.startswith("test/")]
    response = client.post("/predict", data={"job_id": job["id"], "top_k": 1}, files=images)
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert len(predictions) == len(images)
    assert all(p["labels"][0]["label"] in dataset["class_ids"] for p in predictions)

    models = client.get("/models").json()["data"]
    assert job["id"] in [m["job_id"] for m in models if m["kind"] == "fine-tuned"]
    return {"dataset": dataset, "job": job}


def cancel_running_job(client: httpx.Client, dataset_id: str) -> dict:
    response = client.post("/jobs", json={"dataset_id": dataset_id, "base_model": "clipadapt-tiny",
                                          "recipe": {"method": "layernorm", "epochs": 1000, "batch_size": 4}})
    job_id = response.json()["id"]
    deadline = time.monotonic() + 120
    while not client.get(f"/jobs/{job_id}/metrics").json()["count"]:
        assert time.monotonic() < deadline, client.get(f"/jobs/{job_id}").json()
        time.sleep(0.3)
    assert client.post(f"/jobs/{job_id}/cancel").json()["cancel_requested_at"]
    job = wait_for_job(client, job_id, timeout=60)
    assert job["state"] == "cancelled" and not job["artifact_available"]
    return job
