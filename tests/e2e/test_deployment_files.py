"""docker-compose.yml, .env.example and README.md agree with the Settings class."""

from __future__ import annotations

import re

import pytest
import yaml

from core.settings import Settings
from tests.conftest import REPO

SETTING_VARS = {f"CLIPADAPT_{name.upper()}" for name in Settings.model_fields}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())  # resolves anchors and merges


def test_compose_has_the_deployment_services(compose: dict) -> None:
    services = compose["services"]
    assert {"postgres", "redis", "minio", "storage-init", "migrate", "api", "worker", "flower"} == set(services)
    assert services["migrate"]["command"] == ["alembic", "upgrade", "head"]
    assert services["storage-init"]["command"] == ["clipadapt", "storage", "init"]
    for name in ("api", "worker"):
        depends = services[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully"
        assert depends["storage-init"]["condition"] == "service_completed_successfully"
    worker = services["worker"]
    assert "deploy" not in worker  # the base file runs on a CPU-only host
    assert worker["command"][worker["command"].index("-Q") + 1] == worker["environment"]["CLIPADAPT_JOB_QUEUE"] == "gpu"
    assert worker["environment"]["CLIPADAPT_BROKER_URL"].startswith("redis://redis:")
    assert worker["environment"]["CLIPADAPT_STORAGE_URL"].startswith("s3://")
    assert services["flower"]["profiles"] == ["flower"]


def test_one_image_built_once_and_third_party_images_pinned(compose: dict) -> None:
    """Compose v1 would build the image once per service with a `build:` section."""
    services = compose["services"]
    assert [name for name, s in services.items() if "build" in s] == ["migrate"]
    built = services["migrate"]["image"]
    assert {s["image"] for s in services.values() if s["image"].startswith("clipadapt")} == {built}
    for name, service in services.items():
        repository, _, tag = service["image"].rpartition(":")
        assert repository and tag and tag != "latest" or service["image"] == built, f"{name}: pin {service['image']}"
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim-bookworm$", (REPO / "Dockerfile").read_text(), re.M)
    assert "name" not in compose  # Compose v1.29 refuses a top-level name


def test_gpu_override_reserves_a_gpu_for_the_worker() -> None:
    gpu = yaml.safe_load((REPO / "docker-compose.gpu.yml").read_text())
    worker = gpu["services"]["worker"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert worker["environment"]["CLIPADAPT_DEVICE"] == "cuda"
    assert set(gpu["services"]) == {"worker"}


@pytest.mark.parametrize("files", [["docker-compose.yml"], ["docker-compose.yml", "docker-compose.gpu.yml"]])
def test_compose_v1_accepts_the_files(files: list[str]) -> None:
    """Debian 12's docker-compose 1.29 reads the files (v2 reads the same Compose specification)."""
    import shutil
    import subprocess

    if shutil.which("docker-compose") is None:
        pytest.skip("docker-compose (v1) is not installed; the compose test installs it")
    args = [a for f in files for a in ("-f", f)]
    result = subprocess.run(["docker-compose", *args, "--profile", "flower", "config", "-q"], cwd=REPO,
                            capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr


def test_every_clipadapt_variable_in_compose_is_a_setting(compose: dict) -> None:
    seen = set()
    for name, service in compose["services"].items():
        environment = service.get("environment") or {}
        assert isinstance(environment, dict), f"{name}: use a mapping for environment"
        used = {k for k in environment if k.startswith("CLIPADAPT_")}
        assert used <= SETTING_VARS, f"{name} sets unknown settings: {sorted(used - SETTING_VARS)}"
        seen |= used
    # The services that talk to each other are configured, not left on embedded defaults.
    for required in ("CLIPADAPT_DATABASE_URL", "CLIPADAPT_BROKER_URL", "CLIPADAPT_STORAGE_URL", "CLIPADAPT_S3_ENDPOINT_URL"):
        assert required in seen
        for name in ("migrate", "api", "worker"):
            assert required in compose["services"][name]["environment"], f"{name} lacks {required}"


def test_env_example_and_docs_list_exactly_the_settings() -> None:
    example = (REPO / ".env.example").read_text()
    env_vars = set(re.findall(r"^#?\s*(CLIPADAPT_[A-Z0-9_]+)=", example, re.M))
    assert re.search(r"^COMPOSE_PROJECT_NAME=", example, re.M)
    assert env_vars == SETTING_VARS
    docs = (REPO / "README.md").read_text()
    assert set(re.findall(r"`(CLIPADAPT_[A-Z0-9_]+)`", docs)) >= SETTING_VARS


def test_the_deployed_api_requires_keys(compose: dict) -> None:
    api = compose["services"]["api"]["environment"]
    assert api["CLIPADAPT_AUTH"] == "required"
    assert compose["services"]["worker"]["environment"]["CLIPADAPT_AUTH"] == "required"
    # The API listens on every interface in its container, which only auth=required allows.
    Settings(auth=api["CLIPADAPT_AUTH"], bind_host=api["CLIPADAPT_BIND_HOST"])
