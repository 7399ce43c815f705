"""Sweeps: run a grid of recipes on one dataset as ordinary jobs, stop weak trials early with
successive halving, and select the best recipe by validation accuracy.

Every trial is a job (same dataset, same k-shot split per seed, same base model), so any worker runs
it, N workers run N trials at once, and it shows in ``/jobs``. The search and the pruning use Optuna
(a maintained library) through its public API:

- Storage: ``optuna.storages.RDBStorage`` on our own database: on Postgres in its own schema
  (``clipadapt_optuna``, so its tables never mix with ours or with our migrations), on SQLite in a
  sibling file (``<db>-optuna.db``). Any worker reaches it, so trials on different machines compete
  in the same rungs.
- Search: the grid is expanded here (presets are lists of recipes, not Cartesian products) and each
  point is ``enqueue_trial``-ed and ``ask``-ed once with fixed distributions when the sweep is
  created: the Optuna trial number is stored on the job. A ``GridSampler`` would only re-derive
  the same points, in a random order.
- Pruning: ``SuccessiveHalvingPruner`` (asynchronous successive halving). After every epoch of its
  last stage the trial's job reports that stage's best validation accuracy so far (ties broken by
  validation loss, ``core.jobs.runner.ranking_score``), at step = the stage's epochs, through ``optuna.trial.Trial(study, trial_id)`` and asks ``should_prune()``; a
  pruned job stops and ends ``pruned`` (``core.jobs.runner``'s generic early-stop rule). A
  LayerNorm-init stage is not judged: it only prepares the method that follows, and the recipes
  that win on tasks far from pre-training (a linear probe after LN init) look weak until their
  last stage starts.
- Shared stages: trials whose LayerNorm-init stage is the same (the init stage has its own
  learning rate, so every init recipe of one seed and shot count shares it) train it once. Its
  outcome is kept in object storage under the sweep (``stage_cache_key``) and the next trial
  continues from it exactly as if it had trained it (``core.adapt.trainer.StageCache``). Trials
  running at the same moment may each train it; the results are the same. The stages are deleted
  once the sweep's last trial ended (``drop_stage_cache``).

Compute, by design: with reduction factor ``eta`` (default 3) the rungs are at ``r, r*eta, r*eta^2,
...`` epochs of the last stage (``r`` = min_resource, default ``max(1, epochs // eta^3)``), and a trial passes a rung
only if it is in the top ``1/eta`` of the trials that reached it. Of N trials of E epochs, about
``N(1 - 1/eta)`` stop at ``r``, ``N/eta (1 - 1/eta)`` at ``r*eta`` and so on, and about ``N/eta^3``
run all E epochs: with eta = 3 and r = E/27 that is ``E(2/81 + 2/81 + 2/81 + 1/27) ~= 0.11 E`` per
trial instead of E. Asynchronous halving promotes more than ``1/eta`` while few trials have reached a
rung (the first trial always passes), which is why the target is 40% of the grid's epochs, not 11%.

Completion is idempotent and crash-safe: after its last trial ends, a sweep moves ``running ->
finishing`` (best trial chosen, in one transaction) and ``finishing -> succeeded`` (the best
trial's test split scored, written conditionally). Whoever ends a trial advances the sweep, and the
recovery loop (``advance_sweeps``) advances every active sweep, so a worker that dies in between
leaves nothing stuck.
"""

from __future__ import annotations

import functools
import logging
import math
import statistics
import warnings
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from sqlalchemy import func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from core.adapt.methods import METHODS
from core.adapt.methods.base import LayerNormMode, ScheduleError
from core.adapt.recipe import parse_recipe
from core.jobs.db import get_engine, transaction
from core.jobs.estimate import check_schedule
from core.jobs.models import Dataset, Job, JobMetric, JobState, Sweep, SweepState, utcnow
from core.jobs.repository import JobRepository
from core.settings import Settings

log = logging.getLogger(__name__)

