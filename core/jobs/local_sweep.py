"""A sweep run in this process, without the service (``clipadapt sweep``, scripts/sweep_benchmark.py).

The same grid, the same Optuna ``SuccessiveHalvingPruner`` and the same early-stop rule as the
service's sweeps (``core.jobs.sweeps``), with Optuna's in-memory storage and trials trained one
after another. Each succeeded trial's artifact is written under ``out/trials/<number>``; only the
selected best is scored on the test split.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.jobs.models import Job, JobState
from core.jobs.runner import EarlyStopTracker, _jsonable
from core.jobs.sweeps import (
    PrunerSettings,
    SweepBudget,
    SweepSpace,
    enqueue_grid,
    judged_epochs,
    leaderboard,
    select_best,
    stop_rule,
    trial_epochs,
)


@dataclass
class LocalSweep:
    trials: list[Job] = field(default_factory=list)  # transient Job rows: the leaderboard's input
    seconds: dict[str, tuple[float, int]] = field(default_factory=dict)  # per trial: seconds, epochs
    best_job_id: str | None = None
    test_metrics: dict[str, Any] | None = None
    grid_size: int = 0
    epochs_full_grid: int = 0

    @property
    def epochs_trained(self) -> int:
        return sum(epochs for _, epochs in self.seconds.values())

    def leaderboard(self) -> list[dict[str, Any]]:
        return leaderboard(self.trials, self.seconds)

    def best(self) -> Job | None:
        return next((t for t in self.trials if t.id == self.best_job_id), None)


class _TrialCallbacks:
    """TrainCallbacks of one trial: counts epochs, keeps the best validation metrics and stops when
    the early-stop rule says so (what core.jobs.runner.JobCallbacks does for jobs)."""

    def __init__(self, rule: Callable[[float, int], str | None] | None, on_epoch: Callable[[], None]) -> None:
        self.early_stop, self.on_epoch = EarlyStopTracker(rule), on_epoch
        self.epochs_done = 0  # epochs trained (a reused stage's are not)
        self.best_val: dict[str, Any] | None = None
        self.trainable_params: int | None = None  # the last stage's count, also when stopped early

    def on_stage_start(self, stage: int, name: str, epochs: int) -> None:
        pass

    def on_epoch_end(self, report: Any) -> None:
        self.epochs_done += 1
        if report.best:
            self.best_val = report.val
        if report.final_stage:
            self.trainable_params = report.trainable_params
        self.early_stop.epoch_end(report)
        self.on_epoch()

    def on_message(self, message: str) -> None:
        pass

    def should_stop(self) -> bool:
        return self.early_stop.stop_reason is not None

    def on_checkpoint(self, make: Any) -> None:
        pass


def run_local_sweep(
    base: Any,
    dataset: Any,
    space: SweepSpace,
    *,
    budget: SweepBudget | None = None,
    pruner: PrunerSettings | None = None,
    out: Path | None = None,
    device: str | None = None,
    on_update: Callable[[LocalSweep], None] | None = None,
) -> LocalSweep:
    import optuna
    from optuna.trial import TrialState

    from core.adapt.artifact import load_artifact, save_artifact
    from core.adapt.recipe import parse_recipe
    from core.adapt.trainer import MemoryStageCache, TrainingCancelled, TrainingDiverged, score_split, train
    from core.jobs.sweeps import _pruner

    budget, pruner = budget or SweepBudget(), pruner or PrunerSettings()
    recipes = space.expand()
    sweep = LocalSweep(grid_size=len(recipes))
    if budget.max_trials is not None:
        recipes = recipes[: max(budget.max_trials // len(space.seeds), 1) * len(space.seeds)]
    sweep.epochs_full_grid = sum(trial_epochs(r) for r in recipes)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(storage=storage, study_name="local", direction="maximize",
                                pruner=_pruner(pruner.model_dump(), max(judged_epochs(r) for r in recipes)))
    numbers = enqueue_grid(study, recipes)
    study_id = storage.get_study_id_from_name("local")
    sweep.trials = [Job(id=f"trial-{n}", recipe=r, state=JobState.queued, sweep_trial=n) for n, r in zip(numbers, recipes)]
    notify = (lambda: on_update(sweep)) if on_update else (lambda: None)
    spent, stages = 0.0, MemoryStageCache()
    for job in sweep.trials:
        if budget.max_device_minutes is not None and spent / 60 >= budget.max_device_minutes:
            job.state = JobState.cancelled
            study.tell(job.sweep_trial, state=TrialState.FAIL)
            continue
        job.state = JobState.running
        trial = optuna.trial.Trial(study, storage.get_trial_id_from_study_id_trial_number(study_id, job.sweep_trial))
        rule = stop_rule(trial, job.id) if pruner.enabled else None
        started = time.monotonic()
        callbacks = _TrialCallbacks(rule, lambda: None)
        callbacks.on_epoch = lambda job=job, started=started, callbacks=callbacks: _progress(sweep, job, started, callbacks, notify)
        notify()
        try:
            result = train(base, dataset, parse_recipe(job.recipe), callbacks=callbacks, device=device, score_test=False,
                           stage_cache=stages)
        except TrainingCancelled:
            job.state, job.val_metrics = JobState.pruned, _jsonable(callbacks.best_val)
            job.trainable_params = callbacks.trainable_params
            study.tell(job.sweep_trial, state=TrialState.PRUNED)
        except (TrainingDiverged, ValueError) as e:  # what a job records as `diverged` / `invalid_request`
            job.state, job.val_metrics, job.error = JobState.failed, _jsonable(callbacks.best_val), {"message": str(e)}
            study.tell(job.sweep_trial, state=TrialState.FAIL)
        else:
            job.state, job.val_metrics = JobState.succeeded, _jsonable(result.val_metrics)
            job.trainable_params = int(result.trainable_params)
            job.resolved_recipe = result.recipe.model_dump(mode="json")
            study.tell(job.sweep_trial, float(result.val_metrics.get("accuracy", 0.0)))
            if out is not None:
                save_artifact(result, out / "trials" / str(job.sweep_trial))
            del result
        elapsed = time.monotonic() - started
        spent += elapsed
        sweep.seconds[job.id] = (elapsed, callbacks.epochs_done)
        notify()

    sweep.best_job_id = select_best(sweep.trials, sweep.seconds)
    best = sweep.best()
    if best is not None and out is not None:
        model = load_artifact(out / "trials" / str(best.sweep_trial), base)
        sweep.test_metrics = _jsonable(score_split(model, dataset, parse_recipe(best.recipe), "test", device)) or None
        (out / "sweep.json").write_text(json.dumps(summary(sweep), indent=2))
    notify()
    return sweep


def _progress(sweep: LocalSweep, job: Job, started: float, callbacks: _TrialCallbacks, notify: Callable[[], None]) -> None:
    sweep.seconds[job.id] = (time.monotonic() - started, callbacks.epochs_done)
    job.val_metrics = _jsonable(callbacks.best_val)
    notify()


def summary(sweep: LocalSweep) -> dict[str, Any]:
    best = sweep.best()
    return {
        "grid_size": sweep.grid_size,
        "trials": len(sweep.trials),
        "epochs_trained": sweep.epochs_trained,
        "epochs_full_grid": sweep.epochs_full_grid,
        "best_trial": best.sweep_trial if best else None,
        "best_recipe": best.recipe if best else None,
        "test_metrics": sweep.test_metrics,
        "leaderboard": sweep.leaderboard(),
    }
