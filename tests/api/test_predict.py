from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from core.jobs.runner import run_job
from core.settings import Settings
from tests.api.conftest import assert_error


@pytest.fixture(scope="module")
def images(example_zip: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(example_zip) as zf:
        return {name.split("/", 1)[1].replace("/", "-"): zf.read(name) for name in zf.namelist() if name.startswith("test/")}


def _files(images: dict[str, bytes], n: int) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("images", (name, data, "image/png")) for name, data in list(images.items())[:n]]


def test_zero_shot_top_k_and_cache(client: TestClient, images: dict[str, bytes]) -> None:
    response = client.post(
        "/predict",
        data={"base_model": "clipadapt-tiny", "classnames": ["cat", "dog", "bird"], "top_k": 2},
        files=_files(images, 3),
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == {"kind": "zero-shot", "job_id": None, "sweep_id": None, "base_model": "clipadapt-tiny", "classnames": ["cat", "dog", "bird"]}
    assert [p["filename"] for p in body["predictions"]] == list(images)[:3]
    for prediction in body["predictions"]:
        labels = prediction["labels"]
        assert len(labels) == 2 and {l["label"] for l in labels} <= {"cat", "dog", "bird"}
        assert labels[0]["probability"] >= labels[1]["probability"] > 0

    service = client.app.state.prediction
    assert len(service.predictors) == 1 and len(service.bases) == 1
    again = client.post("/predict", data={"base_model": "clipadapt-tiny", "classnames": "cat, dog, bird"}, files=_files(images, 1))
    assert again.json()["model"]["classnames"] == ["cat", "dog", "bird"]
    assert len(service.predictors) == 1  # same model and classes: cached, not rebuilt
    client.post("/predict", data={"base_model": "clipadapt-tiny", "classnames": '["cat", "dog"]'}, files=_files(images, 1))
    assert len(service.predictors) == 2 and len(service.bases) == 1


def test_fine_tuned_prediction(client: TestClient, dataset: dict, settings: Settings, images: dict[str, bytes]) -> None:
    job = client.post("/jobs", json={"dataset_id": dataset["id"], "base_model": "clipadapt-tiny",
                                     "recipe": {"method": "linear_probe", "epochs": 2, "batch_size": 8}}).json()
    assert_error(client.post("/predict", data={"job_id": job["id"]}, files=_files(images, 1)), 409, "model_unavailable")
    run_job(job["id"], settings=settings)
    response = client.post("/predict", data={"job_id": job["id"], "top_k": 10}, files=_files(images, 2))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"]["kind"] == "fine-tuned" and body["model"]["classnames"] == dataset["classnames"]
    for prediction in body["predictions"]:
        assert sorted(l["label"] for l in prediction["labels"]) == sorted(dataset["classnames"])  # top_k capped
        assert sum(l["probability"] for l in prediction["labels"]) == pytest.approx(1, abs=1e-4)


@pytest.mark.parametrize(
    ("data", "status", "field"),
    [
        ({}, 422, "job_id"),
        ({"job_id": "x", "base_model": "clipadapt-tiny"}, 422, "job_id"),
        ({"job_id": "no-such-job"}, 422, "job_id"),
        ({"base_model": "nope", "classnames": "a,b"}, 422, "base_model"),
        ({"base_model": "clipadapt-tiny"}, 422, "classnames"),
        ({"base_model": "clipadapt-tiny", "classnames": "a,a"}, 422, "classnames"),
        ({"base_model": "clipadapt-tiny", "classnames": "a,b", "top_k": 0}, 422, "top_k"),
    ],
)
def test_bad_predict_requests(client: TestClient, images: dict[str, bytes], data: dict, status: int, field: str) -> None:
    error = assert_error(client.post("/predict", data=data, files=_files(images, 1)), status, "validation_error")
    assert field in error["message"]


def test_non_images_and_too_many_images(client: TestClient, images: dict[str, bytes]) -> None:
    files = _files(images, 1) + [("images", ("notes.txt", b"not an image", "text/plain"))]
    error = assert_error(client.post("/predict", data={"base_model": "clipadapt-tiny", "classnames": "a,b"}, files=files), 422, "validation_error")
    assert "notes.txt" in error["message"] and "object at 0x" not in error["message"]
    assert_error(client.post("/predict", data={"base_model": "clipadapt-tiny", "classnames": "a,b"}), 422, "validation_error")
    many = [("images", (f"{i}.png", next(iter(images.values())), "image/png")) for i in range(65)]
    error = assert_error(client.post("/predict", data={"base_model": "clipadapt-tiny", "classnames": "a,b"}, files=many), 422, "validation_error")
    assert "at most 64" in error["message"]


def test_compare_several_fine_tuned_models(client: TestClient, dataset: dict, settings: Settings, images: dict[str, bytes]) -> None:
    ids = []
    for method in ("linear_probe", "layernorm"):
        job = client.post("/jobs", json={"dataset_id": dataset["id"], "base_model": "clipadapt-tiny",
                                         "recipe": {"method": method, "epochs": 1, "batch_size": 8}}).json()
        run_job(job["id"], settings=settings)
        ids.append(job["id"])
    single = client.post("/predict", data={"job_id": ids[1], "top_k": 2}, files=_files(images, 2))
    assert single.status_code == 200 and "models" not in single.json()  # one model: today's shape
    response = client.post("/predict", data={"job_id": ids, "top_k": 2}, files=_files(images, 2))
    assert response.status_code == 200, response.text
    body = response.json()
    assert [m["model"]["job_id"] for m in body["models"]] == ids
    assert body["model"] == body["models"][0]["model"] and body["predictions"] == body["models"][0]["predictions"]
    # Served together (LayerNorm applied per image in a shared pass) or alone: the same to float rounding.
    for together, alone in zip(body["models"][1]["predictions"], single.json()["predictions"], strict=True):
        assert [l["label"] for l in together["labels"]] == [l["label"] for l in alone["labels"]]
        assert [l["probability"] for l in together["labels"]] == pytest.approx([l["probability"] for l in alone["labels"]], abs=1e-6)
    assert client.post("/predict", data={"job_id": ",".join(ids)}, files=_files(images, 1)).status_code == 200
    assert "unique" in assert_error(client.post("/predict", data={"job_id": [ids[0], ids[0]]}, files=_files(images, 1)),
                                    422, "validation_error")["message"]
    assert "at most 16" in assert_error(client.post("/predict", data={"job_id": [f"j{i}" for i in range(17)]},
                                                    files=_files(images, 1)), 422, "validation_error")["message"]
    assert_error(client.post("/predict", data={"job_id": [ids[0], "no-such-job"]}, files=_files(images, 1)), 422, "validation_error")


def test_download_exports(client: TestClient, dataset: dict, settings: Settings) -> None:
    import io
    import tarfile

    job = client.post("/jobs", json={"dataset_id": dataset["id"], "base_model": "clipadapt-tiny",
                                     "recipe": {"method": "layernorm", "epochs": 1, "batch_size": 8}}).json()
    assert_error(client.get(f"/jobs/{job['id']}/artifact", params={"format": "onnx"}), 409, "artifact_unavailable")
    run_job(job["id"], settings=settings)
    for fmt, expected in (("onnx", {"model.onnx", "export.json"}),
                          ("open_clip", {"open_clip_model.safetensors", "open_clip_config.json", "classifier.safetensors"})):
        response = client.get(f"/jobs/{job['id']}/artifact", params={"format": fmt})
        assert response.status_code == 200, response.text
        with tarfile.open(fileobj=io.BytesIO(response.content)) as tar:
            assert expected <= {Path(name).name for name in tar.getnames()}
    assert_error(client.get(f"/jobs/{job['id']}/artifact", params={"format": "tflite"}), 422, "validation_error")
