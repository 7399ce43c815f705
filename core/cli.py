"""`clipadapt`: run the adaptation engine locally (no service needed).

Long work shows a progress bar on stderr; `--json` prints one machine-readable JSON document on stdout.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from core.jobs.keys import app as keys_app

app = typer.Typer(help="Adapt CLIP models to image classification (methods of 'How to adapt your "
                  "large-scale vision-and-language model').", no_args_is_help=True, add_completion=False)

app.add_typer(keys_app, name="keys")  # the service's API keys

storage_app = typer.Typer(help="The service's object storage (CLIPADAPT_STORAGE_URL and CLIPADAPT_S3_* settings).",
                          no_args_is_help=True)
app.add_typer(storage_app, name="storage")


@storage_app.command("init")
def storage_init() -> None:
    """Create the storage directory or S3 bucket if it is missing (docker-compose.yml runs this once)."""
    from core.jobs.storage import StorageError, storage_from_settings
    from core.settings import get_settings

    try:
        typer.echo(storage_from_settings(get_settings()).init())
    except (StorageError, ValueError) as e:
        fail(str(e))


ModelOpt = Annotated[Optional[str], typer.Option("--model", help="A model catalog name (e.g. clipadapt-starter), an open_clip architecture (e.g. ViT-B-16) or hf-hub:org/repo.")]
ModelConfigOpt = Annotated[Optional[Path], typer.Option("--model-config", help="open_clip model-config JSON file.")]
PretrainedOpt = Annotated[Optional[str], typer.Option("--pretrained", help="open_clip tag (e.g. openai) or a local weights file; omit for random weights.")]
QuickGeluOpt = Annotated[Optional[bool], typer.Option("--quick-gelu/--no-quick-gelu", help="Override the automatic QuickGELU rule.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]
DeviceOpt = Annotated[Optional[str], typer.Option("--device", help="cpu, cuda, cuda:1 ...; default: cuda when available.")]


def fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=2)


def emit(data: Any, as_json: bool, text: str) -> None:
    typer.echo(json.dumps(data, indent=2) if as_json else text)


def model_spec(model: str | None, model_config: Path | None, pretrained: str | None, quick_gelu: bool | None):
    """The base model: a catalog name (as the service offers it), else an architecture or config file."""
    from core.adapt.models import ModelSpec
    from core.jobs.catalog import CatalogError, load_catalog
    from core.settings import get_settings

    if (model is None) == (model_config is None):
        fail("give exactly one of --model NAME or --model-config PATH")
    if model is not None and pretrained is None and quick_gelu is None:
        try:
            entry = load_catalog(get_settings().model_catalog).get(model)
        except CatalogError as exc:
            fail(str(exc))
        if entry is not None:
            return ModelSpec(**entry.spec())
    return ModelSpec(name=model or str(model_config), pretrained=pretrained, quick_gelu=quick_gelu)


def load_base(spec):
    from core.adapt.models import ModelLoadError, load_base_model

    try:
        return load_base_model(spec)
    except ModelLoadError as exc:
        fail(str(exc))


def load_data(path: Path):
    from core.adapt.data import DatasetError, load_dataset

    try:
        return load_dataset(path)
    except (DatasetError, FileNotFoundError) as exc:
        fail(str(exc))


def load_adapted(artifact: Path, model: str | None, model_config: Path | None, pretrained: str | None, quick_gelu: bool | None):
    """An artifact on its recorded base model, or on the base given on the command line."""
    from core.adapt.artifact import ArtifactError, load_artifact, read_manifest
    from core.adapt.models import ModelSpec

    try:
        manifest = read_manifest(artifact)
        if model or model_config:
            spec = model_spec(model, model_config, pretrained, quick_gelu)
        else:
            spec = ModelSpec(**manifest["base_model"]["spec"])
        return load_artifact(artifact, load_base(spec)), manifest
    except ArtifactError as exc:
        fail(str(exc))


class ProgressBar:
    """TrainCallbacks that draw one tqdm bar per stage."""

    def __init__(self, quiet: bool):
        self.quiet, self.bar = quiet, None

    def on_stage_start(self, stage: int, name: str, epochs: int) -> None:
        from tqdm import tqdm

        self.close()
        self.bar = tqdm(total=epochs, desc=f"stage {stage + 1}: {name}", unit="epoch", file=sys.stderr, disable=self.quiet or None)

    def on_epoch_end(self, report) -> None:
        self.bar.set_postfix(loss=f"{report.train_loss:.3f}", val_acc=f"{report.val.get('accuracy', float('nan')):.3f}")
        self.bar.update(1)

    def on_message(self, message: str) -> None:
        typer.echo(message, err=True)

    def should_stop(self) -> bool:
        return False

    def on_checkpoint(self, make) -> None:
        pass  # a local run is simply started again

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@app.command()
def methods(
    classes: Annotated[int, typer.Option("--classes", min=1, help="Number of classes.")] = 10,
    model: ModelOpt = None,
    model_config: ModelConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Every method and LayerNorm combination with its trainable-parameter count on this model, and
    each method's declared count on ViT-B/16 (Figure 2 of the paper)."""
    from core.adapt.adapted import count_trainable
    from core.adapt.methods import METHODS

    base = load_base(model_spec(model, model_config, None, None))
    preprocess = base.preprocess
    rows = []
    for name, method in METHODS.items():
        for mode in ("none", "joint", "init") if method.config.supports_layernorm else ("none",):
            recipe = method.config(layernorm=mode)
            count = count_trainable(base.model, recipe, classes, base.tokenizer, preprocess)
            rows.append({"method": name, "layernorm": mode, "trainable_params": count,
                         "vit_b16": str(method.vit_b16), "summary": method.summary})
    width = max(len(r["method"]) for r in rows)
    header = f"{'method':<{width}}  {'layernorm':<9}  {'this model':>13}  {'ViT-B/16':>13}  what trains"
    text = "\n".join([header] + [
        f"{r['method']:<{width}}  {r['layernorm']:<9}  {r['trainable_params']:>13,}  {r['vit_b16'] if r['layernorm'] == 'none' else '':>13}  {r['summary']}"
        for r in rows
    ])
    emit(rows, as_json, text)


