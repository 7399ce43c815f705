from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, File, Form, Query, Response, UploadFile

from api.deps import SessionDep, SettingsDep, StorageDep
from api.errors import ERROR_RESPONSES, APIError, not_found
from api.schemas import DatasetPublic, DatasetsPublic
from core.jobs.datasets import DatasetRejected, archive_suffix, create_dataset, delete_dataset
from core.jobs.repository import DatasetRepository

router = APIRouter(prefix="/datasets", tags=["datasets"], responses=ERROR_RESPONSES)

CHUNK = 1024 * 1024


@router.post("", status_code=201, response_model=DatasetPublic)
def upload_dataset(
    session: SessionDep,
    storage: StorageDep,
    settings: SettingsDep,
    file: Annotated[UploadFile, File(description="A .zip, .tar, .tar.gz or .tgz of an ImageFolder or manifest.")],
    name: Annotated[str | None, Form(max_length=255)] = None,
) -> DatasetPublic:
    """Upload a dataset archive; it is validated completely before it is stored."""
    filename = Path(file.filename or "").name
    try:
        suffix = archive_suffix(filename)
    except DatasetRejected as e:
        raise APIError(400, "unsupported_archive", str(e)) from e
    limit = settings.max_upload_mb * 1024 * 1024
    with tempfile.TemporaryDirectory(prefix="clipadapt-upload-") as tmp:
        archive = Path(tmp) / f"upload{suffix}"
        size = 0
        with archive.open("wb") as out:
            while chunk := file.file.read(CHUNK):
                size += len(chunk)
                if size > limit:
                    raise APIError(
                        413, "upload_too_large", f"archive exceeds {settings.max_upload_mb} MiB"
                    )
                out.write(chunk)
        try:
            dataset = create_dataset(session, storage, archive, filename=filename, name=name)
        except DatasetRejected as e:
            raise APIError(400, "invalid_dataset", str(e)) from e
    return DatasetPublic.of(dataset)


@router.get("", response_model=DatasetsPublic)
def list_datasets(
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> DatasetsPublic:
    """List uploaded datasets, newest first."""
    rows, count = DatasetRepository(session).list(limit=limit, offset=offset)
    return DatasetsPublic(data=[DatasetPublic.of(d) for d in rows], count=count)


@router.get("/{dataset_id}", response_model=DatasetPublic)
def get_dataset(session: SessionDep, dataset_id: str) -> DatasetPublic:
    """Get one dataset: class names and image counts per split."""
    dataset = DatasetRepository(session).get(dataset_id)
    if dataset is None:
        raise not_found("dataset", dataset_id)
    return DatasetPublic.of(dataset)


@router.delete("/{dataset_id}", status_code=204)
def remove_dataset(session: SessionDep, storage: StorageDep, dataset_id: str) -> Response:
    """Delete a dataset (refused while a queued or running job uses it)."""
    repo = DatasetRepository(session)
    dataset = repo.get(dataset_id, for_update=True)
    if dataset is None:
        raise not_found("dataset", dataset_id)
    if repo.in_use(dataset_id):
        raise APIError(409, "dataset_in_use", "a queued or running job uses this dataset")
    delete_dataset(session, storage, dataset)
    return Response(status_code=204)


