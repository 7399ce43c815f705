"""A deployment in miniature: API and a Celery worker process (no shared disk) on Postgres, Redis
and an S3-compatible endpoint (moto), driven through HTTP from upload to prediction."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import Processes, create_key_with_cli
from tests.e2e.flow import cancel_running_job, upload_train_predict


@pytest.fixture
def s3_env() -> Iterator[dict[str, str]]:
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="test",
                 aws_secret_access_key="test").create_bucket(Bucket="clipadapt")
    yield {
        "CLIPADAPT_STORAGE_URL": "s3://clipadapt/e2e",
        "CLIPADAPT_S3_ENDPOINT_URL": endpoint,
        "CLIPADAPT_S3_ACCESS_KEY_ID": "test",
        "CLIPADAPT_S3_SECRET_ACCESS_KEY": "test",
    }
    server.stop()


def test_celery_deployment_flow(
    processes: Processes, tmp_path: Path, example_zip: Path, postgres_url: str, redis_url: str, s3_env: dict
) -> None:
    from sqlalchemy import text

    from core.jobs.db import get_engine
    from tests.conftest import TABLES

    with get_engine(postgres_url).begin() as conn:
        conn.execute(text(f"TRUNCATE {', '.join(TABLES)} CASCADE"))
    queue = f"gpu-e2e-{uuid.uuid4().hex[:8]}"  # never picks up another run's tasks
    common = s3_env | {
        "CLIPADAPT_DATABASE_URL": postgres_url,
        "CLIPADAPT_BROKER_URL": redis_url,
        "CLIPADAPT_JOB_QUEUE": queue,
        "CLIPADAPT_DEVICE": "cpu",
        "CLIPADAPT_TORCH_THREADS": "1",
    }
    processes.start(
        "worker",
        [sys.executable, "-m", "celery", "-A", "worker.app", "worker", "-Q", queue, "--concurrency", "1",
         "--loglevel", "INFO", "--without-gossip", "--without-mingle", "--without-heartbeat"],
        common | {"CLIPADAPT_DATA_DIR": str(tmp_path / "worker-data")},
    )
    url = processes.api(common | {"CLIPADAPT_DATA_DIR": str(tmp_path / "api-data")})
    key = create_key_with_cli(common)

    with httpx.Client(base_url=url, timeout=60, headers={"Authorization": f"Bearer {key}"}) as client:
        assert httpx.get(f"{url}/jobs").status_code == 401  # a deployment requires keys
        ready = client.get("/readyz").json()
        assert ready["status"] == "ok" and queue in ready["checks"]["broker"], ready
        assert "S3Storage" in ready["checks"]["storage"]
        result = upload_train_predict(client, example_zip)
        cancel_running_job(client, result["dataset"]["id"])
        events = client.get(f"/jobs/{result['job']['id']}/events").json()["data"]
        assert [e["state"] for e in events if e["kind"] == "state"] == ["queued", "running", "succeeded"]
    # Nothing was written to the API's or the worker's disk as the source of truth: storage is S3.
    assert not (tmp_path / "api-data" / "storage").exists()
    assert not (tmp_path / "worker-data" / "storage").exists()
