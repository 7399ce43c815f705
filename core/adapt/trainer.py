"""One training loop for every method and stage (appendix A.3).

Cross-entropy, AdamW over the parameters that require grad, cosine schedule over all steps, evaluation on
the validation split after every epoch, and the best epoch's parameters kept. Work that cannot change
between steps is done once: class embeddings while the text side is frozen, validation features while
the image tower is frozen. Progress and cancellation go through `TrainCallbacks`.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import math
import multiprocessing
import os
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from core.adapt.adapted import AdaptedModel, Stage, plan_stages, prepare_stage
from core.adapt.auto import choose_recipe
from core.adapt.data import Dataset, ImageCache, ImageSamples, Sample, build_transforms, make_splits
from core.adapt.methods import RecipeBase
from core.adapt.methods.zero_shot import ZeroShotConfig
from core.adapt.metrics import classification_metrics
from core.adapt.models import ClipBase
from core.adapt.recipe import AutoConfig, parse_recipe
from core.adapt.runtime import resolve_device


class TrainingCancelled(Exception):
    """Raised when the callbacks ask to stop; nothing is returned or saved."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


@dataclass
class EpochReport:
    stage: int
    stage_name: str
    epoch: int  # 1-based
    epochs: int
    train_loss: float
    val: dict[str, Any]
    best: bool
    final_stage: bool = True  # the run's last stage: the one whose best epoch the result keeps
    # Parameters the run trains in this stage and those before it: in the last stage, the count the
    # result reports, known before the run ends (a trial stopped early still has it).
    trainable_params: int | None = None


@dataclass
class Checkpoint:
    """What it takes to continue a run after its last completed epoch, in another process or machine:
    the resolved recipe (so 'auto' is not decided twice), where the run is, the trained tensors, the
    optimizer and schedule, the best epoch so far and the random state."""

    recipe: dict[str, Any]
    auto_decision: dict[str, Any] | None
    stage: int
    epoch: int  # epochs completed in `stage`
    tensors: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    best_accuracy: float
    best_tensors: dict[str, torch.Tensor]
    history: list[dict[str, Any]]
    generator_state: torch.Tensor
    torch_rng_state: torch.Tensor

    def save(self, path: str | Path) -> None:
        torch.save(vars(self), path)

    @classmethod
    def load(cls, path: str | Path) -> Checkpoint:
        return cls(**torch.load(path, map_location="cpu", weights_only=True))


@dataclass
class StageOutcome:
    """What a finished stage that is not the run's last leaves to the stages after it: its trained
    tensors (best epoch), its history and the random state, with the random state it started from (a
    reuse checks that it starts from the same)."""

    tensors: dict[str, torch.Tensor]
    history: list[dict[str, Any]]
    start_generator_state: torch.Tensor
    start_torch_rng_state: torch.Tensor
    generator_state: torch.Tensor
    torch_rng_state: torch.Tensor

    def save(self, path: str | Path) -> None:
        torch.save(vars(self), path)

    @classmethod
    def load(cls, path: str | Path) -> StageOutcome:
        return cls(**torch.load(path, map_location="cpu", weights_only=True))


class StageCache(Protocol):
    """Outcomes of earlier stages by key, for runs of one dataset and base model: a LayerNorm-init
    stage is the same for every method it initializes (section 6's recipes, a sweep's trials), so
    it needs training once. `get` returns None for a key it does not hold (or cannot read)."""

    def get(self, key: str) -> StageOutcome | None: ...
    def put(self, key: str, outcome: StageOutcome) -> None: ...


class MemoryStageCache:
    """A StageCache in this process (a local sweep's trials, one after another)."""

    def __init__(self) -> None:
        self.outcomes: dict[str, StageOutcome] = {}

    def get(self, key: str) -> StageOutcome | None:
        return self.outcomes.get(key)

    def put(self, key: str, outcome: StageOutcome) -> None:
        self.outcomes[key] = outcome


