"""Request and response schemas, separate from the ORM models."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from core.adapt.recipe import Recipe, parse_recipe
from core.jobs.catalog import CatalogEntry
from core.jobs.models import Dataset, Job, JobEvent, JobMetric, JobState, Sweep, SweepState
from core.jobs.sweeps import PrunerSettings, SweepBudget, SweepSpace

# Pagination offsets past any real table; also keeps them inside a 64-bit SQL integer.
MAX_OFFSET = 2**31 - 1

# ------------------------------------------------------------------------------------ datasets


class DatasetPublic(BaseModel):
    id: str
    name: str
    filename: str
    size_bytes: int
    class_ids: list[str] = Field(description="Folder / label names, sorted; index = class index.")
    classnames: list[str] = Field(description="Names used in prompts, same order as class_ids.")
    split_counts: dict[str, dict[str, int]] = Field(description="Images per split and class id.")
    created_at: datetime

    @classmethod
    def of(cls, dataset: Dataset) -> DatasetPublic:
        return cls.model_validate(dataset, from_attributes=True)


class DatasetsPublic(BaseModel):
    data: list[DatasetPublic]
    count: int


# -------------------------------------------------------------------------------------- models


class ModelPublic(BaseModel):
    name: str = Field(description="Catalog name (base) or job id (fine-tuned).")
    kind: Literal["base", "fine-tuned"]
    description: str = ""
    model: str | None = Field(None, description="open_clip architecture or config (base models).")
    pretrained: str | None = Field(None, description="Weight source (base models).")
    job_id: str | None = None
    base_model: str | None = Field(None, description="Catalog name the fine-tuned model started from.")
    method: str | None = None
    classnames: list[str] | None = None
    val_metrics: dict[str, Any] | None = None
    test_metrics: dict[str, Any] | None = None
    created_at: datetime | None = None

    @classmethod
    def of_entry(cls, entry: CatalogEntry) -> ModelPublic:
        return cls(
            name=entry.name,
            kind="base",
            description=entry.description,
            model=entry.model,
            pretrained=entry.pretrained,
        )

    @classmethod
    def of_job(cls, job: Job) -> ModelPublic:
        recipe = job.resolved_recipe or job.recipe
        return cls(
            name=job.id,
            kind="fine-tuned",
            description=job.name or "",
            job_id=job.id,
            base_model=job.base_model,
            method=recipe.get("method"),
            classnames=job.dataset.classnames if job.dataset else None,
            val_metrics=job.val_metrics,
            test_metrics=job.test_metrics,
            created_at=job.finished_at,
        )


class ModelsPublic(BaseModel):
    data: list[ModelPublic]
    count: int


# ---------------------------------------------------------------------------------------- jobs


def _auto_recipe() -> Any:
    return parse_recipe({"method": "auto"})


class JobCreate(BaseModel):
    dataset_id: str = Field(description="Id of an uploaded dataset.")
    base_model: str = Field(description="Name of a base model from GET /models.")
    recipe: Recipe = Field(
        default_factory=_auto_recipe,
        description="Method and hyperparameters; `method: auto` picks one from the data.",
    )
    name: str | None = Field(None, max_length=255)
    metadata: dict[str, Any] = Field(default_factory=dict, description="Free-form JSON kept on the job.")


class JobProgress(BaseModel):
    stage: int | None = Field(None, description="Index of the training stage (0 = first; LayerNorm-init adds a stage).")
    stage_name: str | None = None
    epoch: int | None = Field(None, description="Epochs finished in the current stage.")
    epochs: int | None = Field(None, description="Epochs in the current stage.")


class JobError(BaseModel):
    code: str
    message: str
    detail: Any = None


class JobPublic(BaseModel):
    id: str
    name: str | None
    metadata: dict[str, Any]
    state: JobState
    dataset_id: str | None
    sweep_id: str | None = Field(None, description="The sweep this job is a trial of.")
    base_model: str
    recipe: dict[str, Any] = Field(description="The recipe as submitted, with defaults filled in.")
    resolved_recipe: dict[str, Any] | None = Field(
        None, description="The recipe that was trained (auto: the one it picked)."
    )
    auto_decision: dict[str, Any] | None = None
    progress: JobProgress
    trainable_params: int | None = None
    val_metrics: dict[str, Any] | None = Field(None, description="Best validation metrics.")
    test_metrics: dict[str, Any] | None = None
    error: JobError | None = None
    artifact_available: bool
    attempts: int
    dispatch_pending: bool = Field(
        description="Queued but not yet handed to the broker (it was unreachable); sent once it is back."
    )
    cancel_requested_at: datetime | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime

    @classmethod
    def of(cls, job: Job) -> JobPublic:
        return cls(
            id=job.id,
            name=job.name,
            metadata=job.meta,
            state=job.state,
            dataset_id=job.dataset_id,
            sweep_id=job.sweep_id,
            base_model=job.base_model,
            recipe=job.recipe,
            resolved_recipe=job.resolved_recipe,
            auto_decision=job.auto_decision,
            progress=JobProgress(
                stage=job.stage, stage_name=job.stage_name, epoch=job.epoch, epochs=job.epochs
            ),
            trainable_params=job.trainable_params,
            val_metrics=job.val_metrics,
            test_metrics=job.test_metrics,
            error=JobError.model_validate(job.error) if job.error else None,
            artifact_available=job.artifact_key is not None,
            attempts=job.attempts,
            dispatch_pending=job.dispatch_pending and job.state == JobState.queued,
            cancel_requested_at=job.cancel_requested_at,
            created_at=job.created_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
            updated_at=job.updated_at,
        )


class JobsPublic(BaseModel):
    data: list[JobPublic]
    count: int


class JobMetricPublic(BaseModel):
    stage: int
    stage_name: str
    epoch: int
    epochs: int
    train_loss: float
    val: dict[str, Any]
    best: bool
    seconds: float | None = Field(None, description="Wall time of the epoch, training and validation.")
    images: int | None = Field(None, description="Training images the epoch saw.")
    created_at: datetime

    @classmethod
    def of(cls, metric: JobMetric) -> JobMetricPublic:
        return cls.model_validate(metric, from_attributes=True)


class JobMetricsPublic(BaseModel):
    data: list[JobMetricPublic]
    count: int


class JobEventPublic(BaseModel):
    kind: Literal["state", "message"]
    state: JobState | None
    message: str
    created_at: datetime

    @classmethod
    def of(cls, event: JobEvent) -> JobEventPublic:
        return cls.model_validate(event, from_attributes=True)


class JobEventsPublic(BaseModel):
    data: list[JobEventPublic]
    count: int


# ------------------------------------------------------------------------------------- predict


class LabelProbability(BaseModel):
    label: str
    probability: float


class ImagePrediction(BaseModel):
    filename: str
    labels: list[LabelProbability] = Field(description="Top-k labels, most probable first.")


class PredictModel(BaseModel):
    kind: Literal["fine-tuned", "zero-shot"]
    job_id: str | None = None
    sweep_id: str | None = None
    base_model: str
    classnames: list[str]


class ModelPredictions(BaseModel):
    model: PredictModel
    predictions: list[ImagePrediction]


# -------------------------------------------------------------------------------------- sweeps


class SweepCreate(BaseModel):
    dataset_id: str
    base_model: str = Field(description="A base model name from GET /models.")
    space: SweepSpace = Field(description="What to try: a preset or methods x layernorm, times lrs x shots x seeds.")
    budget: SweepBudget = Field(default_factory=SweepBudget)
    pruner: PrunerSettings = Field(default_factory=PrunerSettings, description="Successive halving (Optuna).")
    name: str | None = Field(None, max_length=255)


class LeaderboardRow(BaseModel):
    method: str
    layernorm: str
    lr: float | None
    shots: int | None
    seeds: list[int]
    job_ids: list[str]
    states: list[JobState]
    val_accuracy_mean: float | None = Field(description="Best validation accuracy, mean over the recipe's trials (seeds).")
    val_accuracy_std: float | None = Field(description="Population standard deviation over seeds.")
    trainable_params: int | None
    run_seconds: float = Field(description="Training time summed over the recipe's trials.")
    epochs_trained: int
    stopped_early: bool = Field(description="A trial of this recipe was stopped by successive halving.")
    complete: bool = Field(description="Every trial of this recipe trained to the end.")
    best_job_id: str | None = Field(description="Its best succeeded trial.")


class SweepProgress(BaseModel):
    trials: int
    states: dict[str, int] = Field(description="Trials per job state.")
    epochs_trained: int
    epochs_full_grid: int = Field(description="Epochs the trials would train with no early stopping.")
    device_minutes: float


class SweepPublic(BaseModel):
    id: str
    name: str | None
    state: SweepState
    dataset_id: str | None
    base_model: str
    space: dict[str, Any] = Field(description="The request's search space.")
    grid_size: int = Field(description="Trials in the expanded space, before max_trials.")
    budget: dict[str, Any]
    pruner: dict[str, Any]
    progress: SweepProgress
    leaderboard: list[LeaderboardRow] = Field(description="One row per recipe, best first (validation accuracy only).")
    best_job_id: str | None
    promoted_job_id: str | None = Field(description="The trial /predict uses for this sweep (the best until promoted).")
    test_metrics: dict[str, Any] | None = Field(description="The best trial's test metrics; no other trial is scored on test.")
    error: JobError | None = None
    created_at: datetime
    finished_at: datetime | None

    @classmethod
    def of(cls, sweep: Sweep, trials: list[Job], seconds: dict[str, tuple[float, int]], board: list[dict[str, Any]]) -> SweepPublic:
        from core.jobs.sweeps import trial_epochs

        states: dict[str, int] = {}
        for job in trials:
            states[str(job.state)] = states.get(str(job.state), 0) + 1
        return cls(
            id=sweep.id,
            name=sweep.name,
            state=sweep.state,
            dataset_id=sweep.dataset_id,
            base_model=sweep.base_model,
            space=sweep.space["request"],
            grid_size=sweep.space["grid_size"],
            budget=sweep.budget,
            pruner=sweep.pruner,
            progress=SweepProgress(
                trials=len(trials),
                states=states,
                epochs_trained=sum(e for _, e in seconds.values()),
                epochs_full_grid=sum(trial_epochs(job.recipe) for job in trials),
                device_minutes=sum(s for s, _ in seconds.values()) / 60,
            ),
            leaderboard=[LeaderboardRow(**row) for row in board],
            best_job_id=sweep.best_job_id,
            promoted_job_id=sweep.promoted_job_id,
            test_metrics=sweep.test_metrics,
            error=JobError.model_validate(sweep.error) if sweep.error else None,
            created_at=sweep.created_at,
            finished_at=sweep.finished_at,
        )


class SweepSummary(BaseModel):
    id: str
    name: str | None
    state: SweepState
    dataset_id: str | None
    base_model: str
    trials: int
    best_job_id: str | None
    promoted_job_id: str | None
    created_at: datetime
    finished_at: datetime | None


class SweepsPublic(BaseModel):
    data: list[SweepSummary]
    count: int


class SweepPromote(BaseModel):
    job_id: str | None = Field(None, description="A succeeded trial of the sweep; default: the selected best.")


class PredictResponse(BaseModel):
    model: PredictModel = Field(description="The model (with several job ids: the first one).")
    predictions: list[ImagePrediction]
    models: list[ModelPredictions] | None = Field(
        None,
        description="With several job ids: every model's predictions on the same images, in the order given; "
        "absent with one model.",
        exclude_if=lambda value: value is None,
    )


# -------------------------------------------------------------------------------------- health


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    status: Literal["ok"] = "ok"
    checks: dict[str, str]
