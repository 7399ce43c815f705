from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect
from sqlalchemy.engine import make_url

from core.jobs import sweeps
from core.jobs.models import Base
from core.jobs.sweeps import OPTUNA_SCHEMA
from tests.conftest import migrate


@pytest.fixture(params=["sqlite", "postgres"])
def empty_url(request: pytest.FixtureRequest, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'm.db'}"
    # The session database is at head; take it down to empty first (and back up afterwards).
    url = request.getfixturevalue("postgres_url")
    migrate(url, "base", down=True)
    request.addfinalizer(lambda: _back_to_head(url))
    return url


def _back_to_head(url: str) -> None:
    migrate(url)
    # Downgrading dropped Optuna's schema under this process's cached RDBStorage, which created its
    # tables when it was built: later tests sharing the database need a new one.
    sweeps._optuna_storage.cache_clear()


def _tables(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        return set(inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def test_upgrade_from_empty_to_head_and_back_down(empty_url: str) -> None:
    assert _tables(empty_url) == set()
    migrate(empty_url)
    assert _tables(empty_url) == set(Base.metadata.tables)
    sweeps._optuna_storage.cache_clear()
    sweeps.optuna_storage(empty_url)  # Optuna's tables, as the first sweep creates them
    sweeps._optuna_storage.cache_clear()
    assert _optuna_tables(empty_url)
    migrate(empty_url, "base", down=True)
    assert _tables(empty_url) == set()
    assert not _optuna_tables(empty_url)


def _optuna_tables(url: str) -> set[str]:
    """Optuna's tables: in their Postgres schema, or in the SQLite database's sibling file."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = Path(parsed.database)
        sibling = database.with_name(f"{database.stem}-optuna.db")
        return _tables(str(parsed.set(database=str(sibling)))) if sibling.exists() else set()
    engine = create_engine(url)
    try:
        return set(inspect(engine).get_table_names(schema=OPTUNA_SCHEMA))
    finally:
        engine.dispose()


def test_head_matches_the_orm_models(empty_url: str) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    migrate(empty_url)
    engine = create_engine(empty_url)
    try:
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    finally:
        engine.dispose()
    assert diff == []
