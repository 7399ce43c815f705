from __future__ import annotations

import json
import subprocess
import sys

from fastapi.testclient import TestClient

from api.main import create_app
from tests.api.conftest import assert_error
from tests.conftest import REPO


def test_api_imports_without_torch() -> None:
    code = (
        "import sys, json; import api.main; schema = api.main.app.openapi(); "
        "print(json.dumps({'torch': 'torch' in sys.modules, 'adapt': sorted(m for m in sys.modules if m.startswith('core.adapt')),"
        " 'paths': sorted(schema['paths'])}))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, capture_output=True, text=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["torch"] is False
    assert "/jobs" in result["paths"] and "/predict" in result["paths"]


def test_openapi_documents_every_recipe_method(client: TestClient) -> None:
    from core.adapt.recipe import method_names

    schema = client.get("/openapi.json").json()
    mapping = schema["components"]["schemas"]["JobCreate"]["properties"]["recipe"]["discriminator"]["mapping"]
    assert set(mapping) == set(method_names())
    assert client.get("/docs").status_code == 200


def test_health_and_readiness(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz").json()
    assert ready["status"] == "ok" and set(ready["checks"]) == {"database", "broker", "storage"}


def test_readiness_reports_unreachable_dependencies(make_settings, tmp_path) -> None:
    settings = make_settings(
        database_url="postgresql://nobody@127.0.0.1:9/none",
        broker_url="redis://127.0.0.1:9/0",
        storage_url="s3://bucket",
        s3_endpoint_url="http://127.0.0.1:9",
        s3_access_key_id="x",
        s3_secret_access_key="y",
    )
    with TestClient(create_app(settings)) as client:
        error = assert_error(client.get("/readyz"), 503, "not_ready")
    assert all(v.startswith("error") for v in error["detail"].values())
    assert set(error["detail"]) == {"database", "broker", "storage"}


def test_unknown_route_and_method_use_the_error_shape(client: TestClient) -> None:
    assert_error(client.get("/nope"), 404, "not_found")
    assert_error(client.put("/jobs"), 405, "method_not_allowed")

