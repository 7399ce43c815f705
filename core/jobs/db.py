"""Engine and session factory, one per database URL."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import TypeVar

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

log = logging.getLogger(__name__)

T = TypeVar("T")

_engines: list[Engine] = []


def _forget_inherited_connections() -> None:
    """In a forked child (Celery's prefork pool), drop the parent's pooled connections without
    closing them: sharing one socket between two processes corrupts both sessions."""
    for engine in _engines:
        engine.dispose(close=False)


os.register_at_fork(after_in_child=_forget_inherited_connections)


@lru_cache
def get_engine(url: str) -> Engine:
    engine = _create_engine(url)
    _engines.append(engine)
    return engine


def _create_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record) -> None:  # pragma: no cover - trivial
            cursor = dbapi_connection.cursor()
            # WAL lets the API read while a job runner writes progress; FKs are off by default.
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        return engine
    return create_engine(url, pool_pre_ping=True)


@lru_cache
def get_sessionmaker(url: str) -> sessionmaker[Session]:
    return sessionmaker(get_engine(url), expire_on_commit=False)


@contextmanager
def transaction(url: str) -> Iterator[Session]:
    """A session whose work is committed on success and rolled back on any exception."""
    with get_sessionmaker(url).begin() as session:
        yield session


def wait_for_database(url: str, *, timeout: float | None = None, first_delay: float = 0.5, max_delay: float = 15.0) -> None:
    """Block until the database answers, retrying with exponential backoff (a worker may start
    before the database does). Raises the last OperationalError after ``timeout`` seconds."""
    deadline = None if timeout is None else time.monotonic() + timeout
    delay = first_delay
    while True:
        try:
            with get_engine(url).connect() as conn:
                conn.execute(text("SELECT 1"))
            return
        except OperationalError as e:
            if deadline is not None and time.monotonic() + delay > deadline:
                raise
            log.warning("database not reachable (%s); retrying in %.1fs", str(e).splitlines()[0], delay)
            time.sleep(delay)
            delay = min(delay * 2, max_delay)


def retry_transaction(url: str, work: Callable[[Session], T], *, within: float, what: str = "write") -> T:
    """``work(session)`` in a transaction, retried with backoff while the database is unreachable
    (a restart, a failover) for up to ``within`` seconds; then the last OperationalError is raised.
    A failed attempt is rolled back whole, so a retry never writes anything twice."""
    deadline = time.monotonic() + within
    delay = 0.5
    while True:
        try:
            with transaction(url) as session:
                return work(session)
        except OperationalError as e:
            if time.monotonic() + delay > deadline:
                raise
            log.warning("database unreachable during %s (%s); retrying in %.1fs", what, str(e).splitlines()[0], delay)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
