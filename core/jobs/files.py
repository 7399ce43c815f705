"""Local copies of stored datasets and artifacts, and artifact archives (.tar.gz / .zip)."""

from __future__ import annotations

import os
import shutil
import stat
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

from core.jobs.storage import Storage
from core.settings import Settings


def dataset_key(dataset_id: str, suffix: str) -> str:
    return f"datasets/{dataset_id}/archive{suffix}"


def artifact_key(job_id: str) -> str:
    return f"artifacts/{job_id}/artifact.tar.gz"


def checkpoint_key(job_id: str) -> str:
    """The job's last training checkpoint (core.adapt.trainer.Checkpoint), while it runs."""
    return f"checkpoints/{job_id}.pt"


def stage_cache_prefix(sweep_id: str) -> str:
    """The stage outcomes that trials of one sweep share (core.adapt.trainer.StageOutcome); deleted
    once the sweep's last trial ended."""
    return f"sweeps/{sweep_id}/stages/"


def stage_cache_key(sweep_id: str, stage_key: str) -> str:
    return f"{stage_cache_prefix(sweep_id)}{stage_key}.pt"


def archive_limits(settings: Settings) -> Any:
    """The settings' limits on dataset archives, as core.adapt.data.ArchiveLimits."""
    from core.adapt.data import ArchiveLimits

    return ArchiveLimits(
        max_total_bytes=settings.max_dataset_mb * 1024 * 1024,
        max_files=settings.max_dataset_files,
        max_ratio=settings.max_archive_ratio,
    )


def pack_artifact(artifact_dir: Path, dest: Path, arcname: str) -> Path:
    """Write ``artifact_dir`` as a .tar.gz whose single top-level folder is ``arcname``."""
    with tarfile.open(dest, "w:gz") as tar:
        tar.add(artifact_dir, arcname=arcname)
    return dest


def tar_to_zip(tar_path: Path, dest: Path) -> Path:
    """Re-pack an artifact .tar.gz as a .zip (same member names)."""
    with tarfile.open(tar_path) as tar, zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as zf:
        for member in tar.getmembers():
            if member.isfile():
                source = tar.extractfile(member)
                assert source is not None
                info = zipfile.ZipInfo(member.name, time.gmtime(max(member.mtime, 315532800))[:6])
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = (stat.S_IFREG | 0o644) << 16
                with source, zf.open(info, "w") as out:
                    shutil.copyfileobj(source, out, 1024 * 1024)
    return dest


def _materialize(final: Path, build) -> Path:
    """Build ``final`` in a temp dir beside it and rename, so readers never see a partial copy.
    A concurrent builder that wins the rename is fine: both built the same content."""
    if final.is_dir():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{final.name}.partial-", dir=final.parent))
    try:
        built = build(work)
        try:
            os.replace(built, final)
        except OSError:
            if not final.is_dir():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return final


def local_dataset(storage: Storage, key: str, cache_dir: Path, dataset_id: str, *, limits: Any = None) -> Path:
    """The extracted dataset folder in the local cache, fetched and extracted on first use
    (within ``limits``, a core.adapt.data.ArchiveLimits; its defaults if None)."""
    from core.adapt.data import extract_archive

    def build(work: Path) -> Path:
        archive = work / Path(key).name
        storage.get_file(key, archive)
        return extract_archive(archive, work / "data", limits=limits)

    return _materialize(cache_dir / "datasets" / dataset_id, build)


def local_artifact(storage: Storage, key: str, cache_dir: Path, job_id: str) -> Path:
    """The extracted artifact folder (the one holding manifest.json) in the local cache."""

    from core.adapt.data import extract_archive

    def build(work: Path) -> Path:
        archive = work / "artifact.tar.gz"
        storage.get_file(key, archive)
        # The dataset extractor refuses links, devices and paths leaving the folder on every Python
        # the project supports (tarfile's extraction filters need 3.11.4; Debian 12 has 3.11.2).
        out = extract_archive(archive, work / "artifact")
        (top,) = [p for p in out.iterdir() if p.is_dir()]
        return top

    return _materialize(cache_dir / "artifacts" / job_id, build)
