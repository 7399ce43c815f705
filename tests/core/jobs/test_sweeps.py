"""Sweeps: grid expansion, successive-halving pruning through the job runner, cancel, and a worker
dying between a sweep's steps (the recovery loop finishes it). Tiny model, tiny dataset."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from core.jobs import runner, sweeps
from core.jobs.catalog import load_catalog
from core.jobs.db import transaction
from core.jobs.models import JobState, SweepState
from core.jobs.repository import JobRepository
from core.jobs.runner import run_job
from core.jobs.sweeps import (
    PrunerSettings,
    SweepBudget,
    SweepError,
    SweepRepository,
    SweepSpace,
    advance,
    advance_sweeps,
    cancel_sweep,
    create_sweep,
    trial_stop_rule,
)
from core.settings import Settings

TINY = {"epochs": 3, "batch_size": 8, "feature_views": 1}


def test_presets_and_custom_spaces_expand_to_valid_recipes() -> None:
    paper = SweepSpace(preset="paper", recipe=TINY).expand()
    assert len(paper) == 13 and {(t["method"], t["layernorm"]) for t in paper} >= {("compacter", "init"), ("layernorm", "none")}
    quick = SweepSpace(preset="quick", lrs=[1e-3, None], seeds=[0, 1]).expand()
    assert len(quick) == 3 * 2 * 2 and [t["seed"] for t in quick[:2]] == [0, 1]  # seeds of a recipe adjacent
    # LayerNorm modes of methods that do not combine with LayerNorm are skipped, not duplicated.
    custom = SweepSpace(methods=["layernorm", "adapter"], layernorm=["none", "joint"]).expand()
    assert [(t["method"], t["layernorm"]) for t in custom] == [("layernorm", "none"), ("adapter", "none"), ("adapter", "joint")]
    with pytest.raises(ValueError, match="preset or methods"):
        SweepSpace(preset="quick", methods=["adapter"])
    with pytest.raises(ValueError, match="unknown method 'auto'"):
        SweepSpace(methods=["auto"])
    with pytest.raises(ValueError, match="cannot fix"):
        SweepSpace(preset="quick", recipe={"method": "full"})
    with pytest.raises(SweepError, match="epochs"):
        SweepSpace(preset="quick", recipe={"epochs": -1}).expand()


def test_the_pruner_ranks_by_accuracy_and_breaks_ties_by_validation_loss() -> None:
    def score(accuracy: float, loss: float | None, count: int = 40) -> float:
        return runner.ranking_score({"accuracy": accuracy, "loss": loss, "count": count})

    assert score(0.5, 0.9) > score(0.5, 1.2)  # a tie on 40 images: the lower loss ranks first
    assert score(0.525, 1e9) > score(0.5, 0.0)  # one image more beats any loss
    assert score(1.0, 1e9, count=1000) > score(0.999, 0.0, count=1000)
    assert score(0.5, None) == score(0.5, float("nan")) == 0.5  # metrics without a loss (older jobs)


@pytest.fixture
def settings(make_settings: Callable[..., Settings], database_url: str) -> Settings:
    return make_settings(database_url=database_url, checkpoint_every_s=0, job_lease_s=4)


@pytest.fixture
def make_sweep(settings: Settings, dataset_id: str) -> Callable[..., tuple[str, list[str]]]:
    def make(space: SweepSpace, pruner: PrunerSettings | None = None, budget: SweepBudget | None = None) -> tuple[str, list[str]]:
        entry = load_catalog()["clipadapt-tiny"]
        with transaction(settings.resolved_database_url) as session:
            sweep, jobs = create_sweep(
                session, settings, owner="alice", dataset_id=dataset_id, base_model=entry.name,
                base_model_spec=entry.spec(), space=space, budget=budget or SweepBudget(),
                pruner=pruner or PrunerSettings(min_resource=1, reduction_factor=3),
            )
            return sweep.id, [j.id for j in jobs]

    return make


def _sweep(settings: Settings, sweep_id: str):
    with transaction(settings.resolved_database_url) as session:
        repo = SweepRepository(session)
        sweep = repo.get(sweep_id)
        return sweep, list(repo.trials(sweep_id)), repo.trial_seconds(sweep_id)


def test_successive_halving_stops_a_weak_trial_and_the_sweep_selects_the_best(
    settings: Settings, make_sweep: Callable[..., tuple[str, list[str]]]
) -> None:
    sweep_id, (first, second) = make_sweep(SweepSpace(methods=["layernorm"], lrs=[5e-4, 1e-3], recipe=TINY))
    # Rungs at 1 and 3 epochs. The first trial (an earlier, strong one) reached 100% validation
    # accuracy at each rung: its reports go through the same rule the runner uses.
    rule = trial_stop_rule(settings, sweep_id, 0)
    assert [rule(1.0, step) for step in (1, 2, 3)] == [None, None, None]

    # The second trial cannot beat it at the first rung: it stops after one epoch of three.
    assert run_job(second, settings=settings) == JobState.pruned
    _, trials, seconds = _sweep(settings, sweep_id)
    pruned = next(t for t in trials if t.id == second)
    assert pruned.finished_at is not None and pruned.val_metrics is not None and pruned.artifact_key is None
    assert seconds[second][1] == 1 and pruned.test_metrics is None

    # The first trial trains to the end; the sweep then finishes: best by validation accuracy,
    # and only its test split is scored.
    assert run_job(first, settings=settings) == JobState.succeeded
    sweep, trials, seconds = _sweep(settings, sweep_id)
    assert sweep.state == SweepState.succeeded and sweep.best_job_id == first
    assert sweep.test_metrics is not None and sweep.test_metrics["count"] == 6
    assert {t.id: t.test_metrics is not None for t in trials} == {first: True, second: False}
    board = sweeps.leaderboard(trials, seconds)
    assert [row["stopped_early"] for row in board] == [False, True] and board[0]["complete"]
    assert board[0]["trainable_params"] > 0 and board[0]["epochs_trained"] == 3
    assert board[1]["trainable_params"] == board[0]["trainable_params"]  # known for the pruned trial too
    import optuna

    study = optuna.load_study(study_name=sweeps.study_name(sweep_id), storage=sweeps.optuna_storage(settings.resolved_database_url))
    assert [t.state.name for t in study.trials] == ["COMPLETE", "PRUNED"]


def test_trials_share_their_layernorm_init_stage_through_storage(
    settings: Settings, make_sweep: Callable[..., tuple[str, list[str]]]
) -> None:
    sweep_id, (probe, adapter) = make_sweep(
        SweepSpace(methods=["linear_probe", "adapter"], layernorm=["init"], recipe={**TINY, "epochs": 2, "init_epochs": 2}),
        PrunerSettings(enabled=False),
    )
    stages = settings.data_dir / "storage" / "sweeps" / sweep_id / "stages"
    assert run_job(probe, settings=settings) == JobState.succeeded
    stored = list(stages.glob("*.pt"))
    assert len(stored) == 1
    assert run_job(adapter, settings=settings) == JobState.succeeded
    with transaction(settings.resolved_database_url) as session:
        repo = JobRepository(session)
        metrics = {j: [(m.stage, m.epoch) for m in repo.metrics(j)] for j in (probe, adapter)}
        events = [e.message for e in repo.events(adapter)]
    # The second trial continued from the first one's init stage: it trained its own stage only.
    assert metrics == {probe: [(0, 1), (0, 2), (1, 1), (1, 2)], adapter: [(1, 1), (1, 2)]}
    assert any("stage 0 (layernorm_init) reused" in m for m in events)
    _, _, seconds = _sweep(settings, sweep_id)
    assert {j: seconds[j][1] for j in (probe, adapter)} == {probe: 4, adapter: 2}  # epochs trained
    # The sweep's last trial ended: no trial needs the stage any more.
    assert _sweep(settings, sweep_id)[0].state == SweepState.succeeded and not stages.exists()
    # An unreadable stage is trained again rather than failing the trial.
    stages.mkdir(parents=True)
    stored[0].write_bytes(b"not a stage")
    cache = runner.StorageStageCache(runner.get_storage(settings), sweep_id, None)
    assert cache.get(stored[0].stem) is None


def test_successive_halving_judges_a_layernorm_init_trial_on_its_last_stage_only(
    settings: Settings, make_sweep: Callable[..., tuple[str, list[str]]]
) -> None:
    sweep_id, (_, _, late) = make_sweep(  # layernorm, linear_probe, linear_probe after LN init
        SweepSpace(methods=["layernorm", "linear_probe"], layernorm=["none", "init"], recipe={**TINY, "init_epochs": 3})
    )
    rule = trial_stop_rule(settings, sweep_id, 0)  # an earlier trial at 100% at every rung (1 and 3 epochs)
    assert [rule(1.0, step) for step in (1, 2, 3)] == [None, None, None]
    # The probe after LayerNorm init trains its whole init stage (3 epochs, not judged), then is
    # judged at epoch 1 of its own stage and stopped there.
    assert run_job(late, settings=settings) == JobState.pruned
    with transaction(settings.resolved_database_url) as session:
        assert [(m.stage, m.epoch) for m in JobRepository(session).metrics(late)] == [(0, 1), (0, 2), (0, 3), (1, 1)]


def test_cancel_stops_every_trial(settings: Settings, make_sweep: Callable[..., tuple[str, list[str]]]) -> None:
    sweep_id, jobs = make_sweep(SweepSpace(preset="quick", recipe={**TINY, "epochs": 50}), PrunerSettings(enabled=False))
    result: dict[str, object] = {}
    thread = threading.Thread(target=lambda: result.setdefault("state", run_job(jobs[0], settings=settings)))
    thread.start()
    deadline = time.monotonic() + 60
    while not _sweep(settings, sweep_id)[2].get(jobs[0]):
        assert time.monotonic() < deadline, "the first trial did not start"
        time.sleep(0.05)
    with transaction(settings.resolved_database_url) as session:
        cancel_sweep(session, SweepRepository(session).get(sweep_id, for_update=True))
    thread.join(timeout=30)
    assert result["state"] == JobState.cancelled
    sweep, trials, _ = _sweep(settings, sweep_id)
    assert sweep.state == SweepState.cancelled and {t.state for t in trials} == {JobState.cancelled}
    # A queued trial delivered after the cancel does not train.
    assert run_job(jobs[1], settings=settings) is None
    assert advance(settings, sweep_id) == SweepState.cancelled


def test_a_worker_dying_between_sweep_steps_leaves_nothing_stuck(
    settings: Settings, make_sweep: Callable[..., tuple[str, list[str]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    sweep_id, jobs = make_sweep(SweepSpace(methods=["layernorm", "linear_probe"], recipe={**TINY, "epochs": 1}))
    # 1. The worker dies right after storing each trial's result, before telling the sweep.
    with monkeypatch.context() as m:
        m.setattr(runner, "_after_sweep_trial", lambda *args: None)
        assert [run_job(j, settings=settings) for j in jobs] == [JobState.succeeded, JobState.succeeded]
    assert _sweep(settings, sweep_id)[0].state == SweepState.running
    # 2. The recovery loop picks it up, and a worker dies while scoring the best trial's test split.
    with monkeypatch.context() as m:
        m.setattr(sweeps, "_score_test", lambda *args: (_ for _ in ()).throw(SystemExit("killed")))
        with pytest.raises(SystemExit):
            advance(settings, sweep_id)
    sweep = _sweep(settings, sweep_id)[0]
    assert sweep.state == SweepState.finishing and sweep.best_job_id in jobs
    # 3. While the finishing process may be alive, recovery leaves it alone; after the grace it finishes it.
    assert advance_sweeps(settings) == []
    monkeypatch.setattr(sweeps, "FINISHING_GRACE", sweeps.timedelta(0))
    assert advance_sweeps(settings) == [sweep_id]
    sweep, trials, _ = _sweep(settings, sweep_id)
    assert sweep.state == SweepState.succeeded and sweep.test_metrics["count"] == 6
    import optuna

    study = optuna.load_study(study_name=sweeps.study_name(sweep_id), storage=sweeps.optuna_storage(settings.resolved_database_url))
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]  # recovery told the pruner
    assert advance_sweeps(settings) == [] and advance(settings, sweep_id) == SweepState.succeeded  # idempotent


def test_device_minute_budget_cancels_queued_trials(
    settings: Settings, make_sweep: Callable[..., tuple[str, list[str]]]
) -> None:
    sweep_id, jobs = make_sweep(
        SweepSpace(methods=["layernorm"], lrs=[1e-3, 5e-4, 1e-4], recipe={**TINY, "epochs": 1}),
        budget=SweepBudget(max_trials=2, max_device_minutes=1e-6),
    )
    assert len(jobs) == 2  # max_trials keeps the first recipes
    assert run_job(jobs[0], settings=settings) == JobState.succeeded
    sweep, trials, _ = _sweep(settings, sweep_id)
    assert trials[1].state == JobState.cancelled
    with transaction(settings.resolved_database_url) as session:
        assert "sweep budget spent" in JobRepository(session).events(jobs[1])[-1].message
    assert sweep.state == SweepState.succeeded and sweep.best_job_id == jobs[0]


def test_a_trial_whose_worker_stops_mid_training_resumes_and_the_sweep_completes(
    settings: Settings, make_sweep: Callable[..., tuple[str, list[str]]]
) -> None:
    sweep_id, (job_id,) = make_sweep(SweepSpace(methods=["linear_probe"], recipe={**TINY, "epochs": 6}))
    interrupt = threading.Event()
    result: dict[str, object] = {}
    thread = threading.Thread(target=lambda: result.setdefault("state", run_job(job_id, settings=settings, interrupt=interrupt)))
    thread.start()
    deadline = time.monotonic() + 60
    while _sweep(settings, sweep_id)[2].get(job_id, (0, 0))[1] < 2:
        assert time.monotonic() < deadline, "the trial did not train"
        time.sleep(0.02)
    interrupt.set()  # the worker goes away mid-trial: the job is re-queued with its checkpoint
    thread.join(timeout=30)
    assert result["state"] == JobState.queued and _sweep(settings, sweep_id)[0].state == SweepState.running
    # Another worker resumes it: it reports the epochs before its checkpoint to the pruner again
    # (ignored by Optuna), trains the rest, and the sweep finishes.
    assert run_job(job_id, settings=settings) == JobState.succeeded
    sweep, trials, seconds = _sweep(settings, sweep_id)
    assert sweep.state == SweepState.succeeded and sweep.best_job_id == job_id and seconds[job_id][1] == 6
    assert trials[0].attempts == 2


def test_cli_sweep_writes_trials_and_scores_the_best(tmp_path, example_zip) -> None:
    import json

    from typer.testing import CliRunner

    from core.cli import app as cli

    out = tmp_path / "sweep"
    result = CliRunner().invoke(cli, [
        "sweep", "--data", str(example_zip), "--out", str(out), "--model-config", "core/model_configs/clipadapt-tiny.json",
        "--method", "linear_probe", "--lr", "1e-3", "--lr", "1e-4", "--epochs", "2", "--batch-size", "8", "--json",
    ])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["trials"] == 2 and report["epochs_full_grid"] == 4 and report["test_metrics"]["count"] == 6
    assert (out / "trials" / str(report["best_trial"]) / "manifest.json").exists()
    assert json.loads((out / "sweep.json").read_text())["best_recipe"] == report["best_recipe"]
    bad = CliRunner().invoke(cli, ["sweep", "--data", str(example_zip), "--out", str(out), "--model-config",
                                   "core/model_configs/clipadapt-tiny.json", "--method", "auto"])
    assert bad.exit_code == 2 and "unknown method 'auto'" in bad.output