OPTUNA_SCHEMA = "clipadapt_optuna"

# (method, LayerNorm mode) pairs.
PRESETS: dict[str, list[tuple[str, str]]] = {
    # Table 1 of the paper: every method that combines with LayerNorm tuning, in each of the three
    # ways, plus LayerNorm tuning alone; appendix A.3 trains all of them with one learning rate
    # (5e-4, the methods' default: `lrs` null).
    "paper": [
        (method, mode)
        for method in ("linear_probe", "prompt_tuning", "adapter", "compacter")
        for mode in ("none", "joint", "init")
    ]
    + [("layernorm", "none")],
    # Section 6's recommendations (what `auto` picks from): LayerNorm tuning (low data, similar
    # to pre-training), compacter with LayerNorm init (low data, dissimilar), linear probe with
    # LayerNorm init (high data).
    "quick": [("layernorm", "none"), ("compacter", "init"), ("linear_probe", "init")],
}
SWEEP_METHODS = [name for name in METHODS if name != "zero_shot"]  # zero-shot trains nothing
# Recipe fields a sweep fixes for every trial (the grid varies method, layernorm, lr, shots, seed).
COMMON_FIELDS = ("epochs", "init_epochs", "batch_size", "weight_decay", "val_per_class", "feature_views", "templates")


class SweepError(ValueError):
    """A sweep request that cannot run; ``field`` names the offending input."""

    def __init__(self, field: str, message: str, value: Any = None) -> None:
        super().__init__(message)
        self.field, self.message, self.value = field, message, value


class SweepSpace(BaseModel):
    """What to try: a preset (or methods x LayerNorm modes), times learning rates x shots x seeds."""

    model_config = ConfigDict(extra="forbid")

    preset: Literal["paper", "quick"] | None = Field(
        None, description="'paper' (Table 1: 4 methods x 3 LayerNorm modes + LayerNorm alone) or 'quick' "
        "(section 6's three recipes); null: methods x layernorm."
    )
    methods: list[str] | None = Field(None, min_length=1, max_length=20, description="Methods, without a preset.")
    layernorm: list[LayerNormMode] | None = Field(
        None, min_length=1, max_length=3, description="LayerNorm modes, without a preset; default ['none']."
    )
    lrs: list[float | None] = Field(
        [None], min_length=1, max_length=10, description="Learning rates; null is the method's default."
    )
    shots: list[int | None] = Field([None], min_length=1, max_length=10, description="Shots per class; null: all.")
    seeds: list[int] = Field([0], min_length=1, max_length=10, description="Seeds; each recipe runs once per seed.")
    recipe: dict[str, Any] = Field(
        default_factory=dict,
        description=f"Recipe fields shared by every trial: {', '.join(COMMON_FIELDS)}.",
    )

    @model_validator(mode="after")
    def _check(self) -> SweepSpace:
        if self.preset is not None and (self.methods is not None or self.layernorm is not None):
            raise ValueError("give either a preset or methods/layernorm, not both")
        if self.preset is None and self.methods is None:
            raise ValueError("give a preset ('paper' or 'quick') or a list of methods")
        for name in self.methods or ():
            if name not in SWEEP_METHODS:
                raise ValueError(f"unknown method {name!r} for a sweep; choose from: {', '.join(SWEEP_METHODS)}")
        unknown = set(self.recipe) - set(COMMON_FIELDS)
        if unknown:
            raise ValueError(f"recipe fields a sweep cannot fix: {sorted(unknown)}; allowed: {', '.join(COMMON_FIELDS)}")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError("seeds must be distinct")
        return self

    def pairs(self) -> list[tuple[str, str]]:
        if self.preset is not None:
            return PRESETS[self.preset]
        pairs: list[tuple[str, str]] = []
        for method in self.methods or ():
            for mode in self.layernorm or ["none"]:
                if mode != "none" and not METHODS[method].config.supports_layernorm:
                    continue  # e.g. layernorm x joint: the same recipe as layernorm alone
                if (method, mode) not in pairs:
                    pairs.append((method, mode))
        return pairs

    def expand(self) -> list[dict[str, Any]]:
        """Trial recipes, recipe-major and seed-minor (the seeds of one recipe are adjacent)."""
        trials = []
        for method, mode in self.pairs():
            for lr in dict.fromkeys(self.lrs):
                for shots in dict.fromkeys(self.shots):
                    for seed in self.seeds:
                        recipe = {**self.recipe, "method": method, "layernorm": mode, "lr": lr, "shots": shots, "seed": seed}
                        try:
                            trials.append(parse_recipe(recipe).model_dump(mode="json"))
                        except ValidationError as e:
                            first = e.errors()[0]
                            where = ".".join(str(p) for p in first["loc"][1:])
                            raise SweepError("space", f"{method}/{mode}: {where}: {first['msg']}", recipe) from e
        if not trials:
            raise SweepError("space", "the search space is empty")
        return trials


