from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from api.deps import OwnerDep, SessionDep, SettingsDep, StorageDep
from api.errors import ERROR_RESPONSES, APIError, field_error, not_found
from api.schemas import MAX_OFFSET, DatasetPublic, DatasetsPublic
from api.uploads import missing_field, read_multipart_upload
from core.jobs.datasets import DatasetRejected, archive_suffix, create_dataset, delete_dataset
from core.jobs.files import archive_limits
from core.jobs.repository import DatasetRepository
from core.jobs.telemetry import UPLOAD_BYTES

router = APIRouter(prefix="/datasets", tags=["datasets"], responses=ERROR_RESPONSES)


UPLOAD_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["file"],
                "properties": {
                    "file": {
                        "type": "string",
                        "format": "binary",
                        "description": "A .zip, .tar, .tar.gz or .tgz of an ImageFolder or manifest.",
                    },
                    "name": {"type": "string", "maxLength": 255, "description": "Display name."},
                },
            }
        }
    },
}


@router.post("", status_code=201, response_model=DatasetPublic, openapi_extra={"requestBody": UPLOAD_BODY})
async def upload_dataset(
    request: Request, session: SessionDep, storage: StorageDep, settings: SettingsDep, owner: OwnerDep
) -> DatasetPublic:
    """Upload a dataset archive; it is validated completely before it is stored."""
    scratch = settings.data_dir / "tmp"
    scratch.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="clipadapt-upload-", dir=scratch) as tmp:
        upload = await read_multipart_upload(
            request, Path(tmp) / "upload", file_field="file", max_file_bytes=settings.max_upload_mb * 1024 * 1024
        )
        if upload.file_path is None:
            raise missing_field("file")
        name = upload.fields.get("name") or None
        if name is not None and len(name) > 255:
            raise field_error("name", "String should have at most 255 characters", name[:300])
        filename = Path(upload.filename or "").name
        try:
            suffix = archive_suffix(filename)
        except DatasetRejected as e:
            raise APIError(400, "unsupported_archive", str(e)) from e
        archive = upload.file_path.rename(Path(tmp) / f"upload{suffix}")
        # Validation decodes every image (and imports torch the first time): off the event loop.
        try:
            dataset = await run_in_threadpool(
                lambda: create_dataset(
                    session, storage, archive, filename=filename, owner=owner, name=name,
                    limits=archive_limits(settings), scratch=Path(tmp),
                )
            )
        except DatasetRejected as e:
            raise APIError(400, "invalid_dataset", str(e)) from e
    UPLOAD_BYTES.inc(dataset.size_bytes)
    return DatasetPublic.of(dataset)


@router.get("", response_model=DatasetsPublic)
def list_datasets(
    session: SessionDep,
    owner: OwnerDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> DatasetsPublic:
    """List uploaded datasets, newest first."""
    rows, count = DatasetRepository(session).list(owner=owner, limit=limit, offset=offset)
    return DatasetsPublic(data=[DatasetPublic.of(d) for d in rows], count=count)


@router.get("/{dataset_id}", response_model=DatasetPublic)
def get_dataset(session: SessionDep, owner: OwnerDep, dataset_id: str) -> DatasetPublic:
    """Get one dataset: class names and image counts per split."""
    dataset = DatasetRepository(session).get(dataset_id, owner=owner)
    if dataset is None:
        raise not_found("dataset", dataset_id)
    return DatasetPublic.of(dataset)


@router.delete("/{dataset_id}", status_code=204)
def remove_dataset(session: SessionDep, storage: StorageDep, owner: OwnerDep, dataset_id: str) -> Response:
    """Delete a dataset (refused while a queued or running job uses it)."""
    repo = DatasetRepository(session)
    dataset = repo.get(dataset_id, owner=owner, for_update=True)
    if dataset is None:
        raise not_found("dataset", dataset_id)
    if repo.in_use(dataset_id):
        raise APIError(409, "dataset_in_use", "a queued or running job uses this dataset")
    delete_dataset(session, storage, dataset)
    return Response(status_code=204)


