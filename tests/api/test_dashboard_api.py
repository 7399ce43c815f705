"""The API routes the dashboard needs: recipe schema, recipe estimate, dataset thumbnails; and the
page itself at `/` without shadowing the API or /docs."""

from __future__ import annotations

import base64
import io

from fastapi.testclient import TestClient
from PIL import Image

from api.routes.dashboard import THUMB_PX
from core.adapt.methods import METHODS
from core.settings import Settings
from tests.api.conftest import assert_error, authed_client


def test_schema_follows_the_method_registry(client: TestClient) -> None:
    schema = client.get("/recipes/schema").json()
    mapping = schema["properties"]["recipe"]["discriminator"]["mapping"]
    assert set(mapping) == {*METHODS, "auto"}
    adapter = schema["$defs"][mapping["adapter"].split("/")[-1]]
    assert {"layernorm", "epochs", "lr"} <= set(adapter["properties"])
    auto = schema["$defs"][mapping["auto"].split("/")[-1]]
    assert "similarity_threshold" in auto["properties"]
    assert {"dataset_id", "base_model"} <= set(schema["required"])


def test_estimate_counts_on_the_real_model(client: TestClient, dataset: dict) -> None:
    body = {"base_model": "clipadapt-tiny", "dataset_id": dataset["id"],
            "recipe": {"method": "adapter", "layernorm": "init", "epochs": 3, "init_epochs": 2, "shots": 2, "batch_size": 4}}
    est = client.post("/recipes/estimate", json=body).json()
    # The same count the CLI gives for this recipe (`clipadapt methods` uses the same code path).
    from core.adapt.adapted import count_trainable
    from core.adapt.models import ModelSpec, load_base_model
    from core.adapt.recipe import parse_recipe
    from core.jobs.catalog import load_catalog

    base = load_base_model(ModelSpec(**load_catalog()["clipadapt-tiny"].spec()))
    expected = count_trainable(base.model, parse_recipe(body["recipe"]), 3, base.tokenizer, base.preprocess)
    assert est["trainable_params"] == expected > 0 and est["error"] is None
    # 3 classes x 2 shots = 6 images, batch 4: 2 steps an epoch; LayerNorm init stage first.
    assert [(s["name"], s["epochs"], s["steps"]) for s in est["stages"]] == [("layernorm_init", 2, 4), ("adapter", 3, 6)]
    assert est["epochs"] == 5 and est["train_images"] == 6
    assert est["seconds"] is None  # no earlier epochs to measure from


def test_estimate_errors(client: TestClient, dataset: dict) -> None:
    ok = {"base_model": "clipadapt-tiny", "dataset_id": dataset["id"], "recipe": {"method": "layernorm"}}
    assert_error(client.post("/recipes/estimate", json={**ok, "recipe": {"method": "nope"}}), 422, "invalid_recipe")
    assert_error(client.post("/recipes/estimate", json={**ok, "base_model": "nope"}), 422, "validation_error")
    assert_error(client.post("/recipes/estimate", json={**ok, "dataset_id": "missing"}), 404, "dataset_not_found")
    assert_error(client.post("/recipes/estimate", json={"base_model": "clipadapt-tiny", "recipe": {"method": "layernorm"}}),
                 422, "invalid_request")
    auto = client.post("/recipes/estimate", json={**ok, "recipe": {"method": "auto"}}).json()
    assert auto["trainable_params"] is None and "auto" in auto["error"] and auto["epochs"] == 100


def test_estimate_plans_lora_steps_on_the_dataset(client: TestClient, dataset: dict) -> None:
    body = {"base_model": "clipadapt-tiny", "dataset_id": dataset["id"],
            "recipe": {"method": "lora", "shots": 4, "iterations_per_shot": 100}}
    est = client.post("/recipes/estimate", json=body).json()
    # 3 classes x 4 shots = 12 images, one step an epoch: 100 x 4 steps are 400 epochs, as training runs.
    assert [(s["name"], s["epochs"], s["steps"]) for s in est["stages"]] == [("lora", 400, 400)]
    error = assert_error(client.post("/recipes/estimate", json={**body, "recipe": {"method": "lora", "shots": 4}}),
                         422, "validation_error")
    assert "2,000 epochs" in error["message"] and "iterations_per_shot (at most 250" in error["message"]


def test_estimate_reports_a_model_that_cannot_be_built(make_settings, database_url: str, tmp_path) -> None:
    catalog = tmp_path / "catalog.json"
    catalog.write_text('{"models": [{"name": "broken", "model": "/nonexistent/config.json"}]}')
    settings = make_settings(database_url=database_url, model_catalog=str(catalog))
    with authed_client(settings) as client:
        est = client.post("/recipes/estimate", json={"base_model": "broken", "num_classes": 4, "recipe": {"method": "layernorm"}})
    assert est.status_code == 200, est.text
    assert est.json()["trainable_params"] is None and "could not build broken" in est.json()["error"]


def test_thumbnails_are_small_images_of_the_class(client: TestClient, dataset: dict) -> None:
    cid = dataset["class_ids"][1]
    out = client.get(f"/datasets/{dataset['id']}/thumbnails", params={"class": cid, "limit": 3}).json()
    assert len(out["data"]) == 3 and {t["class_id"] for t in out["data"]} == {cid}
    for thumb in out["data"]:
        header, data = thumb["data_url"].split(",", 1)
        assert header == "data:image/jpeg;base64"
        img = Image.open(io.BytesIO(base64.b64decode(data)))
        assert img.format == "JPEG" and max(img.size) <= THUMB_PX
    assert_error(client.get(f"/datasets/{dataset['id']}/thumbnails", params={"class": "nope"}), 404, "not_found")
    assert client.get(f"/datasets/{dataset['id']}/thumbnails", params={"class": cid, "limit": 0}).status_code == 422
    # Without a class: `limit` of every class from one extraction (8 images per class in the example).
    every = client.get(f"/datasets/{dataset['id']}/thumbnails", params={"limit": 5}).json()["data"]
    assert [t["class_id"] for t in every].count(cid) == 5 and {t["class_id"] for t in every} == set(dataset["class_ids"])


def test_thumbnails_are_owner_isolated(settings: Settings, dataset: dict) -> None:
    with authed_client(settings, owner="mallory") as other:
        response = other.get(f"/datasets/{dataset['id']}/thumbnails", params={"class": dataset["class_ids"][0]})
    assert_error(response, 404, "dataset_not_found")


def test_dashboard_is_served_without_shadowing_the_api(settings: Settings) -> None:
    with TestClient(__import__("api.main", fromlist=["create_app"]).create_app(settings)) as anon:
        page = anon.get("/")
        assert page.status_code == 200 and 'src="app.js"' in page.text
        assert anon.get("/app.js").headers["content-type"].startswith("text/javascript")
        assert anon.get("/vendor/uplot/uPlot.iife.min.js").status_code == 200
        assert anon.get("/docs").status_code == 200 and anon.get("/openapi.json").status_code == 200
        assert_error(anon.get("/datasets"), 401, "unauthorized")  # API routes still win, and stay authenticated
        assert anon.get("/no-such-file.js").status_code == 404
