#!/usr/bin/env python3
"""The paper in miniature: a Table-1-style grid on the starter model's downstream tasks.

Every method x LayerNorm mode (none / joint / init, where the method takes one) x shots x seeds on each
task of `core/starter/tasks.py` (similar, shifted, dissimilar to pretraining), with zero-shot as the
reference and `auto`'s choice beside them. Hyperparameters are the paper's (appendix A.3: AdamW 5e-4,
cosine, 100 epochs up to 16 shots, validation of `shots` images per class, best validation epoch kept)
unless `--epochs` says otherwise. Accuracy is measured on each task's fixed test split.

Runs are appended to `OUT/runs.jsonl` as they finish, so an interrupted grid resumes where it stopped
(runs already there are skipped); the summary (`OUT/README.md`, tables of mean +- std over seeds, and
PNG plots) is rewritten at the end, or alone with `--summarize`.

    .venv/bin/python scripts/reproduce.py                      # the full grid (about 4.5 hours on 2 cores; --tasks splits it)
    .venv/bin/python scripts/reproduce.py --shots 4 --seeds 0  # a slice
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

REPO = Path(__file__).resolve().parent.parent
MODES = ("none", "joint", "init")


def recipes(methods: list[str]) -> list[dict[str, Any]]:
    """Every method with every LayerNorm mode it combines with."""
    from core.adapt.methods import METHODS

    out = []
    for name in methods:
        config = METHODS[name].config
        for mode in MODES if config.supports_layernorm else ("none",):
            out.append({"method": name, "layernorm": mode})
    return out


def label(recipe: dict[str, Any]) -> str:
    if recipe["method"] == "auto":
        return "auto"
    return recipe["method"] + ("" if recipe["layernorm"] == "none" else f" + LN {recipe['layernorm']}")


def load_runs(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_grid(args: argparse.Namespace) -> None:
    from tqdm import tqdm

    from core.adapt.data import load_dataset
    from core.adapt.models import ModelSpec, load_base_model
    from core.adapt.predictor import zero_shot_model
    from core.adapt.methods.base import paper_epochs
    from core.adapt.recipe import parse_recipe
    from core.adapt.data import ImageSamples, build_transforms
    from core.adapt.runtime import resolve_device
    from core.adapt.trainer import evaluate, train
    from core.jobs.catalog import load_catalog
    from core.starter.tasks import TASKS, write_task

    entry = load_catalog("").get(args.model)
    spec = ModelSpec(**entry.spec()) if entry and not args.pretrained else ModelSpec(name=args.model, pretrained=args.pretrained)
    base = load_base_model(spec)
    device = resolve_device(None)
    runs_path = args.out / "runs.jsonl"
    done = {(r["task"], r["label"], r["shots"], r["seed"]) for r in load_runs(runs_path)}
    grid = [dict(r) for r in recipes(args.methods)] + ([{"method": "auto", "layernorm": "none"}] if args.auto else [])
    # Seeds outermost: an interrupted grid still holds every cell, with fewer seeds.
    todo = [(task, recipe, shots, seed) for seed in args.seeds for task in args.tasks for shots in args.shots
            for recipe in grid if (task, label(recipe), shots, seed) not in done]
    zero_shot_todo = [task for task in args.tasks if (task, "zero_shot", 0, 0) not in done]
    args.out.mkdir(parents=True, exist_ok=True)

    with tempfile.TemporaryDirectory(prefix="clipadapt-reproduce-") as tmp, runs_path.open("a") as log:
        datasets = {}
        for task in args.tasks:
            folder = write_task(task, Path(tmp) / task, train_per_class=2 * max(args.shots), test_per_class=args.test_per_class)
            datasets[task] = load_dataset(folder)

        def record(row: dict[str, Any]) -> None:
            log.write(json.dumps(row) + "\n")
            log.flush()

        for task in zero_shot_todo:
            dataset = datasets[task]
            model = zero_shot_model(base, dataset.classnames)
            _, eval_tf = build_transforms(**base.preprocess)
            test = [s for s in dataset.samples if s.split == "test"]
            metrics = evaluate(model, ImageSamples(test, eval_tf), device)
            record({"task": task, "label": "zero_shot", "method": "zero_shot", "layernorm": "none", "shots": 0, "seed": 0,
                    "test_accuracy": metrics["accuracy"], "trainable_params": 0, "seconds": 0.0})

        for task, recipe, shots, seed in tqdm(todo, desc="grid", unit="run", file=sys.stderr):
            # Every method gets the paper's schedule, LoRA included (its own default is CLIP-LoRA's
            # 500 x shots steps, up to 16x more here), so that rows compare at equal steps.
            epochs = args.epochs if args.epochs is not None else paper_epochs(shots)
            fields = {**recipe, "shots": shots, "seed": seed, "epochs": epochs}
            started = time.monotonic()
            result = train(base, datasets[task], parse_recipe(fields), device=device)
            best = max((h for h in result.history if h["best"]), key=lambda h: (h["stage"], h["epoch"]), default=None)
            record({
                "task": task, "label": label(recipe), "method": recipe["method"], "layernorm": recipe["layernorm"],
                "shots": shots, "seed": seed, "model": args.model, "epochs": epochs,
                "test_accuracy": result.test_metrics["accuracy"], "val_accuracy": result.val_metrics.get("accuracy"),
                "trainable_params": result.trainable_params, "seconds": time.monotonic() - started,
                "best_epoch": best and {"stage": best["stage"], "epoch": best["epoch"]},
                "picked": result.auto_decision["picked"] if result.auto_decision else None,
                "zero_shot_val_accuracy": result.auto_decision["zero_shot_val_accuracy"] if result.auto_decision else None,
            })


# --------------------------------------------------------------------------------------- summary


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def cell(values: list[float], seeds: int = 1) -> str:
    """Mean ± std in %; marked † when fewer than `seeds` runs are in (an interrupted grid)."""
    if not values:
        return ""
    mean, std = mean_std(values)
    spread = f" ± {100 * std:.1f}" if len(values) > 1 else ""
    return f"{100 * mean:.1f}{spread}" + ("†" if len(values) < seeds else "")


def summarize(out: Path) -> str:
    from core.starter.tasks import TASKS

    runs = load_runs(out / "runs.jsonl")
    by = defaultdict(list)
    for r in runs:
        by[(r["task"], r["label"], r["shots"])].append(r)
    tasks = [t for t in TASKS if any(r["task"] == t for r in runs)]
    shots = sorted({r["shots"] for r in runs if r["shots"]})
    labels = list(dict.fromkeys(r["label"] for r in runs if r["label"] not in ("zero_shot", "auto")))
    seeds = sorted({r["seed"] for r in runs if r["shots"]})
    # Rows written before the model was recorded come from the starter.
    models = ", ".join(sorted({Path(r.get("model", "clipadapt-starter")).name for r in runs if r["shots"]}))
    lines = [
        f"# The paper in miniature: results on {models}",
        "",
        "Written by `scripts/reproduce.py` (do not edit by hand). Test accuracy in %, mean ± std over "
        f"seeds {', '.join(map(str, seeds))} (k-shot samples and initialization; † marks a cell with fewer, "
        "from an interrupted grid: rerunning the script resumes it), "
        "paper hyperparameters (appendix A.3: AdamW, cosine, 100 epochs, best validation epoch; learning "
        "rate 5e-4, full fine-tuning 1e-5) for every method; LoRA keeps CLIP-LoRA's learning rate (2e-4) but "
        "trains the paper's 100 epochs, not its 500 x shots steps. Tasks: "
        + "; ".join(f"`{t}` ({TASKS[t].similarity}: {TASKS[t].description})" for t in tasks) + ".",
        "",
    ]
    for task in tasks:
        zero = [r["test_accuracy"] for r in runs if r["task"] == task and r["label"] == "zero_shot"]
        lines += [f"## `{task}` ({TASKS[task].similarity})", "",
                  "| recipe | trainable | " + " | ".join(f"{k}-shot" for k in shots) + " |",
                  "|---|---|" + "---|" * len(shots),
                  f"| zero-shot (80 templates) | 0 | " + " | ".join(cell(zero) for _ in shots) + " |"]
        for lab in labels:
            rows = [by[(task, lab, k)] for k in shots]
            params = next((r[0]["trainable_params"] for r in rows if r), 0)
            best = {k: max(labels, key=lambda l: mean_std([r["test_accuracy"] for r in by[(task, l, k)]] or [0])[0]) for k in shots}
            cells = []
            for k, row in zip(shots, rows):
                text = cell([r["test_accuracy"] for r in row], len(seeds))
                cells.append(f"**{text}**" if text and best[k] == lab else text)
            lines.append(f"| {lab} | {params:,} | " + " | ".join(cells) + " |")
        autos = [by[(task, "auto", k)] for k in shots]
        if any(autos):
            picks = [", ".join(sorted({r["picked"] for r in row})) for row in autos]
            lines.append("| auto | | " + " | ".join(f"{cell([r['test_accuracy'] for r in row], len(seeds))} ({p})" for row, p in zip(autos, picks)) + " |")
        lines.append("")
    lines += ["![accuracy against shots](accuracy_vs_shots.png)", "", "![LayerNorm modes](layernorm_modes.png)", ""]
    text = "\n".join(lines)
    (out / "README.md").write_text(text)
    plot(out, runs, tasks, shots)
    return text


def plot(out: Path, runs: list[dict[str, Any]], tasks: list[str], shots: list[int]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    methods = list(dict.fromkeys(r["method"] for r in runs if r["method"] not in ("zero_shot", "auto")))
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.6), sharey=True, squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for method in methods:
            means = [np.mean([r["test_accuracy"] for r in runs if r["task"] == task and r["method"] == method
                              and r["layernorm"] == "none" and r["shots"] == k] or [np.nan]) for k in shots]
            ax.plot(shots, 100 * np.array(means), marker="o", label=method)
        zero = [r["test_accuracy"] for r in runs if r["task"] == task and r["label"] == "zero_shot"]
        if zero:
            ax.axhline(100 * zero[0], color="grey", linestyle="--", label="zero-shot")
        ax.set_xscale("log", base=2)
        ax.set_xlim(min(shots) / 1.4, max(shots) * 1.4)  # a task with no trained run yet has no data to scale by
        ax.set_xticks(shots, [str(k) for k in shots])
        ax.set_title(task)
        ax.set_xlabel("shots per class")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("test accuracy (%)")
    axes[0][-1].legend(fontsize=8, frameon=False, loc="upper left")  # the dissimilar task stays low
    fig.tight_layout()
    fig.savefig(out / "accuracy_vs_shots.png", dpi=100)
    plt.close(fig)

    combinable = [m for m in methods if any(r["method"] == m and r["layernorm"] != "none" for r in runs)]
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.6), sharey=True, squeeze=False)
    width = 0.27
    for ax, task in zip(axes[0], tasks):
        for i, mode in enumerate(MODES):
            means = [np.mean([r["test_accuracy"] for r in runs if r["task"] == task and r["method"] == m
                              and r["layernorm"] == mode] or [np.nan]) for m in combinable]
            ax.bar(np.arange(len(combinable)) + (i - 1) * width, 100 * np.array(means), width, label=f"LN {mode}")
        ax.set_xticks(np.arange(len(combinable)), combinable, rotation=30, ha="right", fontsize=8)
        ax.set_title(f"{task} (mean over shots and seeds)")
        ax.grid(alpha=0.3, axis="y")
    axes[0][0].set_ylabel("test accuracy (%)")
    axes[0][-1].legend(fontsize=8, frameon=False)
    fig.tight_layout()
    fig.savefig(out / "layernorm_modes.png", dpi=100)
    plt.close(fig)


def main() -> None:
    from core.adapt.methods import METHODS
    from core.starter.tasks import TASKS

    trained = [m for m in METHODS if m != "zero_shot"]
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "results")
    parser.add_argument("--model", default="clipadapt-starter", help="a catalog name, an open_clip architecture or a model-config JSON")
    parser.add_argument("--pretrained", default=None, help="weights for --model when it is not a catalog name")
    parser.add_argument("--tasks", nargs="+", choices=list(TASKS), default=list(TASKS))
    parser.add_argument("--methods", nargs="+", choices=trained, default=trained)
    parser.add_argument("--shots", nargs="+", type=int, default=[1, 4, 16])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=None, help="default: the paper's (100 up to 16 shots)")
    parser.add_argument("--test-per-class", type=int, default=30)
    parser.add_argument("--no-auto", dest="auto", action="store_false", help="skip auto's choice")
    parser.add_argument("--summarize", action="store_true", help="only rewrite the summary from runs.jsonl")
    args = parser.parse_args()
    if not args.summarize:
        run_grid(args)
    print(summarize(args.out))


if __name__ == "__main__":
    main()
