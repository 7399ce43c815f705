"""Dataset ingestion: validate an uploaded archive fully, then store it and record it."""

from __future__ import annotations

import io
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy.orm import Session

from core.jobs.files import archive_limits, dataset_key
from core.jobs.models import Dataset, new_id
from core.jobs.repository import DatasetRepository
from core.jobs.storage import Storage

if TYPE_CHECKING:
    from core.adapt.data import ArchiveLimits
    from core.settings import Settings

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz")


class DatasetRejected(ValueError):
    """The upload is not a usable dataset; the message tells the user what to fix."""


def archive_suffix(filename: str) -> str:
    lower = filename.lower()
    for suffix in sorted(ARCHIVE_SUFFIXES, key=len, reverse=True):
        if lower.endswith(suffix):
            return suffix
    raise DatasetRejected(
        f"{filename!r} is not a dataset archive: upload a {', '.join(ARCHIVE_SUFFIXES)} file"
    )


def create_dataset(
    session: Session,
    storage: Storage,
    archive: Path,
    *,
    filename: str,
    owner: str,
    name: str | None = None,
    limits: ArchiveLimits | None = None,
    scratch: Path | None = None,
) -> Dataset:
    """Validate ``archive`` (extracted within ``limits``, every image decoded), store it, and
    commit its row, owned by ``owner``. ``scratch`` is where it is extracted (default: the
    system's temp dir); nothing is left there.

    The archive is stored before the row is committed and removed again if the commit fails, so a
    dataset row always has its archive.
    """
    from core.adapt.data import DatasetError, load_dataset

    suffix = archive_suffix(filename)
    with tempfile.TemporaryDirectory(prefix="clipadapt-upload-", dir=scratch) as tmp:
        # load_dataset picks the format by suffix and names the file in its errors.
        named = Path(tmp) / (Path(filename).name or f"upload{suffix}")
        named.symlink_to(archive.resolve())
        try:
            loaded = load_dataset(named, extract_dir=Path(tmp) / "data", limits=limits)
        except DatasetError as e:
            raise DatasetRejected(str(e)) from e

    dataset_id = new_id()
    dataset = Dataset(
        id=dataset_id,
        owner=owner,
        name=name or Path(filename).name.removesuffix(suffix),
        filename=Path(filename).name,
        archive_key=dataset_key(dataset_id, suffix),
        size_bytes=archive.stat().st_size,
        class_ids=list(loaded.class_ids),
        classnames=list(loaded.classnames),
        split_counts=loaded.split_counts(),
    )
    storage.put_file(dataset.archive_key, archive)
    try:
        DatasetRepository(session).add(dataset)
        session.commit()
    except BaseException:
        session.rollback()
        storage.delete(dataset.archive_key)
        raise
    return dataset


def delete_dataset(session: Session, storage: Storage, dataset: Dataset) -> None:
    """Delete the row, commit, then the archive: at worst an orphaned object, never a dangling row."""
    key = dataset.archive_key
    DatasetRepository(session).delete(dataset)
    session.commit()
    storage.delete(key)


@dataclass(frozen=True)
class Thumbnail:
    class_id: str
    name: str
    split: str
    jpeg: bytes


def class_thumbnails(
    settings: Settings, storage: Storage, dataset: Dataset, classes: list[int], limit: int, px: int
) -> list[Thumbnail]:
    """The first `limit` images of each of `classes` (label indices), in dataset order, as JPEGs at most
    `px` on their longer side. Extracts the archive once for all of them."""
    from PIL import Image

    from core.adapt.data import load_dataset, open_image

    scratch = settings.data_dir / "tmp"
    scratch.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="clipadapt-thumbs-", dir=scratch) as tmp:
        archive = Path(tmp) / Path(dataset.filename).name
        storage.get_file(dataset.archive_key, archive)
        # Already validated on upload: skip decoding every image again.
        loaded = load_dataset(archive, extract_dir=Path(tmp) / "data", verify_images=False, limits=archive_limits(settings))
        taken = dict.fromkeys(classes, 0)
        out = []
        for sample in loaded.samples:
            if taken.get(sample.label, limit) >= limit:
                continue
            taken[sample.label] += 1
            img = open_image(sample.path)  # RGB already, as JPEG needs
            img.thumbnail((px, px), Image.Resampling.BICUBIC)
            buf = io.BytesIO()
            img.save(buf, "JPEG", quality=80)
            out.append(Thumbnail(loaded.class_ids[sample.label], sample.path.name, sample.split or "train", buf.getvalue()))
        return out
