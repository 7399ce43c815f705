from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from core.jobs.catalog import load_catalog
from core.jobs.datasets import create_dataset
from core.jobs.db import get_sessionmaker, transaction
from core.jobs.models import Job
from core.jobs.repository import JobRepository
from core.jobs.storage import get_storage
from core.settings import Settings

TINY_RECIPE = {"method": "layernorm", "epochs": 2, "batch_size": 8}


@pytest.fixture
def settings(make_settings: Callable[..., Settings], database_url: str) -> Settings:
    return make_settings(database_url=database_url)


@pytest.fixture
def dataset_id(settings: Settings, example_zip: Path) -> str:
    with get_sessionmaker(settings.resolved_database_url)() as session:
        dataset = create_dataset(session, get_storage(settings), example_zip, filename="digits.zip", owner="alice")
    return dataset.id


@pytest.fixture
def add_job(settings: Settings, dataset_id: str) -> Callable[..., str]:
    def add(recipe: dict[str, Any] | None = None, **fields: Any) -> str:
        entry = load_catalog()["clipadapt-tiny"]
        values = {
            "owner": "alice",
            "dataset_id": dataset_id,
            "base_model": entry.name,
            "base_model_spec": entry.spec(),
            "recipe": recipe or TINY_RECIPE,
        } | fields
        with transaction(settings.resolved_database_url) as session:
            return JobRepository(session).add(Job(**values)).id

    return add
