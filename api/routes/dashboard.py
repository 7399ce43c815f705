"""What the web dashboard needs beyond the resource routes: the recipe schema for its form, a
recipe's cost before it is submitted, and dataset thumbnails; plus the page itself at `/`."""

from __future__ import annotations

import base64
import math
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field, ValidationError
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from api.deps import CatalogDep, OwnerDep, SessionDep, SettingsDep, StorageDep
from api.errors import ERROR_RESPONSES, APIError, field_error, not_found
from api.schemas import JobCreate
from core.adapt.recipe import parse_recipe
from core.jobs.datasets import class_thumbnails
from core.adapt.methods.base import ScheduleError
from core.jobs.estimate import count_trainable, plan, train_images
from core.jobs.models import Job, JobMetric
from core.jobs.repository import DatasetRepository

router = APIRouter(tags=["dashboard"], responses=ERROR_RESPONSES)

THUMB_PX = 96


@router.get("/recipes/schema")
def recipe_schema() -> dict[str, Any]:
    """JSON schema of a job request, recipe included: one variant per registered method plus `auto`,
    discriminated on `method` (the dashboard builds its form from it)."""
    return JobCreate.model_json_schema()


class EstimateRequest(BaseModel):
    base_model: str = Field(description="Name of a base model from GET /models.")
    recipe: dict[str, Any] = Field(description="A recipe as POST /jobs takes it.")
    dataset_id: str | None = Field(None, description="Counts classes and images from this dataset.")
    num_classes: int | None = Field(None, ge=1, le=10_000, description="Without a dataset: number of classes.")


class StageEstimate(BaseModel):
    name: str
    epochs: int
    steps: int = Field(description="Optimizer steps: epochs x batches per epoch.")


class Estimate(BaseModel):
    trainable_params: int | None = Field(None, description="Counted on the base model; null if it could not be built.")
    stages: list[StageEstimate]
    epochs: int = Field(description="Epochs over every stage.")
    train_images: int | None = Field(None, description="Training images per epoch (k-shot sampled).")
    seconds: float | None = Field(
        None, description="Expected run length from this owner's earlier epochs on the same base model; null without history."
    )
    error: str | None = Field(None, description="Why the parameter count is missing (the model could not be built).")


@router.post("/recipes/estimate", response_model=Estimate)
async def estimate_recipe(body: EstimateRequest, session: SessionDep, catalog: CatalogDep, owner: OwnerDep) -> Estimate:
    """Trainable parameters and expected run length of a recipe before it is submitted."""
    entry = catalog.get(body.base_model)
    if entry is None:
        raise field_error("base_model", f"unknown base model; choose one of: {', '.join(catalog)}", body.base_model)
    try:
        recipe = parse_recipe(body.recipe)
    except ValidationError as e:
        raise APIError(422, "invalid_recipe", "invalid recipe", detail=e.errors(include_url=False, include_context=False)) from e
    classes, n_train = body.num_classes, None
    if body.dataset_id:
        dataset = DatasetRepository(session).get(body.dataset_id, owner=owner)
        if dataset is None:
            raise not_found("dataset", body.dataset_id)
        classes = len(dataset.class_ids)
        n_train = train_images(dataset.split_counts, recipe.shots, recipe.val_per_class)
    if classes is None:
        raise APIError(422, "invalid_request", "give dataset_id or num_classes")
    if recipe.method == "auto":
        # auto decides its recipe from the data when the job runs; count what it picks at its most
        # likely choice is guesswork, so only the run length of its default epochs is given.
        stages = [StageEstimate(name="auto", epochs=recipe.resolved_epochs(), steps=0)]
    else:
        try:
            planned = plan(recipe, n_train)
        except ScheduleError as e:  # what POST /jobs would refuse on this dataset
            raise field_error("recipe", str(e), body.recipe) from e
        stages = [
            StageEstimate(
                name=s.name, epochs=s.epochs,
                steps=s.epochs * math.ceil(n_train / s.batch_size) if n_train else 0,
            )
            for s in planned
        ]
    count, error = None, None
    if recipe.method != "auto":
        try:
            # Builds the model (imports torch): off the event loop.
            count = await run_in_threadpool(count_trainable, entry.spec(), recipe, classes)
        except Exception as e:  # noqa: BLE001 - any failure to build the model is reported, not a 500
            error = f"could not build {body.base_model}: {type(e).__name__}: {e}"
    else:
        error = "auto picks its method when the job runs; the count follows then"
    epochs = sum(s.epochs for s in stages)
    seconds = None
    if n_train:
        rate = _seconds_per_image(session, owner, body.base_model)
        if rate is not None:
            seconds = round(rate * n_train * epochs, 1)
    return Estimate(trainable_params=count, stages=stages, epochs=epochs, train_images=n_train,
                    seconds=seconds, error=error)


def _seconds_per_image(session: Any, owner: str, base_model: str) -> float | None:
    """Mean wall time per training image over this owner's last 200 epochs on ``base_model``."""
    rows = session.execute(
        select(JobMetric.seconds, JobMetric.images)
        .join(Job, Job.id == JobMetric.job_id)
        .where(Job.owner == owner, Job.base_model == base_model, JobMetric.seconds.is_not(None), JobMetric.images > 0)
        .order_by(JobMetric.id.desc())
        .limit(200)
    ).all()
    if not rows:
        return None
    return sum(s for s, _ in rows) / sum(n for _, n in rows)


class Thumbnail(BaseModel):
    class_id: str
    name: str
    split: str
    data_url: str = Field(description=f"A JPEG at most {THUMB_PX} px on its longer side, as a data: URL.")


class Thumbnails(BaseModel):
    data: list[Thumbnail]


def _thumbnails(settings: Any, storage: Any, dataset: Any, classes: list[int], limit: int) -> list[Thumbnail]:
    return [
        Thumbnail(class_id=t.class_id, name=t.name, split=t.split,
                  data_url="data:image/jpeg;base64," + base64.b64encode(t.jpeg).decode())
        for t in class_thumbnails(settings, storage, dataset, classes, limit, THUMB_PX)
    ]


@router.get("/datasets/{dataset_id}/thumbnails", response_model=Thumbnails)
async def dataset_thumbnails(
    dataset_id: str,
    session: SessionDep,
    settings: SettingsDep,
    storage: StorageDep,
    owner: OwnerDep,
    class_id: Annotated[
        str | None, Query(alias="class", description="A class id of the dataset; omitted: every class.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=32, description="Thumbnails per class.")] = 8,
) -> Thumbnails:
    """Small sample images per class (the first `limit` of each, in dataset order). One call for every
    class extracts the archive once, so the dashboard asks for all of them together."""
    dataset = DatasetRepository(session).get(dataset_id, owner=owner)
    if dataset is None:
        raise not_found("dataset", dataset_id)
    if class_id is not None and class_id not in dataset.class_ids:
        raise APIError(404, "not_found", f"dataset {dataset_id} has no class {class_id!r}")
    classes = [dataset.class_ids.index(class_id)] if class_id is not None else list(range(len(dataset.class_ids)))
    data = await run_in_threadpool(_thumbnails, settings, storage, dataset, classes, limit)
    return Thumbnails(data=data)
