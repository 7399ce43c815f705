from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy import text

from api.deps import DispatcherDep, SessionDep, StorageDep
from api.errors import ERROR_RESPONSES, APIError
from api.schemas import Health, Readiness

router = APIRouter(tags=["health"], responses=ERROR_RESPONSES)


@router.get("/healthz", response_model=Health)
def healthz() -> Health:
    """Liveness: the process answers."""
    return Health()


@router.get("/readyz", response_model=Readiness)
def readyz(session: SessionDep, storage: StorageDep, dispatcher: DispatcherDep) -> Readiness:
    """Readiness: the database, the broker (or embedded runner) and storage are reachable."""
    checks: dict[str, str] = {}
    failed = False
    probes = {
        "database": lambda: (session.execute(text("SELECT 1")), session.get_bind().dialect.name)[1],
        "broker": dispatcher.check,
        "storage": lambda: (storage.check(), repr(storage))[1],
    }
    for name, probe in probes.items():
        try:
            checks[name] = f"ok: {probe()}"
        except Exception as e:  # noqa: BLE001 - report every failing dependency, not the first
            checks[name] = f"error: {type(e).__name__}: {e}"
            failed = True
    if failed:
        raise APIError(503, "not_ready", "a dependency is unreachable", checks)
    return Readiness(checks=checks)
