"""A bounded fuzz run of the OpenAPI schema (schemathesis) against the app in-process, on SQLite
with auth on and a valid key: no request may get a 5xx, and every response must match the schema."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from schemathesis import GenerationMode
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance

from api.main import create_app
from core.settings import Settings
from tests.api.conftest import RecordingDispatcher, create_key
from tests.conftest import migrate


@pytest.fixture(scope="module")
def fuzz_target(tmp_path_factory: pytest.TempPathFactory, example_zip: Path) -> Iterator[tuple[TestClient, str]]:
    data = tmp_path_factory.mktemp("fuzz")
    app_settings = Settings(data_dir=data, device="cpu", torch_threads=1, database_url=f"sqlite:///{data / 'db.sqlite'}",
                            max_upload_mb=2)
    migrate(app_settings.resolved_database_url)
    key = create_key(app_settings, "fuzzer")
    with TestClient(create_app(app_settings), headers={"Authorization": f"Bearer {key}"}) as client:
        client.app.state.dispatcher = RecordingDispatcher()  # jobs are stored, never trained
        # Something to find: a dataset and a job, so that valid ids can turn up too.
        dataset = client.post("/datasets", files={"file": ("digits.zip", example_zip.read_bytes())}).json()
        client.post("/jobs", json={"dataset_id": dataset["id"], "base_model": "clipadapt-tiny"})
        yield client, key


OPERATION_EXAMPLES = 40  # per operation and mode: ~1000 requests, ~15 s on two cores


def test_no_server_errors_and_responses_match_the_schema(fuzz_target: tuple[TestClient, str]) -> None:
    client, key = fuzz_target
    schema = schemathesis.openapi.from_asgi("/openapi.json", client.app)
    checks = [not_a_server_error, response_schema_conformance, content_type_conformance]
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 12  # every route is fuzzed
    statuses: Counter[int] = Counter()

    for operation in operations:
        # Valid requests, then invalid ones (wrong types, missing fields, values out of range).
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(max_examples=OPERATION_EXAMPLES, deadline=None, derandomize=True, database=None,
                      suppress_health_check=list(HealthCheck))
            def fuzz(case) -> None:
                response = case.call_and_validate(headers={"Authorization": f"Bearer {key}"}, checks=checks)
                statuses[response.status_code] += 1

            try:
                fuzz()
            except Unsatisfiable:
                assert mode is GenerationMode.NEGATIVE, operation.label  # nothing to get wrong (no input)
    assert sum(statuses.values()) >= 500 and all(code < 500 for code in statuses)
