"""Build the clipadapt-starter model directory: pretrain, save, evaluate, write the model card.

The directory holds what the catalog entry `clipadapt-starter` loads (the open_clip model config and
fp16 safetensors weights) and what a reader checks (MODEL_CARD.md, loss.png, results.json with the
pretraining settings and the zero-shot results). The results are measured on the saved fp16 weights,
loaded the way the service loads them.
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from core.starter import render
from core.starter.evaluation import zero_shot_report
from core.starter.pretrain import PretrainConfig, pretrain

NAME = "clipadapt-starter"
STARTER_DIR = Path(__file__).resolve().parent / NAME
CONFIG_FILE = f"{NAME}.json"
WEIGHTS_FILE = "weights.safetensors"
# The bar for a usable starter: zero-shot top-1 over all colour x shape classes.
TARGETS = {"seen": 0.90, "held_out": 0.70}


def save_model(model: Any, architecture: dict[str, Any], out: Path) -> None:
    import torch
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    (out / CONFIG_FILE).write_text(json.dumps(architecture, indent=2) + "\n")
    tensors = {name: tensor.detach().to(torch.float16).contiguous() for name, tensor in model.state_dict().items()}
    save_file(tensors, out / WEIGHTS_FILE, metadata={"format": "pt"})


def plot_loss(history: list[dict[str, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    steps = np.array([h["step"] for h in history])
    loss = np.array([h["loss"] for h in history])
    window = max(1, len(loss) // 60)
    smooth = np.convolve(loss, np.ones(window) / window, mode="valid")
    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
    ax.plot(steps, loss, color="#c7d3e8", linewidth=0.6, label="per step")
    ax.plot(steps[window - 1:], smooth, color="#1f4e9c", linewidth=1.6, label=f"mean of {window} steps")
    ax.set_xlabel("step")
    ax.set_ylabel("CLIP loss")
    ax.set_title("clipadapt-starter pretraining")
    ax.grid(alpha=0.3)
    ax.legend(frameon=False)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _pct(value: float) -> str:
    return f"{100 * value:.1f}%"


def model_card(results: dict[str, Any]) -> str:
    config, zs, run = results["config"], results["zero_shot"], results["run"]
    arch = config["architecture"]
    gen, mpl = zs["generator"], zs["matplotlib"]

    def row(name: str, part: dict[str, Any]) -> str:
        return f"| {name} | {part['images']} | {_pct(part['top1'])} | {_pct(part['colour'])} | {_pct(part['shape'])} |"

    held = ", ".join(f"{c} {s}" for c, s in sorted(render.HELD_OUT_PAIRS))
    return f"""# clipadapt-starter

A small CLIP that this project pretrains itself, from scratch, on procedurally drawn and captioned
images: nothing is downloaded. It exists so that adaptation can be shown to *work* offline: its
zero-shot accuracy and what fine-tuning adds to it mean something, unlike a random-weights model's.
It knows colours, simple shapes, counts, sizes, positions, backgrounds and
rendered digits and letters, and nothing else.

Rebuild it with `clipadapt pretrain-starter --out DIR` ({config['steps']:,} steps; the committed
files came from exactly that command). The run is defined by its step count and seed, so a rebuild
gives the same model up to floating-point summation order, and the zero-shot results below within
noise.

## Model

- open_clip CLIP ({CONFIG_FILE}): vision transformer {arch['vision_cfg']['image_size']} px, patch
  {arch['vision_cfg']['patch_size']}, width {arch['vision_cfg']['width']}, {arch['vision_cfg']['layers']} layers;
  text transformer width {arch['text_cfg']['width']}, {arch['text_cfg']['layers']} layers, context
  {arch['text_cfg']['context_length']} tokens, open_clip's tokenizer; embeddings of {arch['embed_dim']}.
  {results['parameters']:,} parameters, stored in fp16 ({WEIGHTS_FILE}, {results['weights_mb']:.1f} MB).
- Preprocessing: open_clip's (bicubic resize of the shorter side, centre crop, OpenAI mean and std).

## Data