def stage_key(stage: Stage, device: torch.device, workers: int) -> str:
    """Everything a stage's outcome depends on besides the dataset and base model (the cache's
    scope) and the random state it starts from (checked on reuse): the stage's own recipe (which
    holds the split's shots, seed and validation size), the device type and whether images come
    from worker processes."""
    identity = {"stage": stage.name, "recipe": stage.recipe.model_dump(mode="json"), "epochs": stage.epochs,
                "device": device.type, "workers": workers > 0}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:32]


class TrainCallbacks(Protocol):
    def on_stage_start(self, stage: int, name: str, epochs: int) -> None: ...
    def on_epoch_end(self, report: EpochReport) -> None: ...
    def on_message(self, message: str) -> None: ...
    def should_stop(self) -> bool: ...
    # Called after every epoch; `make()` builds the checkpoint (costly for big models), so
    # callbacks that keep none, or keep one only every few minutes, pay nothing otherwise.
    def on_checkpoint(self, make: Callable[[], Checkpoint]) -> None: ...


class NoCallbacks:
    def on_stage_start(self, stage: int, name: str, epochs: int) -> None:
        pass

    def on_epoch_end(self, report: EpochReport) -> None:
        pass

    def on_message(self, message: str) -> None:
        pass

    def should_stop(self) -> bool:
        return False

    def on_checkpoint(self, make: Callable[[], Checkpoint]) -> None:
        pass


@dataclass
class _Run:
    """State of a run shared by its stages."""

    recipe: RecipeBase
    auto_decision: dict[str, Any] | None
    trained: set[str] = field(default_factory=set)
    history: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class TrainResult:
    adapted: AdaptedModel
    recipe: RecipeBase  # concrete: for 'auto', the recipe it picked
    stages: list[Stage]
    base: ClipBase
    class_ids: list[str]
    trained_names: set[str]
    history: list[dict[str, Any]]
    val_metrics: dict[str, Any]
    test_metrics: dict[str, Any] | None
    auto_decision: dict[str, Any] | None = None
    split_sizes: dict[str, int] = field(default_factory=dict)

    @property
    def trainable_params(self) -> int:
        return count_params(self.adapted, self.trained_names)


def count_params(model: torch.nn.Module, names: set[str]) -> int:
    """Elements of `model`'s parameters named in `names`."""
    return sum(p.numel() for name, p in model.named_parameters() if name in names)


def autocast(device: torch.device):
    """bf16 autocast on GPUs that support it; full precision elsewhere."""
    use_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16)


class _Splits:
    """The three splits as image datasets sharing one decoded-image cache."""

    def __init__(self, base: ClipBase, train: list[Sample], val: list[Sample], test: list[Sample]):
        train_tf, eval_tf = build_transforms(**base.preprocess)
        cache = ImageCache(base.image_size)
        self.train = ImageSamples(train, train_tf, cache)
        self.val = ImageSamples(val, eval_tf, cache)
        self.test = ImageSamples(test, eval_tf, cache)


def resolve_loader_workers(setting: int | str | None, device: torch.device) -> int:
    """DataLoader worker processes for training steps that run the image tower: the setting, or for
    None/'auto' a few on CUDA (the GPU would otherwise wait for decoding and augmentation) and none on
    a CPU (there the workers take cores from the step itself)."""
    if setting is None or setting == "auto":
        return min(4, max(1, (os.cpu_count() or 2) - 1)) if device.type == "cuda" else 0
    return int(setting)


@contextlib.contextmanager
def _children_allowed() -> Iterator[None]:
    """Lets a daemonic process (a Celery prefork worker) start DataLoader workers. multiprocessing
    refuses because a daemon's children are not joined at its exit; torch joins its workers itself
    (and they exit when their parent dies), so the refusal does not apply to them."""
    config = multiprocessing.current_process()._config  # noqa: SLF001 - the flag multiprocessing checks
    daemon = config.get("daemon")
    config["daemon"] = False
    try:
        yield
    finally:
        if daemon is None:
            config.pop("daemon", None)
        else:
            config["daemon"] = daemon


