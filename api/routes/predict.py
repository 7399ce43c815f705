from __future__ import annotations

import json
import time
from typing import Annotated

from fastapi import APIRouter, File, Form, UploadFile

from api.deps import CatalogDep, OwnerDep, PredictionDep, SessionDep, SettingsDep
from api.errors import ERROR_RESPONSES, APIError, field_error
from api.schemas import ImagePrediction, LabelProbability, ModelPredictions, PredictModel, PredictResponse
from core.jobs.models import JobState
from core.jobs.predict import ImageRejected, ImageTooLarge
from core.jobs.repository import JobRepository
from core.jobs.storage import StorageError
from core.jobs.sweeps import SweepRepository
from core.jobs.telemetry import observe_prediction

router = APIRouter(tags=["predict"], responses=ERROR_RESPONSES)

MAX_ZERO_SHOT_CLASSES = 1000
MAX_CLASSNAME_CHARS = 200
# Models compared on the same images in one request: each adds a classifier (and, for image-tower
# methods, an image-tower forward), so bound the work one request asks for.
MAX_COMPARED_MODELS = 16


def _parse_list(field: str, values: list[str], what: str) -> list[str]:
    """Repeated form fields, or one field holding a JSON list or comma-separated values."""
    if len(values) == 1:
        text = values[0].strip()
        if text.startswith("["):
            try:
                parsed = json.loads(text)
            except json.JSONDecodeError as e:
                raise field_error(field, f"invalid JSON list: {e}", text) from e
            if not isinstance(parsed, list) or not all(isinstance(c, str) for c in parsed):
                raise field_error(field, "expected a JSON list of strings", text)
            values = parsed
        else:
            values = text.split(",")
    items = [v.strip() for v in values]
    if any(not item for item in items):
        raise field_error(field, f"{what} must not be empty", values)
    return items


def _parse_classnames(values: list[str] | None) -> list[str]:
    """Repeated form fields, or one field holding a JSON list or comma-separated names."""
    if not values:
        return []
    names = _parse_list("classnames", values, "class names")
    # Each name runs the text tower 80 times (the template ensemble): bound the work one request asks for.
    if len(names) > MAX_ZERO_SHOT_CLASSES:
        raise field_error("classnames", f"at most {MAX_ZERO_SHOT_CLASSES} class names", len(names))
    if any(len(n) > MAX_CLASSNAME_CHARS for n in names):
        raise field_error("classnames", f"class names have at most {MAX_CLASSNAME_CHARS} characters")
    if len(set(names)) != len(names):
        raise field_error("classnames", "class names must be unique", names)
    return names


def _parse_job_ids(values: list[str] | None) -> list[str]:
    """Repeated form fields, or one field holding a JSON list or comma-separated ids."""
    if not values:
        return []
    ids = _parse_list("job_id", values, "job ids")
    if len(ids) > MAX_COMPARED_MODELS:
        raise field_error("job_id", f"at most {MAX_COMPARED_MODELS} job ids per request", len(ids))
    if len(set(ids)) != len(ids):
        raise field_error("job_id", "job ids must be unique", ids)
    return ids


def _sweep_job(session, owner, sweep_id: str) -> str:
    """The job a sweep serves: its promoted trial, else its selected best."""
    sweep = SweepRepository(session).get(sweep_id, owner=owner)
    if sweep is None:  # another owner's sweep is as unknown as a missing one
        raise field_error("sweep_id", "no sweep with this id", sweep_id)
    job_id = sweep.promoted_job_id or sweep.best_job_id
    if job_id is None:
        raise APIError(409, "model_unavailable", f"sweep {sweep_id} is {sweep.state} and has no best trial yet")
    return job_id


def _fine_tuned(session, service, owner, job_ids: list[str], sweep_id: str | None = None) -> list[tuple[PredictModel, object]]:
    repo = JobRepository(session)
    found = []
    for job_id in job_ids:
        job = repo.get(job_id, owner=owner)
        if job is None:  # another owner's job is as unknown as a missing one
            raise field_error("job_id", "no job with this id", job_id)
        if job.state != JobState.succeeded or job.artifact_key is None:
            raise APIError(409, "model_unavailable", f"job {job_id} is {job.state}, not succeeded")
        model = PredictModel(kind="fine-tuned", job_id=job.id, sweep_id=sweep_id, base_model=job.base_model,
                             classnames=job.dataset.classnames if job.dataset else [])
        found.append((model, job.base_model_spec, job.artifact_key))
    session.close()  # release the connection before the slow part
    served = []
    for model, spec, key in found:
        try:
            served.append((model, service.for_job(model.job_id, spec, key)))
        except StorageError as e:
            raise APIError(503, "storage_error", str(e)) from e
    return served


