from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from fastapi import FastAPI
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


def create_key(settings: Settings, owner: str) -> str:
    from core.jobs.db import transaction
    from core.jobs.keys import ApiKeyRepository

    with transaction(settings.resolved_database_url) as session:
        return ApiKeyRepository(session).create(owner)[1]


@contextmanager
def authed_client(settings: Settings, owner: str = "alice", app: FastAPI | None = None) -> Iterator[TestClient]:
    """A client of a new app (or ``app``) with a fresh API key of ``owner``; jobs are recorded, not run."""
    headers = {"Authorization": f"Bearer {create_key(settings, owner)}"}
    with TestClient(app or create_app(settings), headers=headers) as client:
        client.app.state.dispatcher = RecordingDispatcher()
        yield client


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    """A client authenticated as owner "alice" (auth is required by default)."""
    with authed_client(settings) as client:
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