class _SeededBatches:
    """Batch sampler of the training loader with workers: the epoch's batches (set before each epoch),
    each index paired with a seed for its augmentation drawn from the run's generator. An image's
    random crop then depends on the run's seed and its place in the run only, not on which worker made
    it or what that worker made before: a run gives the same result for any worker count, and a resumed
    run (new workers, the checkpoint's generator) the same as an uninterrupted one."""

    def __init__(self) -> None:
        self.batches: list[list[tuple[int, int]]] = []

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


@torch.no_grad()
def encode_split(encode: Callable[[torch.Tensor], torch.Tensor], images: ImageSamples, device: torch.device,
                 batch_size: int = 64, loader: Iterable | None = None):
    """Image features (by `encode`, e.g. `AdaptedModel.encode_images`) and labels of a whole split;
    `loader` (over `images`, in order) replaces the plain in-process one."""
    features, labels = [], []
    for batch, target in loader if loader is not None else DataLoader(images, batch_size=batch_size):
        with autocast(device):
            features.append(encode(batch.to(device, non_blocking=True)).float())
        labels.append(target)
    return torch.cat(features), torch.cat(labels)


@torch.no_grad()
def evaluate(
    model: AdaptedModel,
    images: ImageSamples,
    device: torch.device,
    features: tuple[torch.Tensor, torch.Tensor] | None = None,
    class_embeddings: torch.Tensor | None = None,
    loader: Iterable | None = None,
) -> dict[str, Any]:
    if len(images) == 0:
        return {}
    model.eval()  # dropout (LoRA's) is for training steps only
    feats, labels = features if features is not None else encode_split(model.encode_images, images, device, loader=loader)
    if class_embeddings is None:
        class_embeddings = model.class_embeddings()
    logits = model.logits(feats, class_embeddings).float()
    metrics = classification_metrics(labels.tolist(), logits.argmax(dim=-1).cpu().tolist(), model.classnames)
    # Cross-entropy of the same split: finer-grained than accuracy on a few images (sweeps break ties with it).
    return {**metrics, "loss": F.cross_entropy(logits, labels.to(logits.device)).item()}


def train_step(
    model: AdaptedModel,
    optimizer: torch.optim.Optimizer,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    device: torch.device,
    features_given: bool = False,
    fixed_classes: torch.Tensor | None = None,
) -> float:
    """One optimizer step on a batch; returns its loss. `inputs` are images, or with `features_given`
    cached image features; `fixed_classes` are the class embeddings when nothing on the text side
    trains (computed once by the caller). The image tower runs without autograd when it is frozen.
    Raises TrainingDiverged, without stepping, when the loss is not finite."""
    with autocast(device):
        if features_given:
            features = inputs
        else:
            with torch.set_grad_enabled(model.image_tower_trains()):
                features = model.encode_images(inputs)
        classes = fixed_classes if fixed_classes is not None else model.class_embeddings()
        loss = F.cross_entropy(model.logits(features, classes).float(), labels)
    value = loss.item()
    if not math.isfinite(value):
        raise TrainingDiverged(f"loss became {value}")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return value


@contextlib.contextmanager
def _worker_loaders(splits: _Splits, workers: int, device: torch.device, seed: int):
    """(sampler, training loader, validation loader) with `workers` persistent worker processes each,
    shut down on exit; (None, None, None) for none."""
    if not workers:
        yield None, None, None
        return
    sampler = _SeededBatches()
    options = {"num_workers": workers, "persistent_workers": True, "pin_memory": device.type == "cuda",
               # The loader seeds its workers from this, not from the global random state (LoRA's
               # dropout masks), which would then depend on the epoch the workers started in.
               "generator": torch.Generator().manual_seed(seed)}
    loaders = [DataLoader(splits.train, batch_sampler=sampler, **options)]
    if len(splits.val):
        loaders.append(DataLoader(splits.val, batch_size=64, **options))
    try:
        yield sampler, loaders[0], loaders[1] if len(loaders) > 1 else None
    finally:
        for loader in loaders:  # persistent workers otherwise live until the loader is collected
            if loader._iterator is not None:  # noqa: SLF001 - torch has no public shutdown
                loader._iterator._shutdown_workers()  # noqa: SLF001


