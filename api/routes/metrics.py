from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.concurrency import run_in_threadpool

from api.deps import SettingsDep
from core.jobs.telemetry import render_metrics

router = APIRouter(tags=["health"])


@router.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
async def metrics(settings: SettingsDep) -> Response:
    """Prometheus metrics: jobs by state, queue depth, job durations, training throughput, /predict
    latency, uploaded bytes. Like the health checks it needs no API key: publish it only to Prometheus."""
    body = await run_in_threadpool(render_metrics, settings.resolved_database_url)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
