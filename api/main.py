"""The FastAPI app: ``uvicorn api.main:app`` (OpenAPI docs at /docs)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from starlette.types import Scope

from api.errors import install_error_handlers
from api.routes import dashboard, datasets, health, jobs, metrics, models, predict, sweeps
from api.uploads import FORM_OVERHEAD, MiB, BodyLimitMiddleware
from core.jobs.dispatch import EmbeddedRunner, dispatcher_from_settings
from core.jobs.predict import PredictionService
from core.jobs.recovery import RecoveryLoop
from core.logs import configure_logging
from core.settings import Settings, get_settings

log = logging.getLogger("api")

STATIC_DIR = Path(__file__).parent / "static"


def body_limits(settings: Settings):
    """The largest request body each route takes; JSON bodies get 1 MiB."""
    limits = {
        "/datasets": settings.max_upload_mb * MiB + FORM_OVERHEAD,
        "/predict": settings.max_predict_images * settings.max_image_mb * MiB + FORM_OVERHEAD,
    }

    def limit_for(scope: Scope) -> int:
        return limits.get(scope["path"].rstrip("/"), MiB)

    return limit_for


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        dispatcher = dispatcher_from_settings(settings)
        app.state.dispatcher = dispatcher
        if settings.auth == "disabled":
            log.warning(
                "authentication is DISABLED (CLIPADAPT_AUTH=disabled): serving only clients on %s; "
                "everything belongs to one owner", settings.bind_host,
            )
        else:
            log.info("authentication required: API keys from `clipadapt keys create --owner NAME`")
        if isinstance(dispatcher, EmbeddedRunner):
            dispatcher.recover()
        recovery = RecoveryLoop(settings, dispatcher.submit).start()
        try:
            yield
        finally:
            recovery.stop()
            dispatcher.close()

    configure_logging(settings, "api")
    app = FastAPI(
        title="clipadapt",
        summary="Adapt CLIP-style models to image classification: upload, train, predict.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.prediction = PredictionService(settings)
    install_error_handlers(app)
    app.add_middleware(BodyLimitMiddleware, limit_for=body_limits(settings))
    for module in (dashboard, datasets, models, jobs, sweeps, predict, health, metrics):
        app.include_router(module.router)
    # The dashboard (a single page of ES modules, no build step) at `/`. Mounted last, so every API
    # route and /docs match first; `html=True` serves index.html for `/`.
    app.mount("/", StaticFiles(directory=STATIC_DIR, html=True), name="dashboard")
    return app


app = create_app()