def _fit(
    model: AdaptedModel,
    stage_index: int,
    stage: Stage,
    splits: _Splits,
    callbacks: TrainCallbacks,
    device: torch.device,
    generator: torch.Generator,
    run: _Run,
    resume: Checkpoint | None = None,
    workers: int = 0,
    final: bool = True,
) -> None:
    recipe = stage.recipe
    trainable = model.trainable_parameters()
    if not trainable or stage.epochs == 0:
        return
    optimizer = torch.optim.AdamW(
        trainable.values(), lr=recipe.resolved_lr(), weight_decay=recipe.weight_decay, fused=device.type == "cuda"
    )
    trained_count = count_params(model, run.trained)
    size = len(splits.train)
    batch_size = min(recipe.batch_size, size)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=stage.epochs * math.ceil(size / batch_size))
    best_accuracy, best_state, start_epoch = -1.0, None, 1
    if resume is not None:
        optimizer.load_state_dict(resume.optimizer)
        scheduler.load_state_dict(resume.scheduler)
        best_accuracy, best_state, start_epoch = resume.best_accuracy, resume.best_tensors, resume.epoch + 1
        generator.set_state(resume.generator_state)
        torch.set_rng_state(resume.torch_rng_state)

    image_frozen = not model.image_tower_trains()
    model.eval()  # what is computed once here is computed as at evaluation (no dropout)
    fixed_classes = None
    if not model.text_side_trains():
        with torch.no_grad():
            fixed_classes = model.class_embeddings()
    val_features = encode_split(model.encode_images, splits.val, device) if image_frozen and len(splits.val) else None
    # With the image tower frozen, each augmented view of the training set is encoded once and epochs
    # cycle through the views (as Tip-Adapter does) instead of running the image encoder every step.
    views = None
    if image_frozen and recipe.feature_views and start_epoch <= stage.epochs:
        views = [encode_split(model.encode_images, splits.train, device) for _ in range(min(recipe.feature_views, stage.epochs))]
    # Images decoded and augmented in worker processes kept across epochs, where steps run the image
    # tower on images (the feature-cache path above decodes each view once and needs none).
    with _worker_loaders(splits, workers if views is None and not image_frozen else 0, device, recipe.seed) as (
        sampler, train_loader, val_loader
    ):
        for epoch in range(start_epoch, stage.epochs + 1):
            model.train()  # `evaluate` switched to eval mode after the previous epoch
            batches = torch.randperm(size, generator=generator).split(batch_size)
            if views is not None:
                features_of_view, labels_of_view = views[(epoch - 1) % len(views)]
                source = ((features_of_view[i], labels_of_view[i]) for i in batches)
            elif sampler is not None:
                seeds = torch.randint(0, 2**62, (size,), generator=generator).tolist()
                sampler.batches = [[(i, seeds[i]) for i in b.tolist()] for b in batches]
                with _children_allowed():  # starts the workers on the first epoch
                    source = iter(train_loader)
            else:
                source = DataLoader(splits.train, batch_sampler=[b.tolist() for b in batches])
            total_loss, seen = 0.0, 0
            for inputs, labels in source:
                if callbacks.should_stop():
                    raise TrainingCancelled()
                try:
                    loss = train_step(model, optimizer, inputs.to(device, non_blocking=True), labels.to(device, non_blocking=True),
                                      device, features_given=views is not None, fixed_classes=fixed_classes)
                except TrainingDiverged as exc:
                    raise TrainingDiverged(f"{exc} in stage '{stage.name}', epoch {epoch}; lower the learning rate") from None
                scheduler.step()
                total_loss += loss * len(labels)
                seen += len(labels)

            with _children_allowed():  # the validation loader's workers, if any, start on the first epoch
                val = evaluate(model, splits.val, device, features=val_features, class_embeddings=fixed_classes,
                               loader=val_loader)
            # Without a validation split the last epoch is kept.
            accuracy = val.get("accuracy", math.inf)
            is_best = accuracy > best_accuracy or not val
            if is_best:
                best_accuracy = accuracy
                best_state = {name: p.detach().clone() for name, p in trainable.items()}
            report = EpochReport(stage_index, stage.name, epoch, stage.epochs, total_loss / max(seen, 1), val, is_best, final,
                                 trained_count)
            run.history.append({"stage": stage_index, "stage_name": stage.name, "epoch": epoch, "epochs": stage.epochs,
                                "train_loss": report.train_loss, "val": val, "best": is_best})
            callbacks.on_epoch_end(report)

            def make_checkpoint(epoch: int = epoch) -> Checkpoint:
                params = dict(model.named_parameters())
                return Checkpoint(
                    recipe=run.recipe.model_dump(mode="json"),
                    auto_decision=run.auto_decision,
                    stage=stage_index,
                    epoch=epoch,
                    tensors={name: params[name].detach().cpu().clone() for name in run.trained},
                    optimizer=optimizer.state_dict(),
                    scheduler=scheduler.state_dict(),
                    best_accuracy=best_accuracy,
                    best_tensors={name: t.detach().cpu().clone() for name, t in best_state.items()},
                    history=copy.deepcopy(run.history),
                    generator_state=generator.get_state(),
                    torch_rng_state=torch.get_rng_state(),
                )

            callbacks.on_checkpoint(make_checkpoint)

    with torch.no_grad():
        for name, p in trainable.items():
            p.copy_(best_state[name])


