"""The FastAPI app: ``uvicorn api.main:app`` (OpenAPI docs at /docs)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from api.errors import install_error_handlers
from api.routes import datasets, health, jobs, models, predict
from core.jobs.dispatch import EmbeddedRunner, dispatcher_from_settings
from core.jobs.predict import PredictionService
from core.settings import Settings, get_settings


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        dispatcher = dispatcher_from_settings(settings)
        app.state.dispatcher = dispatcher
        if isinstance(dispatcher, EmbeddedRunner):
            dispatcher.recover()
        try:
            yield
        finally:
            dispatcher.close()

    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = FastAPI(
        title="clipadapt",
        summary="Adapt CLIP-style models to image classification: upload, train, predict.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.prediction = PredictionService(settings)
    install_error_handlers(app)
    for module in (datasets, models, jobs, predict, health):
        app.include_router(module.router)
    return app


app = create_app()
