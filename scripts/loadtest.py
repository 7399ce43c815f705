"""Load run on loopback: many concurrent job submissions and zero-shot predictions against a real
uvicorn, then checks that nothing was lost or duplicated.

    python scripts/loadtest.py --jobs 200 --predictions 200 --concurrency 32

It starts the API (auth on, a fresh key) on 127.0.0.1 with its own data directory, a Celery broker
queue that nobody consumes (jobs are accepted and dispatched, not trained), and a small dataset.
Every request must succeed; afterwards every accepted job must be in the database exactly once, and
dispatched to the broker exactly once. Prints throughput and latency percentiles per request kind.
Exit status 0 when all of that holds.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import zipfile
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


@dataclass
class Sample:
    kind: str
    status: int
    seconds: float
    job_id: str | None = None
    error: str | None = None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def _start_api(env: dict[str, str], log: Path) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    cmd = [sys.executable, "-m", "uvicorn", "api.main:app", "--host", "127.0.0.1", "--port", str(port),
           "--log-level", "warning"]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=os.environ | env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the API exited:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"the API did not start:\n{log.read_text()[-3000:]}")


def _dispatched_job_ids(broker_url: str, queue: str) -> list[str]:
    """Job ids of the tasks waiting in the (unconsumed) Celery queue on Redis."""
    import redis

    client = redis.Redis.from_url(broker_url)
    try:
        messages = client.lrange(queue, 0, -1)
    finally:
        client.close()
    ids = []
    for raw in messages:
        message = json.loads(raw)
        args, _kwargs, _embed = json.loads(base64.b64decode(message["body"]))
        ids.append(args[0])
    return ids


def _drop_queue(broker_url: str, queue: str) -> None:
    import redis

    client = redis.Redis.from_url(broker_url)
    try:
        client.delete(queue)
    finally:
        client.close()


def run(args: argparse.Namespace) -> int:
    from sqlalchemy import select

    from core.jobs.db import transaction
    from core.jobs.keys import ApiKeyRepository
    from core.jobs.models import Job
    from core.settings import Settings

    work = Path(tempfile.mkdtemp(prefix="clipadapt-load-"))
    data = work / "data"
    settings = Settings(data_dir=data, database_url=args.database_url)
    db_url = settings.resolved_database_url
    if not args.database_url:
        env = os.environ | {"CLIPADAPT_DATABASE_URL": db_url}
        subprocess.run([sys.executable, "-m", "alembic", "upgrade", "head"], cwd=REPO, env=env, check=True,
                       capture_output=True)
    owner = f"load-{uuid.uuid4().hex[:8]}"
    with transaction(db_url) as session:
        key = ApiKeyRepository(session).create(owner)[1]
    queue = f"loadtest-{uuid.uuid4().hex[:8]}"  # nobody consumes it: jobs are dispatched, not trained
    env = {
        "CLIPADAPT_DATA_DIR": str(data),
        "CLIPADAPT_DATABASE_URL": db_url,
        "CLIPADAPT_BROKER_URL": args.broker_url,
        "CLIPADAPT_JOB_QUEUE": queue,
        "CLIPADAPT_AUTH": "required",
        "CLIPADAPT_DEVICE": "cpu",
        "CLIPADAPT_TORCH_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
    }
    dataset_zip = work / "digits.zip"
    subprocess.run([sys.executable, str(REPO / "scripts" / "make_example_dataset.py"), str(dataset_zip),
                    "--classes", "3", "--train", "4", "--val", "2", "--test", "2", "--size", "32"],
                   check=True, capture_output=True)

    proc, url = _start_api(env, work / "api.log")
    headers = {"Authorization": f"Bearer {key}"}
    try:
        with httpx.Client(base_url=url, headers=headers, timeout=120) as client:
            response = client.post("/datasets", files={"file": ("digits.zip", dataset_zip.read_bytes())})
            response.raise_for_status()
            dataset_id = response.json()["id"]
            with zipfile.ZipFile(dataset_zip) as zf:
                image = zf.read(next(n for n in zf.namelist() if n.startswith("test/") and n.endswith(".png")))
            predict_form = {"base_model": "clipadapt-tiny", "classnames": "zero,one,two"}
            # Warm-up (model load, class embeddings): not part of the measurement.
            client.post("/predict", data=predict_form, files=[("images", ("x.png", image))]).raise_for_status()

        local = threading.local()

        def session() -> httpx.Client:
            if not hasattr(local, "client"):
                local.client = httpx.Client(base_url=url, headers=headers, timeout=120)
            return local.client

        def create_job(i: int) -> Sample:
            body = {"dataset_id": dataset_id, "base_model": "clipadapt-tiny", "name": f"load-{i}",
                    "recipe": {"method": "layernorm", "epochs": 1}}
            started = time.perf_counter()
            try:
                response = session().post("/jobs", json=body)
            except httpx.HTTPError as e:
                return Sample("POST /jobs", 0, time.perf_counter() - started, error=repr(e))
            elapsed = time.perf_counter() - started
            ok = response.status_code == 201
            return Sample("POST /jobs", response.status_code, elapsed, response.json()["id"] if ok else None,
                          None if ok else response.text[:300])

        def predict(_: int) -> Sample:
            started = time.perf_counter()
            try:
                response = session().post("/predict", data=predict_form, files=[("images", ("x.png", image))])
            except httpx.HTTPError as e:
                return Sample("POST /predict", 0, time.perf_counter() - started, error=repr(e))
            ok = response.status_code == 200 and len(response.json()["predictions"]) == 1
            return Sample("POST /predict", response.status_code, time.perf_counter() - started,
                          error=None if ok else response.text[:300])

        # Interleaved, so job writes and predictions compete as they would in production.
        work_items = [(create_job, i) for i in range(args.jobs)] + [(predict, i) for i in range(args.predictions)]
        work_items.sort(key=lambda item: (item[1], item[0] is predict))
        started = time.perf_counter()
        with ThreadPoolExecutor(args.concurrency) as pool:
            samples = list(pool.map(lambda item: item[0](item[1]), work_items))
        wall = time.perf_counter() - started
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()

    failures: list[str] = []
    errors = [s for s in samples if s.error]
    failures += [f"{s.kind}: HTTP {s.status}: {s.error}" for s in errors[:10]]

    accepted = [s.job_id for s in samples if s.kind == "POST /jobs" and s.job_id]
    with transaction(db_url) as session_:
        stored = list(session_.scalars(select(Job.id).where(Job.owner == owner)))
    duplicated_answers = [j for j, n in Counter(accepted).items() if n > 1]
    if duplicated_answers:
        failures.append(f"the same job id answered twice: {duplicated_answers[:5]}")
    if sorted(stored) != sorted(set(accepted)):
        missing = set(accepted) - set(stored)
        extra = set(stored) - set(accepted)
        failures.append(f"jobs in the database != jobs accepted: {len(missing)} missing, {len(extra)} unexpected")
    dispatched = _dispatched_job_ids(args.broker_url, queue)
    _drop_queue(args.broker_url, queue)
    if Counter(dispatched) != Counter(accepted):
        failures.append(f"dispatched {len(dispatched)} tasks for {len(accepted)} jobs "
                        f"({len(set(dispatched))} distinct): not exactly once each")

    print(f"{len(samples)} requests in {wall:.1f}s with {args.concurrency} concurrent clients "
          f"({len(samples) / wall:.0f} req/s); {len(stored)} jobs stored, {len(dispatched)} dispatched")
    print(f"{'request':<15} {'count':>6} {'errors':>6} {'req/s':>7} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for kind in ("POST /jobs", "POST /predict"):
        rows = [s for s in samples if s.kind == kind]
        if not rows:
            continue
        ms = [s.seconds * 1000 for s in rows]
        print(f"{kind:<15} {len(rows):>6} {sum(1 for s in rows if s.error):>6} {len(rows) / wall:>7.1f} "
              f"{statistics.median(ms):>8.1f} {_percentile(ms, 95):>8.1f} {_percentile(ms, 99):>8.1f} {max(ms):>8.1f}")
    for failure in failures:
        print(f"FAIL: {failure}", file=sys.stderr)
    if not failures:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"API log and data kept in {work}", file=sys.stderr)
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=200, help="job creations")
    parser.add_argument("--predictions", type=int, default=200, help="zero-shot predictions")
    parser.add_argument("--concurrency", type=int, default=32, help="concurrent clients")
    parser.add_argument("--database-url", default="", help="SQLAlchemy URL (migrated); default: a fresh SQLite file")
    parser.add_argument("--broker-url", default="redis://127.0.0.1:6379/15", help="Redis broker")
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
