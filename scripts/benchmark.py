#!/usr/bin/env python3
"""Speed of clipadapt against what a user would otherwise run, side by side in one process.

Sections (all on the same architecture, batch and data; random weights, which cost the same as real):
  train    per method: our training step and 100-epoch run against a plain open_clip loop (image encoder
           every step, 77-token prompts, open_clip's own forward)
  peft     LayerNorm tuning against Hugging Face CLIPModel + peft LNTuningConfig (prompts padded to
           the longest, as padding=True does), and the plain open_clip loop, at 10 and 100 classes
  zeroshot building a zero-shot classifier (80 templates x 100 classes) against open_clip's
           build_zero_shot_classifier
  predict  prediction latency of fine-tuned models against a zero-shot one, and throughput with and
           without batching concurrent requests (BatchingPredictor)
  serving  many fine-tuned models on one base (deltas): memory of 200 models against one base and
           against a full copy per model, mixed traffic over 50 models against one, cold vs warm
  gpu      (with --device cuda) images/s per method in bf16 and the fraction of the device's peak
  compile  the trainer's train_step eager against torch.compile'd (LayerNorm, linear probe, LoRA): compile
           time, steady-state step time, and how far losses and updated parameters are from eager's

Usage: python scripts/benchmark.py [--device cuda] [--sections train,peft,...] [--model ViT-B-16]
Ratios are ours/theirs for times (lower is better) unless the column says otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import logging
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from unittest import mock

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.adapt import fast, modules  # noqa: E402
from core.adapt.adapted import AdaptedModel, build_adapted  # noqa: E402
from core.adapt.methods import METHODS, RecipeBase  # noqa: E402
from core.adapt.models import ClipBase, ModelSpec, load_base_model  # noqa: E402
from core.adapt.predictor import BatchingPredictor, Predictor, zero_shot_model  # noqa: E402
from core.adapt.recipe import parse_recipe  # noqa: E402
from core.adapt.trainer import autocast, train_step  # noqa: E402

# ------------------------------------------------------------------------------------------ helpers


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Median seconds of `repeats` calls after one warm-up call."""
    fn()
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def step_gflops(fn: Callable[[], object]) -> float:
    """FLOPs of one call (matmuls, convolutions and attention; forward and backward), counted by torch."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / 1e9


@contextlib.contextmanager
def peak_memory(device: torch.device) -> Iterator[dict]:
    """Peak memory in MiB while the block runs: allocated tensors on CUDA, resident set on the CPU."""
    result: dict = {}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        with contextlib.suppress(OSError):
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM, the resident peak
    yield result
    if device.type == "cuda":
        result["mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        status = Path("/proc/self/status").read_text().split("\n")
        result["mib"] = next(int(line.split()[1]) for line in status if line.startswith("VmHWM")) / 1024


@contextlib.contextmanager
def plain_open_clip(reserved: int = 0) -> Iterator[None]:
    """What a plain open_clip loop computes: prompts padded to the full context (77 tokens, less
    `reserved` positions for prompt tuning's context vectors, as CoOp does) and open_clip's own forward."""

    def untrimmed(tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return tokens[:, : tokens.shape[1] - reserved], tokens.argmax(dim=-1)

    with (
        mock.patch.object(modules, "trim_tokens", untrimmed),
        mock.patch.object(fast, "supported", lambda blocks: False),
        mock.patch.object(fast, "vision_supported", lambda visual: False),
    ):
        yield


def build(base: ClipBase, method: str, classes: int, device: torch.device, layernorm: str = "none") -> AdaptedModel:
    names = [f"class number {i}" for i in range(classes)]
    recipe = parse_recipe({"method": method, "layernorm": layernorm})
    model, _ = build_adapted(copy.deepcopy(base.model), recipe, names, base.tokenizer, base.preprocess)
    return model.to(device)


def print_table(title: str, header: list[str], rows: list[list[object]]) -> None:
    cells = [[f"{c:,.3f}" if isinstance(c, float) else str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(header)]
    print(f"\n## {title}\n")
    print("| " + " | ".join(h.ljust(w) for h, w in zip(header, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in cells:
        print("| " + " | ".join(c.rjust(w) for c, w in zip(row, widths)) + " |")
    sys.stdout.flush()


# ------------------------------------------------------------------------------------ training steps


class StepRunner:
    """One optimizer step of a method, the way our trainer runs it or the way a plain loop does."""

    def __init__(self, model: AdaptedModel, batch: int, device: torch.device, cached: bool):
        self.model, self.device = model, device
        self.images = torch.randn(batch, 3, model.preprocess["image_size"], model.preprocess["image_size"], device=device)
        self.labels = torch.arange(batch, device=device) % len(model.classnames)
        self.image_frozen = not model.image_tower_trains()
        self.optimizer = torch.optim.AdamW(model.trainable_parameters().values(), lr=1e-5, fused=device.type == "cuda")
        self.features = None
        self.fixed_classes = None
        if cached:  # our trainer: work that cannot change between steps is done once
            with torch.no_grad(), autocast(device):
                if self.image_frozen:
                    self.features = model.encode_images(self.images).float()
                if not model.text_side_trains():
                    self.fixed_classes = model.class_embeddings()

    def step(self) -> float:
        # The trainer's own step (core.adapt.trainer.train_step, or a compiled one set as `train_step`),
        # on cached features where it caches them.
        inputs = self.features if self.features is not None else self.images
        return self.train_step(self.model, self.optimizer, inputs, self.labels, self.device,
                               features_given=self.features is not None, fixed_classes=self.fixed_classes)

    train_step = staticmethod(train_step)

    def encode_seconds_per_image(self, repeats: int, batch: int = 64) -> float:
        """Feature caching encodes in batches of 64, as the trainer does."""
        images = self.images[:1].expand(batch, -1, -1, -1).contiguous()

        def encode() -> None:
            with torch.no_grad(), autocast(self.device):
                self.model.encode_images(images)

        return timed(encode, self.device, repeats) / batch


def measure_step(base: ClipBase, method: str, args, device, plain: bool, classes: int, layernorm: str = "none",
                 flops: bool = False) -> dict:
    reserved = METHODS[method].config().model_dump().get("n_ctx", 0)
    context = plain_open_clip(reserved) if plain else contextlib.nullcontext()
    with context:
        model = build(base, method, classes, device, layernorm)
        runner = StepRunner(model, args.batch, device, cached=not plain)
        with peak_memory(device) as memory:
            step = timed(runner.step, device, args.steps)
        encode = runner.encode_seconds_per_image(args.steps) if runner.image_frozen and not plain else 0.0
        gflops = step_gflops(runner.step) if flops else None
    return {"step": step, "encode_per_image": encode, "memory": memory["mib"], "image_frozen": runner.image_frozen,
            "gflops": gflops}


def section_train(base: ClipBase, args, device) -> None:
    images = args.shots * args.classes
    steps_per_epoch = -(-images // args.batch)
    rows = []
    for method in METHODS:
        if method == "zero_shot":
            continue
        ours = measure_step(base, method, args, device, plain=False, classes=args.classes)
        plain = measure_step(base, method, args, device, plain=True, classes=args.classes)
        # Our run: the frozen image encoder sees each of `views` augmented copies of the set once.
        views = min(args.views, args.epochs) if ours["image_frozen"] else 0
        one_off = views * images * ours["encode_per_image"]
        our_run = one_off + args.epochs * steps_per_epoch * ours["step"]
        plain_run = args.epochs * steps_per_epoch * plain["step"]
        rows.append([method, ours["step"], plain["step"], ours["step"] / plain["step"], args.batch / ours["step"],
                     steps_per_epoch * ours["step"], one_off, our_run / 60, plain_run / 60, plain_run / our_run,
                     round(ours["memory"]), round(plain["memory"])])
    print_table(
        f"Training: {args.shots}-shot, {args.classes}-class task, batch {args.batch}, {device.type}; "
        f"{args.epochs}-epoch run with {args.views} cached views where the image encoder is frozen",
        ["method", "step s", "plain step s", "step ratio", "img/s", "epoch s", "views s", "run min",
         "plain run min", "run speed-up x", "peak MiB", "plain peak MiB"],
        rows,
    )


# --------------------------------------------------------------------------------------------- peft


def peft_step(args, device, classes: int, base: ClipBase) -> Callable[[], None]:
    from peft import LNTuningConfig, get_peft_model
    from transformers import CLIPConfig, CLIPModel

    visual, text = base.model.visual, base.model.transformer
    config = CLIPConfig(
        text_config={"hidden_size": text.width, "intermediate_size": 4 * text.width, "num_attention_heads": text.resblocks[0].attn.num_heads,
                     "num_hidden_layers": len(text.resblocks), "max_position_embeddings": base.context_length, "hidden_act": "gelu"},
        vision_config={"hidden_size": visual.transformer.width, "intermediate_size": 4 * visual.transformer.width,
                       "num_attention_heads": visual.transformer.resblocks[0].attn.num_heads, "num_hidden_layers": len(visual.transformer.resblocks),
                       "patch_size": visual.patch_size[0], "image_size": base.image_size, "hidden_act": "gelu"},
        projection_dim=base.model.text_projection.shape[1],
    )
    model = get_peft_model(CLIPModel(config), LNTuningConfig(
        target_modules=["layer_norm1", "layer_norm2", "pre_layrnorm", "post_layernorm", "final_layer_norm"])).to(device)
    tokens = base.tokenizer([f"a photo of a class number {i}." for i in range(classes)])
    length = int(tokens.argmax(-1).max()) + 1  # padding=True: pad to the longest prompt, with a mask
    input_ids = tokens[:, :length].to(device)
    attention_mask = (input_ids != 0).long()
    images = torch.randn(args.batch, 3, base.image_size, base.image_size, device=device)
    labels = torch.arange(args.batch, device=device) % classes
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)

    def step() -> None:
        with autocast(device):
            logits = model(input_ids=input_ids, attention_mask=attention_mask, pixel_values=images).logits_per_image
            loss = F.cross_entropy(logits.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step.trainable = trainable  # type: ignore[attr-defined]
    return step


def section_peft(base: ClipBase, args, device) -> None:
    rows = []
    for classes in args.peft_classes:
        theirs_step = peft_step(args, device, classes, base)
        theirs = timed(theirs_step, device, args.steps)
        theirs_gflops = step_gflops(theirs_step)
        ours = measure_step(base, "layernorm", args, device, plain=False, classes=classes, flops=True)
        plain = measure_step(base, "layernorm", args, device, plain=True, classes=classes)["step"]
        rows.append([classes, theirs_step.trainable, ours["step"], plain, theirs, ours["step"] / theirs, plain / theirs,
                     ours["gflops"], theirs_gflops, ours["gflops"] / theirs_gflops])
    # The FLOP ratio is the floor of the time ratio for exact computation: what is left is overhead.
    print_table(
        f"LayerNorm tuning step against peft (batch {args.batch}, {device.type}); target: ours/peft <= 0.8",
        ["classes", "peft trainable", "ours s", "plain open_clip s", "peft s", "ours/peft", "plain/peft",
         "ours GFLOP", "peft GFLOP", "FLOP ours/peft"], rows)


# ------------------------------------------------------------------------------------------ zero-shot


def section_zeroshot(base: ClipBase, args, device) -> None:
    from open_clip import build_zero_shot_classifier
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    names = [f"class number {i}" for i in range(args.zeroshot_classes)]
    clip = base.model.to(device)

    def ours() -> None:
        with torch.no_grad(), autocast(device):
            zero_shot_model(base, names).class_embeddings()

    def theirs() -> None:
        with autocast(device):
            build_zero_shot_classifier(clip, base.tokenizer, names, OPENAI_IMAGENET_TEMPLATES, device=device)

    repeats = max(1, args.steps // 2)
    our_s, their_s = timed(ours, device, repeats), timed(theirs, device, repeats)
    print_table(f"Zero-shot classifier, 80 templates x {len(names)} classes ({device.type}); target: >= 3x",
                ["ours s", "open_clip s", "speed-up x"], [[our_s, their_s, their_s / our_s]])


# -------------------------------------------------------------------------------------------- predict


def section_predict(base: ClipBase, args, device) -> None:
    from PIL import Image

    image = Image.fromarray((torch.rand(base.image_size * 2, base.image_size * 2, 3) * 255).byte().numpy())
    names = [f"class number {i}" for i in range(args.classes)]
    reference = Predictor(zero_shot_model(base, names), device=device)
    zero_shot_s = timed(lambda: reference.predict([image]), device, args.predict_repeats)
    rows = [["zero_shot", zero_shot_s * 1000, 1.0]]
    for method, layernorm in (("layernorm", "none"), ("adapter", "init"), ("linear_probe", "init")):
        predictor = Predictor(build(base, method, args.classes, device, layernorm).requires_grad_(False).eval(), device=device)
        seconds = timed(lambda: predictor.predict([image]), device, args.predict_repeats)
        rows.append([f"{method} ({layernorm})", seconds * 1000, seconds / zero_shot_s])
    print_table(f"Prediction latency, one image ({device.type}); target: fine-tuned/zero-shot <= 1.1",
                ["model", "ms", "ratio to zero-shot"], rows)

    requests = args.concurrent_requests
    sequential = timed(lambda: [reference.predict([image]) for _ in range(requests)], device, 1)
    batching = BatchingPredictor(reference, max_batch=args.predict_batch, max_wait_ms=5)
    try:
        with ThreadPoolExecutor(requests) as pool:
            together = timed(lambda: list(pool.map(lambda _: batching.predict([image]), range(requests))), device, 1)
    finally:
        batching.close()
    print_table(f"Prediction throughput, {requests} concurrent one-image requests ({device.type}); "
                "target on a GPU: batching >= 3x",
                ["one at a time img/s", f"batched (<= {args.predict_batch}) img/s", "speed-up x"],
                [[requests / sequential, requests / together, sequential / together]])


# ------------------------------------------------------------------------------------------------ gpu


def image_forward_gflops(base: ClipBase, device: torch.device) -> float:
    """FLOPs of one image through the image encoder as we run it (about 35 G for ViT-B/16)."""
    from torch.utils.flop_counter import FlopCounterMode

    images = torch.randn(1, 3, base.image_size, base.image_size, device=device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        modules.encode_images(base.model, images, projected=True)
    return counter.get_total_flops() / 1e9


def section_gpu(base: ClipBase, args, device) -> None:
    """Images per second per method and the share of the device's peak those FLOPs are."""
    forward_gflops = image_forward_gflops(base, device)
    rows = []
    for method in METHODS:
        if method == "zero_shot":
            continue
        ours = measure_step(base, method, args, device, plain=False, classes=args.classes)
        if ours["image_frozen"]:  # the image encoder runs forward only, once per cached view
            images_per_s, flops = 1 / ours["encode_per_image"], forward_gflops
            what = "feature encoding"
        else:  # forward and backward through the image encoder (backward ~ 2x forward)
            images_per_s, flops = args.batch / ours["step"], 3 * forward_gflops
            what = "training step"
        achieved = images_per_s * flops / 1000
        rows.append([method, what, images_per_s, achieved, achieved / args.peak_tflops, round(ours["memory"])])
    print_table(f"Throughput per method, batch {args.batch}, bf16 where supported ({device.type}, "
                f"{forward_gflops:.1f} GFLOPs per image forward, peak {args.peak_tflops:g} TFLOP/s)", ["method", "measures", "img/s", "TFLOP/s", "of peak", "peak MiB"], rows)


# -------------------------------------------------------------------------------------------- compile


COMPILE_CHECK_STEPS = 3  # steps both runs take from the same state before they are compared
COMPILE_RTOL = 1e-3  # relative: fused kernels reorder float sums, so bit-identical results are not expected


def section_compile(base: ClipBase, args, device) -> None:
    """train_step eager against torch.compile(train_step) on twin models from the same state."""
    import torch._inductor.config as inductor_config

    # Dropout (LoRA's) then draws the same numbers as in eager, so the two runs can be compared.
    inductor_config.fallback_random = True
    rows = []
    for method in ("layernorm", "linear_probe", "lora"):
        torch.manual_seed(0)
        model = build(base, method, args.classes, device)
        twin = copy.deepcopy(model)
        torch.manual_seed(1)
        eager = StepRunner(model, args.batch, device, cached=True)
        torch.manual_seed(1)
        compiled = StepRunner(twin, args.batch, device, cached=True)
        compiled.train_step = torch.compile(train_step)
        start_params = {n: p.detach().clone() for n, p in model.trainable_parameters().items()}
        losses, first_calls = [], []
        for i in range(COMPILE_CHECK_STEPS):
            torch.manual_seed(100 + i)
            eager_loss = eager.step()
            torch.manual_seed(100 + i)
            start = time.perf_counter()
            compiled_loss = compiled.step()
            sync(device)
            first_calls.append(time.perf_counter() - start)
            losses.append(abs(compiled_loss - eager_loss) / max(abs(eager_loss), 1e-12))
        # The updates compared, relative to the largest: Adam divides each gradient by its own running
        # size, so where gradients are ~0 a rounding difference can flip an update's sign.
        with torch.no_grad():
            eager_updates = {n: p - start_params[n] for n, p in model.trainable_parameters().items()}
            compiled_updates = {n: p - start_params[n] for n, p in twin.trainable_parameters().items()}
            largest = max(float(u.abs().max()) for u in eager_updates.values())
            param_error = max(float((compiled_updates[n] - u).abs().max()) for n, u in eager_updates.items()) / max(largest, 1e-30)
        eager_s = timed(eager.step, device, args.steps)
        compiled_s = timed(compiled.step, device, args.steps)
        # The first calls compile (the forward, and the optimizer step once its state exists).
        compile_s = sum(first_calls[:2]) - 2 * compiled_s
        same = max(losses) == 0 and param_error == 0
        within = max(losses) <= COMPILE_RTOL and param_error <= COMPILE_RTOL
        rows.append([method, compile_s, eager_s, compiled_s, compiled_s / eager_s, f"{max(losses):.1e}", f"{param_error:.1e}",
                     "identical" if same else f"within {COMPILE_RTOL:g}" if within else "NO"])
    print_table(f"train_step eager vs torch.compile, batch {args.batch} ({device.type}); {COMPILE_CHECK_STEPS} steps from one "
                "state compared (loss: relative; update: relative to the largest)",
                ["method", "compile s", "eager step s", "compiled step s", "compiled/eager", "loss diff", "update diff",
                 "results"], rows)


# ---------------------------------------------------------------------------------------------- main


# ------------------------------------------------------------------------------------------------ serving


def _rss_bytes() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmRSS:"))


def section_serving(base: ClipBase, args, device) -> None:
    """Many fine-tuned models on one base (core.adapt.serving) against one full model copy per model."""
    import shutil
    import tempfile

    from PIL import Image

    from core.adapt.artifact import load_artifact
    from core.adapt.serving import ServingEngine
    from tests.helpers.artifacts import synthetic_artifact

    cases = [(m, mode) for m, method in METHODS.items() if m != "full"
             for mode in (("none", "joint", "init") if method.config.supports_layernorm else ("none",))]
    names = [f"class number {i}" for i in range(args.classes)]
    root = Path(tempfile.mkdtemp(prefix="clipadapt-serving-bench-"))
    engine = ServingEngine(base, device, device_cache_size=args.serving_models, max_batch=args.predict_batch)
    try:
        paths = [synthetic_artifact(base, m, names, root / f"model{i}", layernorm=mode, seed=i)
                 for i, (m, mode) in enumerate(cases[i % len(cases)] for i in range(args.serving_models))]
        base_bytes = sum(t.numel() * t.element_size() for t in [*base.model.parameters(), *base.model.buffers()])
        rss_before = _rss_bytes()
        deltas = [engine.on_device(i, engine.load(p)) for i, p in enumerate(paths)]
        rss_growth = _rss_bytes() - rss_before
        delta_bytes = sum(d.nbytes for d in deltas)
        # Today's approach: a deep copy of the base (plus injected modules) per model; measured per method.
        copy_bytes = {}
        for i, case in enumerate(cases):
            model = load_artifact(paths[i], base)
            copy_bytes[case] = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
            del model
        full_copy = sum(copy_bytes[cases[i % len(cases)]] for i in range(len(paths)))
        mb = 1 / 2**20
        print_table(f"Serving memory, {len(paths)} fine-tuned models ({len(cases)} method/LayerNorm mixes, no full), "
                    f"{args.classes} classes; target: base + deltas <= 1.3x one base",
                    ["approach", "MB", "x one base"],
                    [["one base model", base_bytes * mb, 1.0],
                     ["base + deltas (tensor bytes)", (base_bytes + delta_bytes) * mb, (base_bytes + delta_bytes) / base_bytes],
                     ["  process RSS growth loading the deltas", rss_growth * mb, (base_bytes + rss_growth) / base_bytes],
                     ["full copy per model (today)", full_copy * mb, full_copy / base_bytes]])

        image = Image.fromarray((torch.rand(base.image_size * 2, base.image_size * 2, 3) * 255).byte().numpy())
        pixels = engine.pixels([image])
        requests = args.concurrent_requests

        def traffic(models: list) -> float:
            with ThreadPoolExecutor(requests) as pool:
                return timed(lambda: list(pool.map(lambda i: engine.probabilities([models[i % len(models)]], pixels), range(requests))),
                             device, args.predict_repeats)

        single = traffic(deltas[:1])
        mixed = traffic(deltas[: args.serving_mixed])
        print_table(f"Mixed traffic, {requests} concurrent one-image requests ({device.type}); target: mixed/single >= 0.8",
                    ["traffic", "img/s", "x single model"],
                    [["one model", requests / single, 1.0],
                     [f"spread over {args.serving_mixed} models", requests / mixed, single / mixed]])

        rows = []
        for m, mode in (("adapter", "none"), ("layernorm", "none"), ("linear_probe", "joint")):
            index = cases.index((m, mode))
            cold_paths = [paths[i] for i in range(index, len(paths), len(cases))][:args.predict_repeats]
            warm_delta = deltas[index]
            engine.probabilities([warm_delta], pixels)
            warm = timed(lambda: engine.probabilities([warm_delta], pixels), device, args.predict_repeats)
            cold_times = []
            for j, path in enumerate(cold_paths):  # each model once: its first prediction, from its files
                start = time.perf_counter()
                engine.probabilities([engine.on_device(("cold", path), engine.load(path))], pixels)
                sync(device)
                cold_times.append(time.perf_counter() - start)
            cold = statistics.median(cold_times)
            rows.append([f"{m} ({mode})", warm * 1000, cold * 1000, cold / warm])
        print_table(f"First prediction of a model not in memory, one image ({device.type}); target: cold/warm <= 1.2",
                    ["model", "warm ms", "cold ms", "cold/warm"], rows)
    finally:
        engine.close()
        shutil.rmtree(root, ignore_errors=True)


SECTIONS = {"train": section_train, "peft": section_peft, "zeroshot": section_zeroshot, "predict": section_predict,
            "gpu": section_gpu, "serving": section_serving, "compile": section_compile}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ViT-B-16", help="open_clip architecture, or a model-config JSON path")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--sections", default=None, help="comma-separated; default: all but gpu on a CPU, and compile")
    parser.add_argument("--batch", type=int, default=None, help="default: 8 on a CPU, 128 on a GPU")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--shots", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--views", type=int, default=RecipeBase.model_fields["feature_views"].default,
                        help="cached augmented views (default: the recipe's)")
    parser.add_argument("--steps", type=int, default=3, help="timed repeats after a warm-up")
    parser.add_argument("--peft-classes", type=lambda s: [int(x) for x in s.split(",")], default=[10, 100])
    parser.add_argument("--zeroshot-classes", type=int, default=100)
    parser.add_argument("--predict-repeats", type=int, default=10)
    parser.add_argument("--concurrent-requests", type=int, default=64)
    parser.add_argument("--predict-batch", type=int, default=32)
    parser.add_argument("--serving-models", type=int, default=200, help="fine-tuned models in the serving section")
    parser.add_argument("--serving-mixed", type=int, default=50, help="models the mixed traffic is spread over")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak (H100/H200 SXM: 989)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args(argv)

    logging.getLogger().setLevel(logging.ERROR)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.batch = args.batch or (128 if device.type == "cuda" else 8)
    # compile runs only when asked: it compiles three models (minutes on a CPU).
    sections = args.sections.split(",") if args.sections else [
        s for s in SECTIONS if (s != "gpu" or device.type == "cuda") and s != "compile"]
    name = args.model
    base = load_base_model(ModelSpec(name=name), device=device)
    print(f"# clipadapt benchmark: {name} (random weights), {device} "
          f"({torch.cuda.get_device_name(device) if device.type == 'cuda' else f'{torch.get_num_threads()} CPU threads'}), "
          f"torch {torch.__version__}")
    for section in sections:
        SECTIONS[section](base, args, device)


if __name__ == "__main__":
    main()