def recipe_fields(recipe_file: Path | None, options: dict[str, Any], settings: list[str]) -> dict[str, Any]:
    """A recipe as the API receives it: the --recipe file, then the options given, then each --set.
    Validation is left to the same pydantic model as the API's (`parse_recipe`)."""
    fields: dict[str, Any] = {}
    if recipe_file is not None:
        try:
            fields = json.loads(recipe_file.read_text())
        except OSError as exc:
            fail(f"cannot read recipe {recipe_file}: {exc.strerror or exc}")
        except json.JSONDecodeError as exc:
            fail(f"recipe {recipe_file} is not valid JSON: {exc}")
        if not isinstance(fields, dict):
            fail(f"recipe {recipe_file} must be a JSON object of recipe fields, not {type(fields).__name__}")
    fields.update({key: value for key, value in options.items() if value is not None})
    for setting in settings:
        key, sep, text = setting.partition("=")
        if not sep or not key.strip():
            fail(f"--set {setting!r}: expected KEY=VALUE, e.g. --set rank=4")
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text  # plain text, e.g. --set method=lora
        fields[key.strip()] = value
    fields.setdefault("method", "layernorm")
    return fields


@app.command()
def train(
    data: Annotated[Path, typer.Option("--data", help="Dataset folder, manifest or archive.")],
    out: Annotated[Path, typer.Option("--out", help="Artifact directory to write.")],
    recipe_file: Annotated[Optional[Path], typer.Option("--recipe", help="Recipe JSON file (the API's `recipe` object); the options below override it.")] = None,
    settings: Annotated[Optional[list[str]], typer.Option("--set", help="KEY=VALUE for any recipe field, including a method's own (rank, bottleneck, n_ctx, phm_n ...); VALUE is read as JSON when it parses (2e-4, null, [\"q\",\"v\"]), else as text. Repeatable; applied last.")] = None,
    method: Annotated[Optional[str], typer.Option("--method", help="A method name, or 'auto'. Default: layernorm.")] = None,
    layernorm: Annotated[Optional[str], typer.Option("--layernorm", help="none, joint or init.")] = None,
    shots: Annotated[Optional[int], typer.Option("--shots", help="Training images per class; omit for all.")] = None,
    epochs: Annotated[Optional[int], typer.Option("--epochs", help="Default: the method's (100 up to 16 shots, 50 above).")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", help="Default: 0.")] = None,
    lr: Annotated[Optional[float], typer.Option("--lr", help="Default: the method's.")] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", help="Default: 32.")] = None,
    model: ModelOpt = None,
    model_config: ModelConfigOpt = None,
    pretrained: PretrainedOpt = None,
    quick_gelu: QuickGeluOpt = None,
    device: DeviceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Run a recipe locally and write the artifact."""
    from pydantic import ValidationError

    from core.adapt.artifact import save_artifact
    from core.adapt.recipe import parse_recipe
    from core.adapt.trainer import TrainingDiverged, train as run_training
    from core.settings import get_settings

    options = {"method": method, "layernorm": layernorm, "shots": shots, "epochs": epochs, "seed": seed, "lr": lr,
               "batch_size": batch_size}
    fields = recipe_fields(recipe_file, options, settings or [])
    try:
        recipe = parse_recipe(fields)
    except ValidationError as exc:
        fail("invalid recipe: " + "; ".join(f"{'.'.join(map(str, e['loc'][1:])) or e['loc'][0]}: {e['msg']}" for e in exc.errors()))
    base = load_base(model_spec(model, model_config, pretrained, quick_gelu))
    dataset = load_data(data)
    progress = ProgressBar(quiet=as_json)
    try:
        result = run_training(base, dataset, recipe, callbacks=progress, device=device,
                              loader_workers=get_settings().loader_workers)
    except (TrainingDiverged, ValueError) as exc:
        fail(str(exc))
    finally:
        progress.close()
    save_artifact(result, out)
    summary = {
        "artifact": str(out),
        "recipe": result.recipe.model_dump(mode="json"),
        "auto_decision": result.auto_decision,
        "trainable_params": result.trainable_params,
        "val": result.val_metrics,
        "test": result.test_metrics,
    }
    test_acc = f", test accuracy {result.test_metrics['accuracy']:.4f}" if result.test_metrics else ""
    emit(summary, as_json, f"wrote {out}: {result.trainable_params:,} trained parameters, "
         f"val accuracy {result.val_metrics.get('accuracy', float('nan')):.4f}{test_acc}")


@app.command()
def sweep(
    data: Annotated[Path, typer.Option("--data", help="Dataset folder, manifest or archive.")],
    out: Annotated[Path, typer.Option("--out", help="Directory for the trials' artifacts and sweep.json.")],
    preset: Annotated[Optional[str], typer.Option("--preset", help="paper (Table 1) or quick (section 6); or give --method.")] = None,
    methods: Annotated[Optional[list[str]], typer.Option("--method", help="A method to try (repeat the option).")] = None,
    layernorm: Annotated[Optional[list[str]], typer.Option("--layernorm", help="none, joint or init (repeat).")] = None,
    lrs: Annotated[Optional[list[float]], typer.Option("--lr", help="Learning rates (repeat); default: each method's.")] = None,
    shots: Annotated[Optional[list[int]], typer.Option("--shots", help="Shots per class (repeat); default: all.")] = None,
    seeds: Annotated[Optional[list[int]], typer.Option("--seed", help="Seeds (repeat); default: 0.")] = None,
    epochs: Annotated[Optional[int], typer.Option("--epochs", help="Default: 100 up to 16 shots, 50 above.")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size")] = 32,
    max_trials: Annotated[Optional[int], typer.Option("--max-trials", min=1)] = None,
    max_minutes: Annotated[Optional[float], typer.Option("--max-minutes", help="Most training minutes over all trials.")] = None,
    prune: Annotated[bool, typer.Option("--prune/--no-prune", help="Successive halving; --no-prune runs the full grid.")] = True,
    reduction_factor: Annotated[int, typer.Option("--reduction-factor", min=2)] = 3,
    min_resource: Annotated[Optional[int], typer.Option("--min-resource", min=1, help="Epochs before the first rung.")] = None,
    model: ModelOpt = None,
    model_config: ModelConfigOpt = None,
    pretrained: PretrainedOpt = None,
    quick_gelu: QuickGeluOpt = None,
    device: DeviceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Try a grid of recipes, stop weak ones early (successive halving), keep the best; a live leaderboard on stderr."""
    from pydantic import ValidationError

    from core.jobs.local_sweep import run_local_sweep, summary
    from core.jobs.sweeps import PrunerSettings, SweepBudget, SweepError, SweepSpace

    try:
        space = SweepSpace(
            preset=preset, methods=methods or None, layernorm=layernorm or None, lrs=lrs or [None],
            shots=shots or [None], seeds=seeds or [0],
            recipe={"batch_size": batch_size} | ({"epochs": epochs} if epochs is not None else {}),
        )
        budget = SweepBudget(max_trials=max_trials, max_device_minutes=max_minutes)
        pruner = PrunerSettings(enabled=prune, reduction_factor=reduction_factor, min_resource=min_resource)
        space.expand()
    except (ValidationError, SweepError) as exc:
        fail(f"invalid sweep: {exc}")
    base = load_base(model_spec(model, model_config, pretrained, quick_gelu))
    dataset = load_data(data)
    out.mkdir(parents=True, exist_ok=True)
    table = LiveLeaderboard(quiet=as_json)
    try:
        with table:
            result = run_local_sweep(base, dataset, space, budget=budget, pruner=pruner, out=out, device=device, on_update=table.update)
    except ValueError as exc:
        fail(str(exc))
    report = summary(result)
    best = result.best()
    text = (f"wrote {out}: {report['epochs_trained']} of {report['epochs_full_grid']} epochs trained; "
            + (f"best trial {best.sweep_trial} ({best.recipe['method']}/{best.recipe['layernorm']} lr={best.recipe['lr']}"
               f" seed={best.recipe['seed']}): val accuracy {best.val_metrics['accuracy']:.4f}"
               + (f", test accuracy {result.test_metrics['accuracy']:.4f}" if result.test_metrics else "")
               + f"; artifact {out / 'trials' / str(best.sweep_trial)}" if best else "no trial succeeded"))
    emit(report, as_json, text)


class LiveLeaderboard:
    """The sweep's leaderboard, redrawn on stderr as trials train (rich)."""

    def __init__(self, quiet: bool):
        from rich.console import Console
        from rich.live import Live

        self.quiet = quiet
        self.live = Live(console=Console(stderr=True), refresh_per_second=4, transient=False)

    def __enter__(self):
        if not self.quiet:
            self.live.__enter__()
        return self

    def __exit__(self, *exc):
        if not self.quiet:
            self.live.__exit__(*exc)

    def update(self, sweep) -> None:
        if self.quiet:
            return
        from rich.table import Table

        table = Table(title=f"sweep: {sweep.epochs_trained} of {sweep.epochs_full_grid} epochs", title_justify="left")
        for column in ("recipe", "lr", "shots", "val acc (mean ± std)", "params", "time", "trials"):
            table.add_column(column)
        for row in sweep.leaderboard():
            mean, std = row["val_accuracy_mean"], row["val_accuracy_std"]
            table.add_row(
                f"{row['method']}/{row['layernorm']}", str(row["lr"] or "default"), str(row["shots"] or "all"),
                "-" if mean is None else f"{mean:.4f} ± {std:.4f}",
                "-" if row["trainable_params"] is None else f"{row['trainable_params']:,}",
                f"{row['run_seconds']:.0f}s", " ".join(str(s) for s in row["states"]),
            )
        self.live.update(table)


@app.command()
def evaluate(
    artifact: Annotated[Path, typer.Option("--artifact", help="Artifact directory.")],
    data: Annotated[Path, typer.Option("--data", help="Dataset: its test split if it has one, else every image.")],
    model: ModelOpt = None,
    model_config: ModelConfigOpt = None,
    pretrained: PretrainedOpt = None,
    quick_gelu: QuickGeluOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Accuracy, macro-F1, per-class accuracy and confusion matrix of an artifact on a dataset."""
    from core.adapt.data import ImageSamples, build_transforms
    from core.adapt.runtime import resolve_device
    from core.adapt.trainer import evaluate as run_evaluation

    adapted, _ = load_adapted(artifact, model, model_config, pretrained, quick_gelu)
    dataset = load_data(data)
    if dataset.classnames != adapted.classnames:
        fail(f"the dataset's classes {dataset.classnames} differ from the artifact's {adapted.classnames}")
    samples = [s for s in dataset.samples if s.split == "test"] or dataset.samples
    _, eval_tf = build_transforms(**adapted.preprocess)
    metrics = run_evaluation(adapted, ImageSamples(samples, eval_tf), resolve_device(next(adapted.parameters()).device))
    emit(metrics, as_json, f"{metrics['count']} images: accuracy {metrics['accuracy']:.4f}, macro-F1 {metrics['macro_f1']:.4f}")


@app.command()
def predict(
    images: Annotated[list[Path], typer.Argument(help="Image files.")],
    artifact: Annotated[Optional[Path], typer.Option("--artifact", help="Artifact directory (fine-tuned model).")] = None,
    classes: Annotated[Optional[str], typer.Option("--classes", help="Zero-shot: comma-separated class names.")] = None,
    top_k: Annotated[int, typer.Option("--top-k", min=1)] = 5,
    model: ModelOpt = None,
    model_config: ModelConfigOpt = None,
    pretrained: PretrainedOpt = None,
    quick_gelu: QuickGeluOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Top-k labels with probabilities, from an artifact or zero-shot from a base model and class names."""
    from core.adapt.data import DatasetError, open_image
    from core.adapt.predictor import Predictor, zero_shot_model

    if (artifact is None) == (classes is None):
        fail("give either --artifact DIR or --classes a,b,c (with --model/--model-config)")
    if artifact is not None:
        adapted, _ = load_adapted(artifact, model, model_config, pretrained, quick_gelu)
    else:
        names = [c.strip() for c in classes.split(",") if c.strip()]
        if len(names) < 2:
            fail("--classes needs at least two class names")
        adapted = zero_shot_model(load_base(model_spec(model, model_config, pretrained, quick_gelu)), names)
    try:
        opened = [open_image(path) for path in images]
    except (DatasetError, FileNotFoundError) as exc:
        fail(str(exc))
    results = Predictor(adapted).predict(opened, top_k=top_k)
    rows = [{"image": str(path), "predictions": preds} for path, preds in zip(images, results)]
    text = "\n".join(f"{r['image']}: " + ", ".join(f"{p['label']} {p['probability']:.3f}" for p in r["predictions"]) for r in rows)
    emit(rows, as_json, text)


@app.command()
def fewshot(
    data: Annotated[Path, typer.Option("--data", help="Dataset of (novel) classes to sample episodes from.")],
    artifact: Annotated[Optional[Path], typer.Option("--artifact", help="Use this adapted model's image encoder.")] = None,
    ways: Annotated[int, typer.Option("--ways", min=2)] = 5,
    shots: Annotated[int, typer.Option("--shots", min=1)] = 1,
    queries: Annotated[int, typer.Option("--queries", min=1)] = 15,
    episodes: Annotated[int, typer.Option("--episodes", min=1)] = 600,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    model: ModelOpt = None,
    model_config: ModelConfigOpt = None,
    pretrained: PretrainedOpt = None,
    quick_gelu: QuickGeluOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """N-way K-shot episodes (section 4.5): prototypes from support embeddings, cosine classification."""
    from core.adapt.data import ImageSamples, build_transforms
    from core.adapt.fewshot import fewshot_episodes
    from core.adapt.modules import encode_images
    from core.adapt.trainer import encode_split

    if artifact is not None:
        adapted, _ = load_adapted(artifact, model, model_config, pretrained, quick_gelu)
        encode, preprocess, device = adapted.encode_images, adapted.preprocess, next(adapted.parameters()).device
    else:
        base = load_base(model_spec(model, model_config, pretrained, quick_gelu))
        encode = lambda images: encode_images(base.model, images, projected=True)  # noqa: E731
        preprocess, device = base.preprocess, next(base.model.parameters()).device
    dataset = load_data(data)
    _, eval_tf = build_transforms(**preprocess)
    embeddings, labels = encode_split(encode, ImageSamples(dataset.samples, eval_tf), device)
    try:
        result = fewshot_episodes(embeddings, labels, n_way=ways, k_shot=shots, queries=queries, episodes=episodes, seed=seed)
    except ValueError as exc:
        fail(str(exc))
    emit(result, as_json, f"{ways}-way {shots}-shot over {result['episodes']} episodes: "
         f"accuracy {result['accuracy']:.4f} ± {result['ci95']:.4f} (95% CI)")


@app.command()
def export(
    artifact: Annotated[Path, typer.Option("--artifact", help="Artifact directory (from train or a job download).")],
    format: Annotated[str, typer.Option("--format", help="open_clip: merged checkpoint + classifier; onnx: images -> logits.")],
    out: Annotated[Path, typer.Option("--out", help="Directory to write.")],
    model: ModelOpt = None,
    model_config: ModelConfigOpt = None,
    pretrained: PretrainedOpt = None,
    quick_gelu: QuickGeluOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Export a fine-tuned model for plain open_clip or ONNX Runtime (base model: the artifact's, or --model)."""
    from core.adapt.artifact import ArtifactError, read_manifest
    from core.adapt.export import FORMATS, export_artifact
    from core.adapt.models import ModelSpec

    if format not in FORMATS:
        fail(f"unknown --format {format!r}; choose one of {', '.join(FORMATS)}")
    try:
        manifest = read_manifest(artifact)
        spec = model_spec(model, model_config, pretrained, quick_gelu) if model or model_config else ModelSpec(**manifest["base_model"]["spec"])
        written = export_artifact(artifact, load_base(spec), format, out)
    except ArtifactError as exc:
        fail(str(exc))
    files = sorted(p.name for p in written.iterdir())
    emit({"out": str(written), "format": format, "files": files}, as_json, f"wrote {format} export to {written}: {', '.join(files)}")


@app.command("pretrain-starter")
def pretrain_starter(
    out: Annotated[Path, typer.Option("--out", help="Directory to write the model, its card and results to.")],
    steps: Annotated[Optional[int], typer.Option("--steps", min=1, help="Training steps; default: the committed model's.")] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", min=2)] = None,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    threads: Annotated[int, typer.Option("--threads", min=0, help="Torch CPU threads; 0: torch's default.")] = 0,
    as_json: JsonOpt = False,
) -> None:
    """Pretrain clipadapt-starter from scratch on generated images (about 30 minutes on 2 CPU cores)."""
    from tqdm import tqdm

    from core.starter.build import TARGETS, build
    from core.starter.pretrain import PretrainConfig

    config = PretrainConfig(seed=seed, threads=threads)
    if steps is not None:
        config.steps = steps
        config.warmup_steps = min(config.warmup_steps, max(1, steps // 10))
    if batch_size is not None:
        config.batch_size = batch_size
    bar = tqdm(total=config.steps, desc="pretraining", unit="step", file=sys.stderr, disable=as_json or None)

    def progress(step: int, loss: float, scale: float) -> None:
        bar.set_postfix(loss=f"{loss:.3f}", temperature=f"{1 / scale:.3f}", refresh=False)
        bar.update(1)

    try:
        results = build(out, config, progress=progress)
    finally:
        bar.close()
    zero_shot = results["zero_shot"]["generator"]
    lines = [f"wrote {out} in {results['run']['wall_minutes']:.1f} minutes"]
    for source in ("generator", "matplotlib"):
        for group in ("seen", "held_out"):
            part = results["zero_shot"][source][group]
            lines.append(f"zero-shot top-1, {source} images, {group.replace('_', '-')} colour x shape pairs: "
                         f"{part['top1']:.1%} (colour {part['colour']:.1%}, shape {part['shape']:.1%}, {part['images']} images)")
    met = all(zero_shot[group]["top1"] >= target for group, target in TARGETS.items())
    lines.append("targets met" if met else f"below the targets {TARGETS}")
    emit(results, as_json, "\n".join(lines))


if __name__ == "__main__":
    app()
