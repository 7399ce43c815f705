"""Deployment settings: one class, read from ``CLIPADAPT_*`` environment variables.

Only deployment concerns live here (where data goes, which services to talk to, limits). Training
hyperparameters belong to a job's recipe. Every field is listed in README.md.
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="CLIPADAPT_", env_file=".env", extra="ignore", frozen=True
    )

    data_dir: Path = Field(
        Path("data"),
        description="Directory for the SQLite database, local storage and caches.",
    )
    database_url: str = Field(
        "",
        description="SQLAlchemy URL; empty means SQLite at DATA_DIR/clipadapt.db. "
        "postgresql:// URLs use the psycopg 3 driver.",
    )
    broker_url: str = Field(
        "",
        description="Celery broker (e.g. redis://redis:6379/0); empty runs jobs in-process "
        "(embedded runner).",
    )
    storage_url: str = Field(
        "",
        description="Where dataset archives and artifacts go: empty means DATA_DIR/storage, "
        "a directory path, or s3://bucket[/prefix].",
    )
    s3_endpoint_url: str = Field("", description="S3-compatible endpoint (MinIO etc.); empty = AWS.")
    s3_region: str = Field("us-east-1", description="S3 region name.")
    s3_access_key_id: str = Field("", description="S3 access key; empty = boto3 default chain.")
    s3_secret_access_key: str = Field("", description="S3 secret key; empty = boto3 default chain.")
    model_catalog: str = Field(
        "", description="JSON file listing the base models offered; empty = built-in catalog."
    )
    device: str = Field(
        "auto", description="Torch device for training and prediction: auto, cpu, cuda, cuda:1..."
    )
    torch_threads: int = Field(
        0,
        ge=0,
        description="Torch CPU threads per process; 0 = torch's default (the embedded runner's "
        "training process then leaves one core to the API).",
    )
    loader_workers: int | Literal["auto"] = Field(
        "auto",
        description="DataLoader worker processes decoding and augmenting training images where every step "
        "runs the image tower (LayerNorm, full, LoRA, joint modes); auto: up to 4 on CUDA, 0 on a CPU.",
    )
    embedded_workers: int = Field(
        1, ge=1, description="Jobs the embedded runner trains at the same time."
    )
    job_queue: str = Field("gpu", description="Celery queue that training tasks are routed to.")
    broker_visibility_timeout_s: float = Field(
        21600.0,
        gt=0,
        description="Redis broker: a task not acknowledged this long after delivery (its job is still "
        "training, or its worker died) is delivered again; the copy finds the job claimed or finished "
        "and does nothing.",
    )
    max_upload_mb: int = Field(2048, ge=1, description="Largest dataset archive accepted, in MiB.")
    max_predict_images: int = Field(64, ge=1, description="Most images in one /predict request.")
    model_cache_size: int = Field(
        4, ge=1, description="Loaded models (base and fine-tuned) kept in memory for /predict."
    )
    delta_cache_size: int = Field(
        64, ge=1, description="Fine-tuned models (their deltas over the base) kept on the device for /predict; "
        "on a CPU host memory is the device's."
    )
    served_model_cache_size: int = Field(
        1024, ge=1, description="Fine-tuned models kept in host memory for /predict, as deltas over their base "
        "(classifier and image-tower tensors: kilobytes to a few MB each, full fine-tuning its image tower)."
    )
    predict_batch_size: int = Field(
        32, ge=1, description="Most images of concurrent /predict requests (any models on one base) run together "
        "(1: one request at a time)."
    )
    predict_max_wait_ms: float = Field(
        5.0, ge=0, le=1000, description="On a GPU, how long a /predict request waits for others to join its batch (on a CPU it "
        "takes only the requests already waiting: one image at a time runs as fast as several there)."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Log level.")
    log_format: Literal["plain", "json"] = Field(
        "plain", description="plain: text lines for a terminal; json: one JSON object per line, with job_id "
        "while a job runs (for log collectors)."
    )

    # ----------------------------------------------------------------------------- access
    auth: Literal["required", "disabled"] = Field(
        "required",
        description="required: every request but health checks and docs needs `Authorization: Bearer "
        "<key>` (keys from `clipadapt keys create`); disabled: no keys, one owner, only allowed when "
        "BIND_HOST is a loopback address.",
    )
    bind_host: str = Field(
        "127.0.0.1",
        description="Address the API listens on (`make serve` passes it to uvicorn); with AUTH=disabled "
        "it must be loopback, and requests from other addresses are refused.",
    )

    # ------------------------------------------------------------------- hostile uploads
    max_dataset_mb: int = Field(
        20480, ge=1, description="Largest total size of the files in a dataset archive once extracted, in MiB."
    )
    max_dataset_files: int = Field(200_000, ge=1, description="Most members (files and folders) in a dataset archive.")
    max_archive_ratio: float = Field(
        200.0, gt=1, description="Largest ratio of extracted size to archive size (zip/tar bombs)."
    )
    max_image_mb: int = Field(32, ge=1, description="Largest image accepted by /predict, in MiB.")
    max_image_pixels: int = Field(
        64_000_000, ge=1, description="Largest image accepted by /predict, in pixels (width x height)."
    )

    # ---------------------------------------------------------------------------- faults
    job_lease_s: float = Field(
        60.0,
        ge=1,
        description="How long a worker's claim on a running job lasts without a heartbeat (heartbeats "
        "renew it several times per lease). A job whose lease expired was abandoned and is re-queued.",
    )
    job_max_attempts: int = Field(
        3, ge=1, description="Attempts (claims) a job gets before a job that keeps killing its worker fails."
    )
    checkpoint_every_s: float = Field(
        300.0,
        ge=0,
        description="Save a resumable training checkpoint to storage after an epoch at most this often "
        "(0: after every epoch).",
    )
    storage_retry_s: float = Field(
        120.0,
        ge=0,
        description="How long a worker retries (with backoff) storing a finished job's artifact while storage is "
        "unreachable; after that the job fails with storage_error. A job never succeeds without its artifact.",
    )
    recovery_every_s: float = Field(
        30.0,
        gt=0,
        # The old name is still read: deployments set it before "sweep" came to mean hyperparameter sweeps.
        validation_alias=AliasChoices("CLIPADAPT_RECOVERY_EVERY_S", "CLIPADAPT_SWEEP_EVERY_S", "recovery_every_s"),
        description="How often workers and the API look for jobs whose lease expired.",
    )

    @field_validator("database_url")
    @classmethod
    def _psycopg_driver(cls, url: str) -> str:
        for prefix in ("postgres://", "postgresql://"):
            if url.startswith(prefix):
                return "postgresql+psycopg://" + url[len(prefix) :]
        return url

    @model_validator(mode="after")
    def _no_open_unauthenticated_api(self) -> Settings:
        if self.auth == "disabled" and not is_loopback(self.bind_host):
            raise ValueError(
                f"CLIPADAPT_AUTH=disabled is only allowed when CLIPADAPT_BIND_HOST is a loopback "
                f"address, not {self.bind_host!r}: create keys with `clipadapt keys create` instead"
            )
        return self

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'clipadapt.db').resolve()}"

    @property
    def resolved_storage_url(self) -> str:
        return self.storage_url or str((self.data_dir / "storage").resolve())

    @property
    def embedded(self) -> bool:
        """True when jobs run inside the API process tree instead of on Celery workers."""
        return not self.broker_url

    @property
    def cache_dir(self) -> Path:
        """Local copies of datasets and artifacts fetched from storage."""
        return self.data_dir / "cache"

    def to_env(self) -> dict[str, str]:
        """These settings as CLIPADAPT_* variables, for a child process to read back."""
        values = self.model_dump() | {"data_dir": self.data_dir.resolve()}
        return {f"CLIPADAPT_{name.upper()}": str(value) for name, value in values.items()}


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@lru_cache
def get_settings() -> Settings:
    return Settings()