@router.post("/predict", response_model=PredictResponse)
def predict(
    session: SessionDep,
    catalog: CatalogDep,
    settings: SettingsDep,
    service: PredictionDep,
    owner: OwnerDep,
    images: Annotated[list[UploadFile], File(description="One or more images.")],
    job_id: Annotated[
        list[str] | None,
        Form(description=f"A succeeded job's fine-tuned model; repeat the field (or give a comma-separated/JSON "
             f"list) to compare up to {MAX_COMPARED_MODELS} models on the same images."),
    ] = None,
    sweep_id: Annotated[
        str | None, Form(description="A sweep's model: its promoted trial, else its selected best.")
    ] = None,
    base_model: Annotated[str | None, Form(description="Zero-shot: a base model name.")] = None,
    classnames: Annotated[
        list[str] | None,
        Form(description="Zero-shot: class names (repeat the field, or one comma-separated/JSON list)."),
    ] = None,
    top_k: Annotated[int, Form(ge=1, le=1000)] = 5,
) -> PredictResponse:
    """Classify images with fine-tuned models (job_id, one or several; or sweep_id) or zero-shot (base_model + classnames)."""
    started = time.perf_counter()
    if len(images) > settings.max_predict_images:
        raise field_error("images", f"at most {settings.max_predict_images} images per request", len(images))
    job_ids = _parse_job_ids(job_id)
    if [bool(job_ids) or None, sweep_id, base_model].count(None) != 2:
        raise APIError(422, "validation_error", "give one of job_id, sweep_id, or base_model with classnames")
    filenames = [f.filename or f"image{i}" for i, f in enumerate(images)]  # in errors and in the response
    max_bytes = settings.max_image_mb * 1024 * 1024
    for name, image in zip(filenames, images, strict=True):
        if image.size is not None and image.size > max_bytes:
            raise APIError(413, "image_too_large", f"image {name} is larger than {settings.max_image_mb} MiB")

    if sweep_id is not None:
        served = _fine_tuned(session, service, owner, [_sweep_job(session, owner, sweep_id)], sweep_id)
    elif job_ids:
        served = _fine_tuned(session, service, owner, job_ids)
    else:
        assert base_model is not None
        entry = catalog.get(base_model)
        if entry is None:
            raise field_error("base_model", f"unknown base model; choose one of: {', '.join(catalog)}", base_model)
        names = _parse_classnames(classnames)
        if len(names) < 2:
            raise field_error("classnames", "zero-shot needs at least 2 class names", classnames)
        served = [(PredictModel(kind="zero-shot", base_model=entry.name, classnames=names), service.zero_shot(entry.spec(), names))]

    try:
        decoded = service.open_images(
            [(name, f.file) for name, f in zip(filenames, images, strict=True)], max_pixels=settings.max_image_pixels
        )
    except ImageTooLarge as e:
        raise APIError(413, "image_too_large", str(e)) from e
    except ImageRejected as e:
        raise field_error("images", str(e)) from e
    results = service.predict_many([model for _, model in served], decoded, top_k=top_k)
    entries = []
    for (model, handle), ranked in zip(served, results, strict=True):
        if model.kind == "fine-tuned" and not model.classnames:
            model.classnames = list(handle.classnames)
        predictions = [
            ImagePrediction(
                filename=name,
                labels=[LabelProbability(label=p["label"], probability=float(p["probability"])) for p in preds],
            )
            for name, preds in zip(filenames, ranked, strict=True)
        ]
        entries.append(ModelPredictions(model=model, predictions=predictions))
    observe_prediction(served[0][0].kind, len(images) * len(served), time.perf_counter() - started)
    # One model: today's shape. Several: the first in model/predictions (for clients that read those) and
    # every model, in the order asked, in `models`.
    first = entries[0]
    if len(entries) == 1:
        return PredictResponse(model=first.model, predictions=first.predictions)
    return PredictResponse(model=first.model, predictions=first.predictions, models=entries)