Drawn by `core/starter/render.py`, one scene per training pair, never repeated:
- 11 colours ({', '.join(render.COLOURS)}) with shade jitter, 8 shapes ({', '.join(render.SHAPES)}),
  one to three copies, three sizes, five positions, four backgrounds (plain, gradient, noise,
  stripes) in low-saturation colours that contrast with the object; digits and capital letters in
  {len(render.FONTS)} fonts.
- Jitter: canvas 32-224 px, scale, rotation (mostly upright with a small tilt, one shape in six at
  any angle), position, aspect, anti-aliased or hard edges, blur, JPEG compression.
- Captions from varied templates, including the 80 OpenAI prompt templates, mentioning size,
  position and background only sometimes: "a photo of a small red circle on a striped background",
  "two green stars", "the letter k".
- Held out of pretraining entirely (never drawn): {held}.

## Training

CLIP loss (symmetric cross-entropy, learned temperature), where every caption in the batch that is
true of an image counts as its match (the generator knows what each caption states: "a red circle"
describes every red circle, so it is not a negative for them). AdamW (lr {config['lr']:g}, betas
0.9/0.98, weight decay {config['weight_decay']:g} except gains, biases and temperature),
{config['warmup_steps']} warm-up steps then cosine to zero, batch {config['batch_size']},
{config['steps']:,} steps ({config['steps'] * config['batch_size']:,} image-caption pairs, each drawn once).
A curriculum: the first scenes are one larger object on a plain or gradient background; from halfway
on every kind of scene is as likely as it gets. Seed {config['seed']}.

Measured run: {run['wall_minutes']:.1f} minutes on {run['machine']} ({run['pairs_per_second']:.0f} pairs/s).
{run.get('note', '')}

![loss](loss.png)

## Zero-shot results

Top-1 over all {zs['classes']} colour x shape classes ("red circle", ...) with the service's zero-shot
classifier (80-template ensemble), on images the model never saw, one object each. "colour" and "shape": how often the
predicted class had the right colour, or the right shape.

| images | count | top-1 | colour | shape |
|---|---|---|---|---|
{row("generator, pairs seen in pretraining", gen['seen'])}
{row("generator, held-out pairs", gen['held_out'])}
{row("matplotlib markers, seen pairs", mpl['seen'])}
{row("matplotlib markers, held-out pairs", mpl['held_out'])}

Generator images come from another seed than pretraining ({config['eval_seed']}). The matplotlib
images are drawn by another renderer altogether (markers and CSS colour names, `saddlebrown` for
brown since CSS brown is a dark red): closer to what a user's own drawings look like.
Targets: {_pct(TARGETS['seen'])} on seen pairs, {_pct(TARGETS['held_out'])} on held-out pairs.

## Limits

It has never seen a photograph. Class names outside its vocabulary (animals, objects, Greek
letters) get near-chance zero-shot accuracy: that is what the `greek` downstream task measures.
"""


def build(out: str | Path, config: PretrainConfig | None = None, progress: Any = None) -> dict[str, Any]:
    """Pretrain, save and evaluate into `out`; returns what results.json holds."""
    import torch

    from core.adapt.models import ModelSpec, load_base_model

    config = config or PretrainConfig()
    out = Path(out)
    started = time.monotonic()
    model, history = pretrain(config, on_step=progress)
    wall = time.monotonic() - started
    save_model(model, config.architecture, out)
    base = load_base_model(ModelSpec(name=str(out / CONFIG_FILE), pretrained=str(out / WEIGHTS_FILE)))
    results = {
        "model": NAME,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config": asdict(config),
        "parameters": sum(p.numel() for p in model.parameters()),
        "weights_mb": (out / WEIGHTS_FILE).stat().st_size / 1e6,
        "run": {
            "wall_minutes": wall / 60,
            "pairs_per_second": config.steps * config.batch_size / wall,
            "machine": f"{os.cpu_count()} CPU cores ({platform.machine()}), torch {torch.__version__}, {torch.get_num_threads()} threads",
        },
        "zero_shot": zero_shot_report(base, config.eval_seed, per_pair=config.eval_per_pair),
        "targets": TARGETS,
    }
    plot_loss(history, out / "loss.png")
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "MODEL_CARD.md").write_text(model_card(results))
    return results
