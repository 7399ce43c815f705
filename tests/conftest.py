"""Shared fixtures: databases (SQLite and a fresh Postgres database per run), settings, an example
dataset archive. Postgres and Redis are never skipped silently in CI (CI=true fails instead)."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
POSTGRES_ADMIN_URL = os.environ.get(
    "CLIPADAPT_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("CLIPADAPT_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
TABLES = ("job_metric", "job_event", "job", "sweep", "dataset", "api_key")


def require_service(name: str, error: Exception | None) -> None:
    """Skip when a local service is missing on a developer machine; fail in CI."""
    if error is None:
        return
    message = f"{name} is not reachable ({error}); .ci/run starts it (scripts/ensure-services.sh)"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def migrate(url: str, revision: str = "head", *, down: bool = False) -> None:
    from alembic import command
    from alembic.config import Config

    config = Config(str(REPO / "alembic.ini"))
    config.set_main_option("sqlalchemy.url", url)
    config.attributes["configure_logging"] = False
    (command.downgrade if down else command.upgrade)(config, revision)


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("CLIPADAPT_") and not name.startswith("CLIPADAPT_TEST_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh, migrated database on the local server; dropped at the end of the run."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    from core.jobs.db import get_engine

    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"clipadapt_test_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as e:  # noqa: BLE001
        admin.dispose()
        require_service("Postgres", e)
    url = make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    try:
        migrate(url)
        yield url
    finally:
        get_engine(url).dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty, migrated database of each kind."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'clipadapt.db'}"
        migrate(url)
        return url
    url = request.getfixturevalue("postgres_url")
    from sqlalchemy import text

    from core.jobs.db import get_engine

    with get_engine(url).begin() as conn:
        conn.execute(text(f"TRUNCATE {', '.join(TABLES)} CASCADE"))
    return url


@pytest.fixture
def make_settings(tmp_path: Path) -> Callable[..., object]:
    """Settings rooted in this test's temp dir; keyword arguments override fields."""
    from core.settings import Settings

    def make(**overrides: object) -> Settings:
        return Settings(data_dir=tmp_path / "data", device="cpu", torch_threads=1, **overrides)

    return make


def write_example_dataset(path: Path, *options: str) -> Path:
    """An archive written by the quick-start script (scripts/make_example_dataset.py) with `options`."""
    subprocess.run([sys.executable, str(REPO / "scripts" / "make_example_dataset.py"), str(path), *options],
                   check=True, capture_output=True)
    return path


@pytest.fixture(scope="session")
def example_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 classes of digits, 4 train / 2 val / 2 test images each."""
    return write_example_dataset(tmp_path_factory.mktemp("example") / "digits.zip",
                                 "--classes", "3", "--train", "4", "--val", "2", "--test", "2", "--size", "32")
