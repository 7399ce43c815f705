"""The docker-compose deployment end to end, as README.md's "Deployment with docker compose" says.

1. docker: install Debian's docker.io and docker-compose if missing, start dockerd if it is not running.
2. stand-ins: build an image from Debian packages for each third-party image missing locally
   (tests/compose/standins; no container registry is needed).
3. README: the deployment section's first bash block, run as written in a copy of the working tree
   (Compose v1's `docker-compose` answers for `docker compose` where the v2 plugin is missing):
   copy .env, build the image, start the stack, create an API key.
4. Through HTTP only: upload a dataset, train a job, poll it, predict (fine-tuned and zero-shot),
   download the artifact; then faults while jobs train: `docker kill` of the worker and a restart of
   it (the job resumes from its checkpoint), restarts of Postgres, Redis (a job submitted while it is
   down waits in the outbox) and the API; /metrics, JSON logs and the Flower profile.
5. Every job succeeded exactly once: each epoch's metrics once, the expected attempts, one success.
6. README's stop block (`docker compose down -v`), also when a phase failed (unless --keep).

    .venv/bin/python -m tests.compose.run          # what .ci/run runs; prints a timing per phase
    .venv/bin/python -m tests.compose.run --keep   # leave the stack running afterwards

Settings the test changes through the environment (Compose prefers it to .env): a short job lease
and recovery period, a checkpoint after every epoch, its own project name and free ports.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.compose.standins import build as standins
from tests.e2e.flow import upload_train_predict

REPO = Path(__file__).resolve().parents[2]
PROJECT = "clipadapt-e2e"
LEASE_S, RECOVERY_S = 15, 3
# How long a service may take to come back or a job to make progress: CI hosts can be very busy.
SLOW_S = 600
# Compose v1 stands in for `docker compose` where the v2 plugin is missing; README commands run unchanged.
COMPOSE_SHIM = """
if ! docker compose version >/dev/null 2>&1; then
  docker() { if [ "$1" = compose ]; then shift; command docker-compose "$@"; else command docker "$@"; fi; }
fi
"""


class Phases:
    def __init__(self) -> None:
        self.timings: list[tuple[str, float, str]] = []

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        print(f"\n=== {name}", flush=True)
        started = time.monotonic()
        outcome = "failed"
        try:
            yield
            outcome = "ok"
        finally:
            seconds = time.monotonic() - started
            self.timings.append((name, seconds, outcome))
            print(f"=== {name}: {outcome} in {seconds:.1f}s", flush=True)

    def report(self) -> None:
        width = max(len(n) for n, _, _ in self.timings)
        print("\ncompose end-to-end phases:")
        for name, seconds, outcome in self.timings:
            print(f"  {name:<{width}}  {seconds:7.1f}s  {outcome}")
        print(f"  {'total':<{width}}  {sum(s for _, s, _ in self.timings):7.1f}s")


def sh(cmd: list[str] | str, *, cwd: Path | None = None, env: dict[str, str] | None = None, check: bool = True,
       capture: bool = False, timeout: float = 900) -> subprocess.CompletedProcess:
    shell = isinstance(cmd, str)
    return subprocess.run(cmd, shell=shell, cwd=cwd, env=env, check=check, text=True, timeout=timeout,
                          executable="/bin/bash" if shell else None,
                          stdout=subprocess.PIPE if capture else None, stderr=subprocess.PIPE if capture else None)


def ensure_docker() -> None:
    missing = [pkg for pkg, tool in (("docker.io", "dockerd"), ("docker-compose", "docker-compose"))
               if shutil.which(tool) is None]
    if shutil.which("docker-compose") is None and sh("docker compose version", check=False, capture=True).returncode == 0:
        missing = [p for p in missing if p != "docker-compose"]
    if missing:
        print(f"installing {' '.join(missing)}", flush=True)
        apt_env = os.environ | {"DEBIAN_FRONTEND": "noninteractive"}
        sh(["apt-get", "update", "-qq"], env=apt_env)
        sh(["apt-get", "install", "-y", "-qq", *missing], env=apt_env)
    if sh(["docker", "info"], check=False, capture=True).returncode != 0:
        print("starting dockerd (log: /var/log/clipadapt-dockerd.log)", flush=True)
        with open("/var/log/clipadapt-dockerd.log", "ab") as log:
            subprocess.Popen(["dockerd"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        wait(lambda: sh(["docker", "info"], check=False, capture=True).returncode == 0, 90, "dockerd to start")
    print(sh(["docker", "version", "--format", "docker {{.Server.Version}}"], capture=True).stdout.strip())
    print(sh(COMPOSE_SHIM + "docker compose version", capture=True).stdout.strip().splitlines()[0])


def wait(check: Callable[[], bool], timeout: float, what: str, every: float = 1.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(every)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def copy_tree(dest: Path) -> None:
    """The working tree as git sees it (tracked and new files, nothing ignored): a clean clone's files."""
    listed = sh(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO, capture=True).stdout
    for name in filter(None, listed.split("\0")):
        source = REPO / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)


