from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from core.settings import Settings


class RecordingDispatcher:
    """Keeps submitted job ids so a test decides when (and whether) run_job runs."""

    def __init__(self) -> None:
        self.submitted: list[str] = []

    def submit(self, job_id: str) -> None:
        self.submitted.append(job_id)

    def check(self) -> str:
        return "recording"

    def close(self) -> None:
        pass


@pytest.fixture
def settings(make_settings: Callable[..., Settings], database_url: str) -> Settings:
    return make_settings(database_url=database_url)


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as client:
        client.app.state.dispatcher = RecordingDispatcher()
        yield client


@pytest.fixture
def dataset(client: TestClient, example_zip: Path) -> dict:
    with example_zip.open("rb") as f:
        response = client.post("/datasets", files={"file": ("digits.zip", f, "application/zip")})
    assert response.status_code == 201, response.text
    return response.json()


def assert_error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "detail"}
    assert body["error"]["code"] == code and body["error"]["message"]
    return body["error"]