def _reuse_stage(cache: StageCache, key: str, model: AdaptedModel, run: _Run, generator: torch.Generator,
                 start: tuple[torch.Tensor, torch.Tensor]) -> bool:
    """Continue as if the stage had just been trained, from a cached outcome that started from the
    same random state and trained the same tensors; False (train it) otherwise."""
    outcome = cache.get(key)
    if (
        outcome is None
        or not torch.equal(outcome.start_generator_state, start[0])
        or not torch.equal(outcome.start_torch_rng_state, start[1])
        or set(outcome.tensors) != set(model.trainable_parameters())
    ):
        return False
    _restore(model, outcome.tensors)
    run.history.extend(outcome.history)
    generator.set_state(outcome.generator_state)
    torch.set_rng_state(outcome.torch_rng_state)
    return True


def _restore(model: AdaptedModel, tensors: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, tensor in tensors.items():
            params[name].copy_(tensor)


def train(
    base: ClipBase,
    dataset: Dataset,
    recipe: RecipeBase,
    callbacks: TrainCallbacks | None = None,
    device: str | torch.device | None = None,
    resume: Checkpoint | None = None,
    score_test: bool = True,
    loader_workers: int | str | None = None,
    stage_cache: StageCache | None = None,
) -> TrainResult:
    """Run a recipe on a dataset; returns the adapted model with its metrics. The base is not modified.

    With `resume` (a checkpoint of an earlier run of the same recipe on the same data and base), training
    continues after the checkpoint's epoch. `score_test=False` leaves the test split alone (a search
    over recipes scores it only for the one it selects, with `score_split`). `loader_workers`: worker
    processes for stages whose steps run the image tower (`resolve_loader_workers`; None: by device).
    With workers, results depend on the seed only, not on their number, but differ from those without.
    `stage_cache` (one per dataset and base model) lends and keeps the outcomes of stages before the
    last, so runs that share a LayerNorm-init stage train it once; results are the same either way."""
    callbacks = callbacks or NoCallbacks()
    device = resolve_device(device)
    workers = resolve_loader_workers(loader_workers, device)
    torch.manual_seed(recipe.seed)
    generator = torch.Generator().manual_seed(recipe.seed)

    parts = make_splits(dataset, recipe.shots, recipe.seed, recipe.val_per_class)
    if not parts.train:
        raise ValueError("the dataset has no training images")
    splits = _Splits(base, parts.train, parts.val, parts.test)
    preprocess = base.preprocess
    clip = copy.deepcopy(base.model).to(device)

    decision = None
    if resume is not None:
        recipe, decision = parse_recipe(resume.recipe), resume.auto_decision
        callbacks.on_message(f"resuming stage {resume.stage} after epoch {resume.epoch}")
    elif isinstance(recipe, AutoConfig):
        probe = ZeroShotConfig(templates=recipe.templates)
        zero_shot = prepare_stage(clip, Stage("zero_shot", probe, False, 0), dataset.classnames, base.tokenizer, preprocess)
        zero_shot_accuracy = evaluate(zero_shot, splits.val if len(splits.val) else splits.train, device)["accuracy"]
        shots = recipe.shots or round(len(parts.train) / len(dataset.classnames))
        recipe, decision = choose_recipe(recipe, zero_shot_accuracy, shots)
        callbacks.on_message(f"auto picked {decision['picked']}: {decision['reason']}")

    stages = plan_stages(recipe, train_size=len(parts.train))
    run = _Run(recipe, decision, history=list(resume.history) if resume else [])
    for index, stage in enumerate(stages):
        model = prepare_stage(clip, stage, dataset.classnames, base.tokenizer, preprocess)
        run.trained |= set(model.trainable_parameters())
        if resume is not None and index < resume.stage:
            continue  # finished before the checkpoint; its tensors are restored below
        stage_resume = None
        if resume is not None and index == resume.stage:
            _restore(model, resume.tensors)
            stage_resume = resume
        final = index == len(stages) - 1
        key = stage_key(stage, device, workers) if stage_cache is not None and not final and stage_resume is None else None
        start = (generator.get_state(), torch.get_rng_state())
        if key is not None and _reuse_stage(stage_cache, key, model, run, generator, start):
            callbacks.on_message(f"stage {index} ({stage.name}) reused from an identical earlier run: {stage.epochs} epochs not trained again")
            continue
        callbacks.on_stage_start(index, stage.name, stage.epochs)
        history_before = len(run.history)
        _fit(model, index, stage, splits, callbacks, device, generator, run, stage_resume, workers, final)
        if key is not None:
            trained = model.trainable_parameters()
            stage_cache.put(key, StageOutcome(
                tensors={name: p.detach().cpu().clone() for name, p in trained.items()},
                history=copy.deepcopy(run.history[history_before:]),
                start_generator_state=start[0], start_torch_rng_state=start[1],
                generator_state=generator.get_state(), torch_rng_state=torch.get_rng_state(),
            ))

    model.requires_grad_(False).eval()
    return TrainResult(
        adapted=model,
        recipe=recipe,
        stages=stages,
        base=base,
        class_ids=list(dataset.class_ids),
        trained_names=run.trained,
        history=run.history,
        val_metrics=evaluate(model, splits.val, device),
        test_metrics=(evaluate(model, splits.test, device) or None) if score_test else None,
        auto_decision=decision,
        split_sizes={"train": len(parts.train), "val": len(parts.val), "test": len(parts.test),
                     "shots_per_class_min": min(Counter(s.label for s in parts.train).values())},
    )


def score_split(
    model: AdaptedModel, dataset: Dataset, recipe: RecipeBase, split: str = "test", device: str | torch.device | None = None
) -> dict[str, Any]:
    """Metrics of a trained model on one split of the k-shot sampling its recipe trained on (the
    same `shots`, `seed` and `val_per_class` give the same split as in `train`)."""
    device = resolve_device(device)
    parts = make_splits(dataset, recipe.shots, recipe.seed, recipe.val_per_class)
    _, eval_tf = build_transforms(**model.preprocess)
    return evaluate(model.to(device), ImageSamples(getattr(parts, split), eval_tf), device)
