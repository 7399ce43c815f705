#!/usr/bin/env python3
"""Successive halving against the full grid, on the starter model's downstream tasks.

For each task (core/starter/tasks.py: restyled, outlines, greek) it runs the same sweep twice with
``core.jobs.local_sweep`` (the code behind ``clipadapt sweep``): once with the pruner off (the full
grid) and once with Optuna's SuccessiveHalvingPruner, then prints summed trial epochs (compute),
the best validation accuracy each reached, the test accuracy of the recipe each selected (test is
scored for the selected trial only), and the test accuracy of ``auto``'s choice on the same split.
Target: successive halving within 1 point of the grid's best validation accuracy at <= 40% of its
epochs. Both count the epochs they train: trials that share a LayerNorm-init stage train it once, in
the grid as in halving (the "unshared" column is the grid without that). A printed table, not a test.

Usage:
  python scripts/sweep_benchmark.py                                    # clipadapt-starter if its files exist, else clipadapt-tiny
  python scripts/sweep_benchmark.py --model /work/pretrain-run/clipadapt-starter   # a folder with <name>.json + weights.safetensors
  python scripts/sweep_benchmark.py --tasks greek --preset quick --lrs 1e-3,5e-4 --epochs 9
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.adapt.data import load_dataset  # noqa: E402
from core.adapt.models import ModelSpec, load_base_model  # noqa: E402
from core.adapt.recipe import parse_recipe  # noqa: E402
from core.adapt.trainer import train  # noqa: E402
from core.jobs.catalog import load_catalog  # noqa: E402
from core.jobs.local_sweep import run_local_sweep  # noqa: E402
from core.jobs.sweeps import PrunerSettings, SweepSpace  # noqa: E402
from core.starter.tasks import TASKS, write_task  # noqa: E402


def model_spec(model: str | None) -> ModelSpec:
    """A folder holding <name>.json and weights.safetensors (the starter's layout), a catalog name,
    or (default) the catalog's clipadapt-starter when its files exist, else clipadapt-tiny."""
    if model is not None and Path(model).is_dir():
        folder = Path(model)
        config = next(p for p in folder.glob("*.json") if p.name not in ("manifest.json", "model_card.json"))
        return ModelSpec(name=str(config), pretrained=str(folder / "weights.safetensors"))
    catalog = load_catalog()
    if model is None:
        starter = catalog.get("clipadapt-starter")
        model = "clipadapt-starter" if starter and Path(starter.model).exists() and starter.pretrained and Path(starter.pretrained).exists() else "clipadapt-tiny"
    return ModelSpec(**catalog[model].spec())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="folder with <name>.json + weights.safetensors, or a catalog name")
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--preset", default="paper", choices=["paper", "quick"])
    parser.add_argument("--lrs", default="1e-3,1e-4", help="comma-separated; 'default' is each method's")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--shots", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=27, help="27 = 3^3: rungs at 1, 3, 9 epochs with reduction factor 3")
    parser.add_argument("--reduction-factor", type=int, default=3)
    parser.add_argument("--min-resource", type=int, default=None)
    parser.add_argument("--train-per-class", type=int, default=16, help="pool that train and val shots come from")
    parser.add_argument("--test-per-class", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    logging.disable(logging.WARNING)

    spec = model_spec(args.model)
    base = load_base_model(spec, device=args.device)
    lrs = [None if x == "default" else float(x) for x in args.lrs.split(",")]
    space = SweepSpace(preset=args.preset, lrs=lrs, shots=[args.shots], seeds=[int(s) for s in args.seeds.split(",")],
                       recipe={"epochs": args.epochs, "batch_size": args.batch_size})
    pruner = PrunerSettings(reduction_factor=args.reduction_factor, min_resource=args.min_resource)
    print(f"model {spec.name} ({spec.pretrained or 'random weights'}), {len(space.expand())} trials x {args.epochs} epochs "
          f"(LayerNorm-init recipes train twice that), {args.shots} shots, device {args.device}", flush=True)

    rows = []
    with tempfile.TemporaryDirectory(prefix="clipadapt-sweep-bench-") as tmp:
        for name in args.tasks.split(","):
            folder = write_task(name, Path(tmp) / name, train_per_class=args.train_per_class, test_per_class=args.test_per_class)
            dataset = load_dataset(folder)
            runs = {}
            for label, enabled in (("grid", False), ("halving", True)):
                started = time.monotonic()
                sweep = run_local_sweep(base, dataset, space, pruner=pruner.model_copy(update={"enabled": enabled}),
                                        out=Path(tmp) / f"{name}-{label}", device=args.device)
                best = sweep.best()
                runs[label] = {
                    "epochs": sweep.epochs_trained,
                    "unshared": sweep.epochs_full_grid,
                    "val": best.val_metrics["accuracy"] if best else float("nan"),
                    "test": (sweep.test_metrics or {}).get("accuracy", float("nan")),
                    "recipe": f"{best.recipe['method']}/{best.recipe['layernorm']} lr={best.recipe['lr']}" if best else "-",
                    "pruned": sum(t.state == "pruned" for t in sweep.trials),
                    "seconds": time.monotonic() - started,
                }
                print(f"  {name} {label}: {runs[label]}", flush=True)
            auto = train(base, dataset, parse_recipe({"method": "auto", "shots": args.shots, "epochs": args.epochs,
                                                     "batch_size": args.batch_size}), device=args.device)
            rows.append((name, runs, auto))

    print()
    # Epochs trained; trials that share a LayerNorm-init stage train it once, in the grid too.
    # "unshared" is what the grid would train without that (every trial all of its stages).
    header = (f"{'task':<9} {'unshared':>8} {'grid epochs':>11} {'SH epochs':>9} {'share':>6} {'grid best val':>13} {'SH best val':>11} "
              f"{'gap (pt)':>8} {'pruned':>6}  {'SH selected (test acc)':<40} {'grid selected (test acc)':<40} auto's choice (test acc)")
    print(header)
    print("-" * len(header))
    for name, runs, auto in rows:
        grid, sh = runs["grid"], runs["halving"]
        share = sh["epochs"] / grid["epochs"]
        gap = 100 * (grid["val"] - sh["val"])
        auto_test = (auto.test_metrics or {}).get("accuracy", float("nan"))
        auto_pick = auto.auto_decision["picked"] if auto.auto_decision else auto.recipe.method
        sh_pick, grid_pick = f"{sh['recipe']} ({sh['test']:.4f})", f"{grid['recipe']} ({grid['test']:.4f})"
        print(f"{name:<9} {grid['unshared']:>8} {grid['epochs']:>11} {sh['epochs']:>9} {share:>6.1%} {grid['val']:>13.4f} {sh['val']:>11.4f} "
              f"{gap:>8.2f} {sh['pruned']:>6}  {sh_pick:<40} {grid_pick:<40} {auto_pick} ({auto_test:.4f})")
    ok = all(runs["halving"]["epochs"] <= 0.4 * runs["grid"]["epochs"] and runs["grid"]["val"] - runs["halving"]["val"] <= 0.01
             for _, runs, _ in rows)
    print(f"\ntarget (within 1 point of the grid's best validation accuracy at <= 40% of its epochs) on every task: {'met' if ok else 'NOT met'}")


if __name__ == "__main__":
    main()