def readme_blocks() -> tuple[str, str]:
    """The deployment section's start block (the first bash block) and its stop block (`down -v`)."""
    docs = (REPO / "README.md").read_text()
    start = docs.index("### Deployment with docker compose")
    section = docs[start:docs.index("\n### ", start + 1)]
    blocks = re.findall(r"```bash\n(.*?)```", section, re.S)
    (stop,) = [b for b in blocks if "down -v" in b]
    return blocks[0], stop


def run_block(block: str, workdir: Path, env: dict[str, str], phases: Phases, logs: Path, epilogue: str = "") -> None:
    """Run a README block as written, in one shell; each command line is timed as its own phase."""
    marks = logs / "marks"
    lines = [line for line in block.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    script = ["set -euo pipefail", COMPOSE_SHIM]
    for line in lines:
        script.append(f"printf '%s\\t%s\\n' \"$(date +%s.%N)\" {shlex.quote(line.split('  #')[0].strip())} >> {marks}")
        script.append(line)
    script.append(f"printf '%s\\tend\\n' \"$(date +%s.%N)\" >> {marks}")
    script.append(epilogue)
    marks.write_text("")
    print("\n".join(f"$ {line}" for line in lines), flush=True)
    log = logs / "readme.log"
    with log.open("a") as out:
        result = subprocess.run(["bash", "-c", "\n".join(script)], cwd=workdir, env=env, stdout=out,
                                stderr=subprocess.STDOUT, timeout=1800)
    stamps = [line.split("\t", 1) for line in marks.read_text().splitlines()]
    for (t0, label), (t1, _) in zip(stamps, stamps[1:]):
        phases.timings.append((f"readme: {label}", float(t1) - float(t0), "ok"))
        print(f"=== readme: {label}: {float(t1) - float(t0):.1f}s", flush=True)
    if result.returncode != 0:
        if stamps:
            phases.timings.append((f"readme: {stamps[-1][1]}", 0.0, "failed"))
        raise AssertionError(f"README block failed (exit {result.returncode}):\n{log.read_text()[-6000:]}")


class Stack:
    """The running stack: compose commands in its working directory, and its HTTP API."""

    def __init__(self, workdir: Path, env: dict[str, str]) -> None:
        self.workdir, self.env = workdir, env
        self.url = f"http://127.0.0.1:{env['API_PORT']}"

    def compose(self, *args: str, capture: bool = False, check: bool = True) -> subprocess.CompletedProcess:
        return sh(COMPOSE_SHIM + "docker compose " + " ".join(shlex.quote(a) for a in args), cwd=self.workdir,
                  env=self.env, capture=capture, check=check)

    def container(self, service: str) -> str:
        return self.compose("ps", "-q", service, capture=True).stdout.strip()

    def ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/readyz", timeout=5).status_code == 200
        except httpx.TransportError:
            return False


def job_state(client: httpx.Client, job_id: str) -> tuple[dict, list[int], list[str]]:
    job = client.get(f"/jobs/{job_id}").json()
    epochs = [m["epoch"] for m in client.get(f"/jobs/{job_id}/metrics").json()["data"]]
    events = [e["message"] for e in client.get(f"/jobs/{job_id}/events").json()["data"]]
    return job, epochs, events


def epochs_done(client: httpx.Client, job_id: str) -> int:
    try:
        return client.get(f"/jobs/{job_id}/metrics").json()["count"]
    except (httpx.TransportError, ValueError, KeyError):
        return -1  # the API is restarting


def submit(client: httpx.Client, dataset_id: str, epochs: int, name: str) -> dict:
    response = client.post("/jobs", json={"dataset_id": dataset_id, "base_model": "clipadapt-tiny", "name": name,
                                          "recipe": {"method": "layernorm", "layernorm": "none", "epochs": epochs,
                                                     "batch_size": 8, "seed": 7}})
    assert response.status_code == 201, response.text
    return response.json()


def finish(client: httpx.Client, job_id: str) -> dict:
    """Wait for the job to end while it makes progress: fail only when no epoch ends for SLOW_S
    (a busy host slows training down, a stuck job stops it)."""
    last, since = -1, time.monotonic()
    while True:
        job = client.get(f"/jobs/{job_id}").json()
        if job["state"] not in ("queued", "running"):
            return job
        done = epochs_done(client, job_id)
        if done != last:
            last, since = done, time.monotonic()
        assert time.monotonic() - since < SLOW_S, f"no epoch ended in {SLOW_S}s: {job}"
        time.sleep(1)


def assert_mid_job(client: httpx.Client, job_id: str, epochs: int, fault: str) -> int:
    job, done, _ = job_state(client, job_id)
    assert job["state"] == "running" and len(done) < epochs, f"job ended before '{fault}': make it longer ({job})"
    return len(done)


def run(keep: bool) -> None:
    phases = Phases()
    expected: dict[str, tuple[int, int]] = {}  # job id -> (epochs, attempts)
    with tempfile.TemporaryDirectory(prefix="clipadapt-compose-") as tmp:
        workdir, logs = Path(tmp) / "clipadapt", Path(tmp) / "logs"
        workdir.mkdir()
        logs.mkdir()
        env = os.environ | {
            "COMPOSE_PROJECT_NAME": PROJECT,
            "API_PORT": str(free_port()), "MINIO_CONSOLE_PORT": str(free_port()), "FLOWER_PORT": str(free_port()),
            "CLIPADAPT_JOB_LEASE_S": str(LEASE_S), "CLIPADAPT_RECOVERY_EVERY_S": str(RECOVERY_S),
            "CLIPADAPT_CHECKPOINT_EVERY_S": "0",
            # One torch thread per process: the API and the worker share this machine's cores, and
            # oversubscribed torch threads slow training down by orders of magnitude.
            "CLIPADAPT_TORCH_THREADS": "1",
        }
        stack = Stack(workdir, env)
        start_block, stop_block = readme_blocks()
        try:
            with phases("docker"):
                ensure_docker()
            with phases("stand-ins"):
                for image, what in standins.ensure().items():
                    print(f"{image}: {what}")
            with phases("working tree copy"):
                copy_tree(workdir)
                sh(COMPOSE_SHIM + f"docker compose -p {PROJECT} down -v --remove-orphans", cwd=workdir, env=env,
                   capture=True, check=False)  # a previous run's leftovers
            key_file = logs / "key"
            run_block(start_block, workdir, env, phases, logs, epilogue=f'printf "%s" "$KEY" > {key_file}')
            with phases("api ready"):
                wait(stack.ready, SLOW_S, "GET /readyz")
            key = key_file.read_text().strip()
            assert key, "the README block did not create a key"
            example = logs / "digits.zip"
            sh([sys.executable, str(REPO / "scripts" / "make_example_dataset.py"), str(example)], capture=True)
            # Generous: the first upload and prediction import torch in the API, slowly on a busy host.
            client = httpx.Client(base_url=stack.url, timeout=600, headers={"Authorization": f"Bearer {key}"})
            exercise(client, stack, example, phases, expected)
            with phases("every job exactly once"):
                check_exactly_once(client, expected)
        except BaseException:
            print(f"\n--- compose logs (last lines) ---\n{stack.compose('logs', '--tail', '60', capture=True, check=False).stdout}")
            raise
        finally:
            if keep:
                print(f"stack left running: {workdir} (project {PROJECT}), API {stack.url}")
            else:
                try:
                    try:
                        run_block(stop_block, workdir, env, phases, logs)
                    except AssertionError:  # a container that took too long to stop: once more
                        run_block(stop_block, workdir, env, phases, logs)
                finally:
                    phases.report()
    if keep:
        phases.report()


def exercise(client: httpx.Client, stack: Stack, example: Path, phases: Phases, expected: dict) -> None:
    with phases("flow: upload, train, predict, download"):
        assert httpx.get(f"{stack.url}/jobs").status_code == 401  # keys are required
        # tests/e2e/flow.py: the quick start's steps (a generous timeout: CI machines may be busy)
        result = upload_train_predict(client, example, timeout=900)
        dataset, job = result["dataset"], result["job"]
        expected[job["id"]] = (3, 1)
        with zipfile.ZipFile(example) as zf:
            image = zf.read(next(n for n in zf.namelist() if n.startswith("test/")))
        zero_shot = client.post("/predict", data={"base_model": "clipadapt-tiny", "classnames": "zero,one,two"},
                                files=[("images", ("x.png", image, "image/png"))])
        assert zero_shot.status_code == 200 and zero_shot.json()["model"]["kind"] == "zero-shot", zero_shot.text
        artifact = client.get(f"/jobs/{job['id']}/artifact", params={"format": "zip"})
        assert artifact.status_code == 200 and f"{job['id']}/manifest.json" in zipfile.ZipFile(io.BytesIO(artifact.content)).namelist()
        seconds = [m["seconds"] for m in client.get(f"/jobs/{job['id']}/metrics").json()["data"]]
        # At least 0.06 s: the 60-s job below then asks for at most the recipe's limit of 1,000 epochs
        # (each epoch's bookkeeping, not counted in `seconds`, keeps it long enough on a fast host).
        epoch_s = max(0.06, sum(seconds) / len(seconds))
        print(f"tiny model epoch in the worker container: {epoch_s:.2f}s")

    with phases("fault: docker kill worker mid-job"):
        # Long enough that the kill (after 3 epochs) and the lease's expiry happen mid-job.
        epochs = max(12, math.ceil(40 / epoch_s))
        killed = submit(client, dataset["id"], epochs, "killed-worker")["id"]
        expected[killed] = (epochs, 2)
        wait(lambda: epochs_done(client, killed) >= 3, SLOW_S, "3 epochs before the kill")
        done = assert_mid_job(client, killed, epochs, "docker kill")
        sh(["docker", "kill", stack.container("worker")], capture=True)
        print(f"worker killed after {done} of {epochs} epochs")
        time.sleep(2)
        stack.compose("start", "worker", capture=True)
        job = finish(client, killed)
        _, _, events = job_state(client, killed)
        resumed = [m for m in events if m.startswith("resuming stage 0 after epoch")]
        assert job["state"] == "succeeded", job
        assert len(resumed) == 1 and int(resumed[0].rsplit(" ", 1)[1]) >= 2, events  # from its checkpoint
        assert any("stopped renewing the lease" in m for m in events), events

    with phases("fault: restart postgres, redis (outbox), api mid-job"):
        # Long enough for three restarts, each followed by 2 epochs, before it ends.
        epochs = max(16, math.ceil(60 / epoch_s))
        long_job = submit(client, dataset["id"], epochs, "restarts")["id"]
        expected[long_job] = (epochs, 1)
        wait(lambda: epochs_done(client, long_job) >= 2, SLOW_S, "2 epochs before the restarts")

        done = assert_mid_job(client, long_job, epochs, "restart postgres")
        stack.compose("restart", "postgres", capture=True)
        wait(lambda: epochs_done(client, long_job) >= done + 2, SLOW_S, "training to go on after Postgres restarted")

        done = assert_mid_job(client, long_job, epochs, "stop redis")
        stack.compose("stop", "redis", capture=True)
        deferred = submit(client, dataset["id"], 3, "outbox")
        assert deferred["state"] == "queued" and deferred["dispatch_pending"], deferred
        expected[deferred["id"]] = (3, 1)
        stack.compose("start", "redis", capture=True)
        wait(lambda: epochs_done(client, long_job) >= done + 2, SLOW_S, "training to go on after Redis restarted")

        done = assert_mid_job(client, long_job, epochs, "restart api")
        stack.compose("restart", "api", capture=True)
        wait(stack.ready, SLOW_S, "the API after its restart")
        assert dataset["id"] in [d["id"] for d in client.get("/datasets").json()["data"]]
        for job_id in (long_job, deferred["id"]):
            job = finish(client, job_id)
            assert job["state"] == "succeeded", job
        _, _, events = job_state(client, deferred["id"])
        assert "dispatched by the recovery loop" in events, events

    with phases("operations: metrics, JSON logs, flower"):
        # The API restarted above, so its own counters start again: one prediction to count.
        with zipfile.ZipFile(example) as zf:
            image = next(n for n in zf.namelist() if n.endswith(".png"))
            predicted = client.post("/predict", data={"base_model": "clipadapt-tiny", "classnames": "a,b"},
                                    files={"images": (Path(image).name, zf.read(image), "image/png")})
        assert predicted.status_code == 200, predicted.text
        metrics = client.get("/metrics").text
        assert f'clipadapt_jobs{{state="succeeded"}} {float(len(expected))}' in metrics, metrics[:3000]
        assert "clipadapt_queue_depth 0.0" in metrics and "clipadapt_predict_seconds_count" in metrics
        assert re.search(r"^clipadapt_training_images_total [1-9]", metrics, re.M), metrics[:3000]
        worker_log = stack.compose("logs", "--no-color", "worker", capture=True).stdout
        records = [json.loads(line.split("|", 1)[1]) for line in worker_log.splitlines()
                   if "|" in line and line.split("|", 1)[1].strip().startswith("{")]
        assert any(r.get("job_id") == killed and r.get("process") == "worker" for r in records), worker_log[-3000:]
        stack.compose("--profile", "flower", "up", "-d", "flower", capture=True)
        flower = f"http://127.0.0.1:{stack.env['FLOWER_PORT']}/healthcheck"
        wait(lambda: _get(flower) == "OK", SLOW_S, "Flower")


def _get(url: str) -> str | None:
    try:
        return httpx.get(url, timeout=5).text
    except httpx.TransportError:
        return None


def check_exactly_once(client: httpx.Client, expected: dict[str, tuple[int, int]]) -> None:
    lost = twice = 0
    for job_id, (epochs, attempts) in expected.items():
        job, done, events = job_state(client, job_id)
        succeeded = [m for m in events if m == "job succeeded"]
        ok = job["state"] == "succeeded" and job["artifact_available"]
        lost += not ok
        twice += done != list(range(1, epochs + 1)) or len(succeeded) != 1 or job["attempts"] != attempts
        print(f"{job['name']:>14}: {job['state']}, attempts {job['attempts']} (expected {attempts}), "
              f"epochs {len(done)}/{epochs} each once: {done == list(range(1, epochs + 1))}")
    print(f"jobs: {len(expected)} submitted, {lost} lost, {twice} trained twice or out of order")
    assert lost == 0 and twice == 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", action="store_true", help="leave the stack running afterwards")
    run(parser.parse_args().keep)