MAX_TRIALS = 1000  # one request stores this many jobs at most


class SweepBudget(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_trials: int | None = Field(
        None, ge=1, le=MAX_TRIALS, description="Most trials; a larger grid keeps its first recipes (every seed of each)."
    )
    max_device_minutes: float | None = Field(
        None, gt=0, description="Most training minutes summed over trials; once spent, queued trials are cancelled."
    )


class PrunerSettings(BaseModel):
    """Optuna's SuccessiveHalvingPruner; rungs at min_resource * reduction_factor ** (rate + k) epochs."""

    model_config = ConfigDict(extra="forbid")

    min_resource: int | None = Field(
        None, ge=1, description="Epochs before the first rung; null: max(1, epochs // reduction_factor**3)."
    )
    reduction_factor: int = Field(3, ge=2, le=10, description="A trial passes a rung in the top 1/reduction_factor.")
    min_early_stopping_rate: int = Field(0, ge=0, le=5, description="Skips the first rungs.")
    enabled: bool = Field(True, description="false runs every trial to the end (the full grid).")


def judged_epochs(recipe: dict[str, Any]) -> int:
    """Epochs of a trial's last stage, the one successive halving judges."""
    return parse_recipe(recipe).resolved_epochs()


def trial_epochs(recipe: dict[str, Any]) -> int:
    """Epochs a trial trains when it is not stopped early (both stages of LayerNorm init)."""
    parsed = parse_recipe(recipe)
    epochs = parsed.resolved_epochs()
    return epochs + (parsed.init_epochs or epochs if parsed.layernorm == "init" else 0)


def trial_key(recipe: dict[str, Any]) -> tuple[str, str, float | None, int | None]:
    """The recipe a trial tries, without its seed: trials with the same key are averaged."""
    return recipe["method"], recipe.get("layernorm", "none"), recipe.get("lr"), recipe.get("shots")


# ------------------------------------------------------------------------------------ Optuna


def optuna_storage(db_url: str) -> Any:
    """Optuna's RDBStorage next to our tables (see the module docstring); one per URL and process."""
    return _optuna_storage(db_url)


@functools.cache
def _optuna_storage(db_url: str) -> Any:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = make_url(db_url)
    if url.get_backend_name() == "sqlite":
        path = Path(url.database or "clipadapt.db")
        return optuna.storages.RDBStorage(str(url.set(database=str(path.with_name(f"{path.stem}-optuna.db")))),
                                          engine_kwargs={"connect_args": {"timeout": 30}})
    with get_engine(db_url).begin() as conn:
        conn.execute(text(f"CREATE SCHEMA IF NOT EXISTS {OPTUNA_SCHEMA}"))
    return optuna.storages.RDBStorage(
        url.render_as_string(hide_password=False),
        engine_kwargs={"connect_args": {"options": f"-csearch_path={OPTUNA_SCHEMA}"}, "pool_pre_ping": True},
    )


def study_name(sweep_id: str) -> str:
    return f"clipadapt-sweep-{sweep_id}"


def _pruner(pruner: dict[str, Any], epochs: int) -> Any:
    import optuna

    settings = PrunerSettings(**pruner)
    if not settings.enabled:
        return optuna.pruners.NopPruner()
    return optuna.pruners.SuccessiveHalvingPruner(
        min_resource=settings.min_resource or max(1, epochs // settings.reduction_factor**3),
        reduction_factor=settings.reduction_factor,
        min_early_stopping_rate=settings.min_early_stopping_rate,
    )


def _study(db_url: str, sweep: Sweep) -> Any:
    import optuna

    return optuna.load_study(
        study_name=study_name(sweep.id),
        storage=optuna_storage(db_url),
        pruner=_pruner(sweep.pruner, max(judged_epochs(t) for t in sweep.space["trials"])),
    )


def _create_study(db_url: str, sweep_id: str, trials: Sequence[dict[str, Any]]) -> list[int]:
    """The sweep's study with one Optuna trial per grid point; returns their trial numbers."""
    import optuna

    study = optuna.create_study(storage=optuna_storage(db_url), study_name=study_name(sweep_id), direction="maximize")
    return enqueue_grid(study, trials)


def enqueue_grid(study: Any, trials: Sequence[dict[str, Any]]) -> list[int]:
    """One Optuna trial per grid point, its parameters fixed; returns their trial numbers."""
    from optuna.distributions import CategoricalDistribution

    names = ("method", "layernorm", "lr", "shots", "seed")
    distributions = {n: CategoricalDistribution(list(dict.fromkeys(t.get(n) for t in trials))) for n in names}
    numbers = []
    for recipe in trials:
        params = {n: recipe.get(n) for n in names}
        study.enqueue_trial(params)
        numbers.append(study.ask(fixed_distributions=distributions).number)
    return numbers


def trial_stop_rule(settings: Settings, sweep_id: str, trial_number: int) -> Any:
    """The early-stop rule (``core.jobs.runner.EarlyStopRule``) of one trial: report, then ask the pruner."""
    import optuna

    db_url = settings.resolved_database_url
    with transaction(db_url) as session:
        sweep = session.get(Sweep, sweep_id)
        if sweep is None or not PrunerSettings(**sweep.pruner).enabled:
            return None
        study = _study(db_url, sweep)
    return stop_rule(optuna.trial.Trial(study, _trial_id(db_url, sweep_id, trial_number)), f"sweep {sweep_id} trial {trial_number}")


def stop_rule(trial: Any, label: str) -> Any:
    """Report (best validation score so far, epochs of the last stage) to an Optuna trial and ask its pruner."""

    def rule(best_score: float, epochs: int) -> str | None:
        try:
            with warnings.catch_warnings():
                # A resumed trial (its worker died) reports the epochs before its checkpoint again;
                # Optuna keeps the first report and warns.
                warnings.filterwarnings("ignore", message=".*is already reported")
                trial.report(best_score, epochs)
            if trial.should_prune():
                return (f"successive halving stopped this sweep trial after {epochs} epochs of its last stage "
                        f"(its best validation score, {best_score:.4f}: accuracy with ties broken by loss, is not in the top of its rung)")
        except Exception as e:  # noqa: BLE001 - a pruner problem must not fail the trial: it runs on
            log.warning("%s: pruner unavailable: %s", label, e)
        return None

    return rule


def _trial_id(db_url: str, sweep_id: str, trial_number: int) -> int:
    storage = optuna_storage(db_url)
    return storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(study_name(sweep_id)), trial_number)


def _told_trials(db_url: str, sweep_id: str) -> set[int]:
    """Numbers of the study's finished trials, read at once: the recovery loop asks on every pass,
    for every ended trial of every active sweep."""
    from optuna.trial import TrialState

    storage = optuna_storage(db_url)
    study_id = storage.get_study_id_from_name(study_name(sweep_id))
    finished = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    return {t.number for t in storage.get_all_trials(study_id, deepcopy=False, states=finished)}


def _tell(db_url: str, sweep: Sweep, job: Job) -> None:
    """Record a finished trial in the study (once: a told trial is left alone)."""
    from optuna.trial import TrialState

    assert job.sweep_trial is not None
    if optuna_storage(db_url).get_trial(_trial_id(db_url, sweep.id, job.sweep_trial)).state.is_finished():
        return
    study = _study(db_url, sweep)
    if job.state == JobState.succeeded and job.val_metrics and "accuracy" in job.val_metrics:
        study.tell(job.sweep_trial, float(job.val_metrics["accuracy"]))
    elif job.state == JobState.pruned:
        study.tell(job.sweep_trial, state=TrialState.PRUNED)
    else:
        study.tell(job.sweep_trial, state=TrialState.FAIL)


# ------------------------------------------------------------------------------------ lifecycle


class SweepRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def get(self, sweep_id: str, *, owner: str | None = None, for_update: bool = False) -> Sweep | None:
        stmt = select(Sweep).where(Sweep.id == sweep_id)
        if owner is not None:
            stmt = stmt.where(Sweep.owner == owner)
        if for_update:
            stmt = stmt.with_for_update()
        return self.session.scalars(stmt).one_or_none()

    def list(self, *, owner: str, limit: int, offset: int) -> tuple[Sequence[Sweep], int]:
        count = self.session.scalar(select(func.count()).select_from(Sweep).where(Sweep.owner == owner)) or 0
        rows = self.session.scalars(
            select(Sweep).where(Sweep.owner == owner).order_by(Sweep.created_at.desc(), Sweep.id).limit(limit).offset(offset)
        ).all()
        return rows, count

    def trials(self, sweep_id: str, *, for_update: bool = False) -> Sequence[Job]:
        stmt = select(Job).where(Job.sweep_id == sweep_id).order_by(Job.sweep_trial)
        if for_update:
            stmt = stmt.with_for_update(of=Job)
        return self.session.scalars(stmt).all()

    def trial_seconds(self, sweep_id: str) -> dict[str, tuple[float, int]]:
        """Training seconds and epochs of each trial (from its per-epoch metrics)."""
        rows = self.session.execute(
            select(JobMetric.job_id, func.coalesce(func.sum(JobMetric.seconds), 0.0), func.count())
            .join(Job, Job.id == JobMetric.job_id)
            .where(Job.sweep_id == sweep_id)
            .group_by(JobMetric.job_id)
        ).all()
        return {job_id: (float(seconds), int(epochs)) for job_id, seconds, epochs in rows}

    def active_ids(self) -> list[str]:
        return list(self.session.scalars(select(Sweep.id).where(Sweep.state.in_((SweepState.running, SweepState.finishing)))))


def create_sweep(
    session: Session,
    settings: Settings,
    *,
    owner: str,
    dataset_id: str,
    base_model: str,
    base_model_spec: dict[str, Any],
    space: SweepSpace,
    budget: SweepBudget,
    pruner: PrunerSettings,
    name: str | None = None,
) -> tuple[Sweep, list[Job]]:
    """Store a sweep and its trials (queued jobs marked for dispatch, like POST /jobs); the caller
    commits, then dispatches the jobs."""
    trials = space.expand()
    grid_size = len(trials)
    if grid_size > MAX_TRIALS and budget.max_trials is None:
        raise SweepError("budget.max_trials", f"the space has {grid_size} trials, more than {MAX_TRIALS}; set budget.max_trials", grid_size)
    if budget.max_trials is not None and budget.max_trials < grid_size:
        per_recipe = len(space.seeds)
        keep = budget.max_trials // per_recipe * per_recipe
        if keep == 0:
            raise SweepError("budget.max_trials", f"each recipe runs {per_recipe} seeds; max_trials must be at least that", budget.max_trials)
        trials = trials[:keep]
    dataset = session.get(Dataset, dataset_id)
    for recipe in trials if dataset is not None else ():
        try:  # as POST /jobs does: a trial that could only fail is refused with the sweep
            check_schedule(parse_recipe(recipe), dataset.split_counts)
        except ScheduleError as e:
            raise SweepError("space", f"{recipe['method']}/{recipe['layernorm']} shots={recipe['shots']}: {e}", recipe) from e
    sweep = Sweep(
        owner=owner,
        name=name,
        state=SweepState.running,
        dataset_id=dataset_id,
        base_model=base_model,
        base_model_spec=base_model_spec,
        space={"request": space.model_dump(mode="json"), "trials": trials, "grid_size": grid_size},
        budget=budget.model_dump(mode="json"),
        pruner=pruner.model_dump(mode="json"),
    )
    session.add(sweep)
    session.flush()
    numbers = _create_study(settings.resolved_database_url, sweep.id, trials)
    repo = JobRepository(session)
    jobs = []
    for number, recipe in zip(numbers, trials, strict=True):
        label = f"{recipe['method']}/{recipe['layernorm']} lr={recipe['lr']} shots={recipe['shots']} seed={recipe['seed']}"
        jobs.append(repo.add(Job(
            owner=owner, name=f"{name or 'sweep'} #{number}: {label}", meta={"sweep_id": sweep.id},
            state=JobState.queued, dataset_id=dataset_id, base_model=base_model, base_model_spec=base_model_spec,
            recipe=recipe, dispatch_pending=True, sweep_id=sweep.id, sweep_trial=number,
        )))
    return sweep, jobs


def cancel_sweep(session: Session, sweep: Sweep) -> None:
    """Cancel every trial (queued ones at once, running ones after their current step)."""
    repo = JobRepository(session)
    for job in SweepRepository(session).trials(sweep.id, for_update=True):
        if job.state.active:
            repo.request_cancel(job)
    if sweep.state.active:
        sweep.state, sweep.finished_at = SweepState.cancelled, utcnow()


def trial_ended(settings: Settings, job_id: str) -> None:
    """A trial reached a final state: tell the pruner, then advance its sweep."""
    db_url = settings.resolved_database_url
    with transaction(db_url) as session:
        job = JobRepository(session).get(job_id)
        sweep = session.get(Sweep, job.sweep_id) if job and job.sweep_id else None
        if job is None or sweep is None or job.sweep_trial is None:
            return
        _tell(db_url, sweep, job)
        sweep_id = sweep.id
    if advance(settings, sweep_id) == SweepState.cancelled and all_trials_ended(db_url, sweep_id):
        drop_stage_cache(settings, sweep_id)  # advance drops it for sweeps that end by themselves


def all_trials_ended(db_url: str, sweep_id: str) -> bool:
    with transaction(db_url) as session:
        return not any(job.state.active for job in SweepRepository(session).trials(sweep_id))


def drop_stage_cache(settings: Settings, sweep_id: str) -> None:
    """Delete the sweep's shared LayerNorm-init stages once no trial can use them (its last trial
    ended). Idempotent; a failure leaves only unused objects behind, so it is logged, not raised."""
    from core.jobs.files import stage_cache_prefix
    from core.jobs.storage import StorageError, get_storage

    try:
        count = get_storage(settings).delete_prefix(stage_cache_prefix(sweep_id))
    except StorageError as e:
        log.warning("sweep %s: shared stages not deleted: %s", sweep_id, e)
        return
    if count:
        log.info("sweep %s: deleted %d shared stage(s)", sweep_id, count)


def leaderboard(trials: Sequence[Job], seconds: dict[str, tuple[float, int]]) -> list[dict[str, Any]]:
    """One row per recipe (its seeds averaged), best first: recipes whose every trial finished
    training rank above those with a stopped, failed or unfinished trial."""
    groups: dict[tuple, list[Job]] = {}
    for job in trials:
        groups.setdefault(trial_key(job.recipe), []).append(job)
    rows = []
    for (method, mode, lr, shots), jobs in groups.items():
        accuracies = [float(j.val_metrics["accuracy"]) for j in jobs if j.val_metrics and "accuracy" in j.val_metrics]
        succeeded = [j for j in jobs if j.state == JobState.succeeded]
        best = max(succeeded, key=lambda j: (j.val_metrics or {}).get("accuracy", -1.0), default=None)
        rows.append({
            "method": method, "layernorm": mode, "lr": lr, "shots": shots,
            "seeds": [j.recipe.get("seed") for j in jobs],
            "job_ids": [j.id for j in jobs],
            "states": [str(j.state) for j in jobs],
            "val_accuracy_mean": statistics.fmean(accuracies) if accuracies else None,
            "val_accuracy_std": statistics.pstdev(accuracies) if len(accuracies) > 1 else (0.0 if accuracies else None),
            "trainable_params": max((j.trainable_params for j in jobs if j.trainable_params is not None), default=None),
            "run_seconds": sum(seconds.get(j.id, (0.0, 0))[0] for j in jobs),
            "epochs_trained": sum(seconds.get(j.id, (0.0, 0))[1] for j in jobs),
            "stopped_early": any(j.state == JobState.pruned for j in jobs),
            "complete": len(succeeded) == len(jobs),
            "best_job_id": best.id if best else None,
        })
    rows.sort(key=lambda r: (r["complete"], r["best_job_id"] is not None,
                             -math.inf if r["val_accuracy_mean"] is None else r["val_accuracy_mean"]), reverse=True)
    return rows


def select_best(trials: Sequence[Job], seconds: dict[str, tuple[float, int]]) -> str | None:
    """The best trial by validation accuracy only: the best seed of the best recipe that has a
    succeeded trial (recipes with every seed succeeded first)."""
    for row in leaderboard(trials, seconds):
        if row["best_job_id"] is not None:
            return row["best_job_id"]
    return None


def _spend_budget(session: Session, sweep: Sweep, trials: Sequence[Job]) -> None:
    limit = sweep.budget.get("max_device_minutes")
    if limit is None:
        return
    spent = sum(s for s, _ in SweepRepository(session).trial_seconds(sweep.id).values()) / 60
    if spent < limit:
        return
    repo = JobRepository(session)
    for job in trials:
        if job.state == JobState.queued:
            repo.set_state(job, JobState.cancelled, f"sweep budget spent ({spent:.1f} of {limit} device-minutes)")


def advance(settings: Settings, sweep_id: str, *, score: bool = True) -> SweepState | None:
    """Move a sweep on; safe to call any number of times, from any process, at any moment.

    running: enforce the device-minute budget; once every trial ended, choose the best (validation
    only), move to finishing and delete the shared stages no trial needs any more. finishing: score
    the best trial's test split and succeed. Each step is one conditional transaction, so a process
    dying between them leaves the sweep in a state the next call continues from."""
    db_url = settings.resolved_database_url
    with transaction(db_url) as session:
        sweeps = SweepRepository(session)
        sweep = sweeps.get(sweep_id, for_update=True)
        if sweep is None or not sweep.state.active:
            return sweep.state if sweep else None
        trials_ended = False
        if sweep.state == SweepState.running:
            trials = sweeps.trials(sweep_id, for_update=True)
            _spend_budget(session, sweep, trials)
            if any(job.state.active for job in trials):
                return sweep.state
            best = select_best(trials, sweeps.trial_seconds(sweep_id))
            if best is None:
                sweep.state, sweep.finished_at = SweepState.failed, utcnow()
                sweep.error = {"code": "no_trial_succeeded", "message": "no trial of the sweep succeeded", "detail": None}
            else:
                sweep.best_job_id, sweep.state = best, SweepState.finishing
            trials_ended = True
        state, best_id = sweep.state, sweep.best_job_id
    if trials_ended:
        drop_stage_cache(settings, sweep_id)
    if state == SweepState.failed:
        return state
    if not score:
        return SweepState.finishing
    metrics = _score_test(settings, best_id)
    with transaction(db_url) as session:
        sweep = SweepRepository(session).get(sweep_id, for_update=True)
        if sweep is None or sweep.state != SweepState.finishing or sweep.best_job_id != best_id:
            return sweep.state if sweep else None  # another process finished it (or it was cancelled)
        job = JobRepository(session).get(best_id, for_update=True)
        if job is not None:
            job.test_metrics = metrics
        sweep.test_metrics = metrics
        sweep.state, sweep.finished_at = SweepState.succeeded, utcnow()
        log.info("sweep %s succeeded: best trial %s", sweep_id, best_id)
        return sweep.state


def _score_test(settings: Settings, job_id: str) -> dict[str, Any] | None:
    """The test-split metrics of a succeeded trial's artifact (None if the dataset has no test
    images). Loads torch: this runs in workers, the CLI and the recovery loop only."""
    from core.adapt.artifact import load_artifact
    from core.adapt.data import load_dataset
    from core.adapt.models import ModelSpec, load_base_model
    from core.adapt.recipe import parse_recipe as parse
    from core.adapt.trainer import score_split
    from core.jobs.files import archive_limits, local_artifact, local_dataset
    from core.adapt.runtime import resolve_device
    from core.jobs.runner import _jsonable
    from core.jobs.storage import get_storage

    with transaction(settings.resolved_database_url) as session:
        job = JobRepository(session).get(job_id)
        assert job is not None and job.artifact_key is not None and job.dataset is not None
        spec, key, recipe = job.base_model_spec, job.artifact_key, job.resolved_recipe or job.recipe
        archive, dataset_id = job.dataset.archive_key, job.dataset.id
    storage = get_storage(settings)
    device = str(resolve_device(settings.device))
    folder = local_dataset(storage, archive, settings.cache_dir, dataset_id, limits=archive_limits(settings))
    dataset = load_dataset(folder, verify_images=False)
    model = load_artifact(local_artifact(storage, key, settings.cache_dir, job_id), load_base_model(ModelSpec(**spec), device=device))
    return _jsonable(score_split(model, dataset, parse(recipe), "test", device)) or None


# Sweeps whose last step may still be in progress in a live process are left alone this long.
FINISHING_GRACE = timedelta(seconds=30)


def advance_sweeps(settings: Settings, submit: Any = None) -> list[str]:
    """The recovery loop's step: advance every active sweep (a trial cancelled while queued, a
    worker that died after a trial's end or while scoring the best). Returns the sweeps advanced."""
    db_url = settings.resolved_database_url
    with transaction(db_url) as session:
        active = [(s.id, s.state, s.updated_at) for s in session.scalars(
            select(Sweep).where(Sweep.state.in_((SweepState.running, SweepState.finishing)))
        )]
    moved = []
    for sweep_id, state, updated_at in active:
        if state == SweepState.finishing and updated_at > utcnow() - FINISHING_GRACE:
            continue  # its finishing process is probably still scoring
        try:
            with transaction(db_url) as session:
                ended = [j for j in SweepRepository(session).trials(sweep_id) if not j.state.active and j.sweep_trial is not None]
                told = _told_trials(db_url, sweep_id) if ended else set()
                for job in ended:
                    if job.sweep_trial not in told:
                        _tell(db_url, session.get(Sweep, sweep_id), job)
            if advance(settings, sweep_id) != state:
                moved.append(sweep_id)
        except Exception as e:  # noqa: BLE001 - one sweep's trouble must not stop the others
            log.warning("recovery: sweep %s not advanced: %s", sweep_id, e)
    return moved
