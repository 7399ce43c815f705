"""Dependencies: settings, a database session per request, the caller's owner (API key), storage,
dispatcher, predictor cache."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from api.errors import APIError

from core.jobs.catalog import CatalogEntry, load_catalog
from core.jobs.db import get_sessionmaker
from core.jobs.dispatch import Dispatcher
from core.jobs.keys import ApiKeyRepository
from core.jobs.models import LOCAL_OWNER
from core.jobs.predict import PredictionService
from core.jobs.storage import Storage, get_storage
from core.settings import Settings, is_loopback


def get_app_settings(request: Request) -> Settings:
    return request.app.state.settings


SettingsDep = Annotated[Settings, Depends(get_app_settings)]


def get_session(settings: SettingsDep) -> Iterator[Session]:
    with get_sessionmaker(settings.resolved_database_url)() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]

bearer = HTTPBearer(auto_error=False, description="An API key from `clipadapt keys create --owner NAME`.")


def get_owner(
    request: Request,
    settings: SettingsDep,
    session: SessionDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> str:
    """The owner of the request's API key: every dataset, job and model it touches is theirs."""
    if settings.auth == "disabled":
        # Settings refuse AUTH=disabled unless BIND_HOST is loopback; this also covers a server
        # started on another address by hand.
        client = request.client.host if request.client else ""
        if not is_loopback(client):
            raise APIError(403, "forbidden", "authentication is disabled, so only local clients are served")
        return LOCAL_OWNER
    challenge = {"WWW-Authenticate": "Bearer"}
    if credentials is None:
        raise APIError(401, "unauthorized", "missing API key: send `Authorization: Bearer <key>`", headers=challenge)
    owner = ApiKeyRepository(session).owner_of(credentials.credentials)
    if owner is None:
        raise APIError(401, "unauthorized", "invalid or revoked API key", headers=challenge)
    return owner


OwnerDep = Annotated[str, Depends(get_owner)]


def get_app_storage(settings: SettingsDep) -> Storage:
    return get_storage(settings)


def get_dispatcher(request: Request) -> Dispatcher:
    return request.app.state.dispatcher


def get_prediction(request: Request) -> PredictionService:
    return request.app.state.prediction


def get_catalog(settings: SettingsDep) -> dict[str, CatalogEntry]:
    return load_catalog(settings.model_catalog)


StorageDep = Annotated[Storage, Depends(get_app_storage)]
DispatcherDep = Annotated[Dispatcher, Depends(get_dispatcher)]
PredictionDep = Annotated[PredictionService, Depends(get_prediction)]
CatalogDep = Annotated[dict[str, CatalogEntry], Depends(get_catalog)]
