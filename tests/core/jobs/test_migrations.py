from __future__ import annotations

import pytest
from sqlalchemy import create_engine, inspect

from core.jobs.models import Base
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
    from core.jobs import sweeps

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
    migrate(empty_url, "base", down=True)
    assert _tables(empty_url) == set()


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
