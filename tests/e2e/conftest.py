"""Real processes: the API under uvicorn, a Celery worker, moto's S3 server."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import REDIS_URL, REPO, require_service


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def create_key_with_cli(env: dict[str, str], owner: str = "e2e") -> str:
    """`clipadapt keys create --owner OWNER --json`, as an operator runs it; returns the key."""
    import json

    out = subprocess.run(
        [str(Path(sys.executable).parent / "clipadapt"), "keys", "create", "--owner", owner, "--json"],
        cwd=REPO, env=os.environ | env, check=True, capture_output=True, text=True,
    )
    return json.loads(out.stdout)["key"]


def wait_until(check: Callable[[], bool], timeout: float, what: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    tail = log.read_text()[-4000:] if log and log.exists() else ""
    raise AssertionError(f"timed out waiting for {what}\n{tail}")


class Processes:
    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.running: list[tuple[subprocess.Popen, Path]] = []

    def start(
        self, name: str, cmd: list[str], env: dict[str, str], *, new_session: bool = False
    ) -> tuple[subprocess.Popen, Path]:
        """Start ``cmd``; ``new_session`` makes it a process group a test can kill whole."""
        log = self.logs / f"{name}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(cmd, cwd=REPO, env=os.environ | env, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=new_session)
        self.running.append((proc, log))
        return proc, log

    def api(self, env: dict[str, str]) -> str:
        port = free_port()
        cmd = [sys.executable, "-m", "uvicorn", "api.main:app", "--host", "127.0.0.1", "--port", str(port)]
        proc, log = self.start("api", cmd, env)
        url = f"http://127.0.0.1:{port}"

        def up() -> bool:
            assert proc.poll() is None, log.read_text()
            try:
                return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(up, 60, "the API to start", log)
        return url

    def stop(self) -> None:
        for proc, log in reversed(self.running):
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    procs = Processes(tmp_path)
    try:
        yield procs
    finally:
        procs.stop()


@pytest.fixture
def redis_url() -> str:
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
        error = None
    except redis.RedisError as e:
        error = e
    finally:
        client.close()
    require_service("Redis", error)
    return REDIS_URL
