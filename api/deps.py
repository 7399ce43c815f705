"""Dependencies: settings, a database session per request, storage, dispatcher, predictor cache."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from core.jobs.catalog import CatalogEntry, load_catalog
from core.jobs.db import get_sessionmaker
from core.jobs.dispatch import Dispatcher
from core.jobs.predict import PredictionService
from core.jobs.storage import Storage, get_storage
from core.settings import Settings


def get_app_settings(request: Request) -> Settings:
    return request.app.state.settings


SettingsDep = Annotated[Settings, Depends(get_app_settings)]


def get_session(settings: SettingsDep) -> Iterator[Session]:
    with get_sessionmaker(settings.resolved_database_url)() as session:
        yield session


def get_app_storage(settings: SettingsDep) -> Storage:
    return get_storage(settings)


def get_dispatcher(request: Request) -> Dispatcher:
    return request.app.state.dispatcher


def get_prediction(request: Request) -> PredictionService:
    return request.app.state.prediction


def get_catalog(settings: SettingsDep) -> dict[str, CatalogEntry]:
    return load_catalog(settings.model_catalog)


SessionDep = Annotated[Session, Depends(get_session)]
StorageDep = Annotated[Storage, Depends(get_app_storage)]
DispatcherDep = Annotated[Dispatcher, Depends(get_dispatcher)]
PredictionDep = Annotated[PredictionService, Depends(get_prediction)]
CatalogDep = Annotated[dict[str, CatalogEntry], Depends(get_catalog)]
