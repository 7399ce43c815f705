"""LoRA (Hu et al. 2021) as CLIP-LoRA uses it for few-shot CLIP (Zanella & Ben Ayed 2024): a rank-2
update B A (scaled by alpha / rank, alpha 1) on the query, key and value projections of every block of
both encoders, dropout 0.25 on the update's input, AdamW at 2e-4 with a cosine schedule, batch 32 and
500 x shots iterations. 184,320 parameters on ViT-B/16 (12 blocks x 3 projections x 2 x (2 x 768) in the
image tower, the same with 512 in the text tower).

open_clip fuses q, k and v into one `attn.in_proj_weight` (which peft cannot wrap, peft#761). The update
is a torch parametrization of that tensor (and of `attn.out_proj.weight` for the output projection), so
every reader of the weight, open_clip's forward and the fast path in core/adapt/fast.py alike, sees
W + (alpha / rank) B A; the blocks stay plain `ResidualAttentionBlock`s and keep the fast path. For
prediction the update is folded into W (`merge`): no extra latency. Artifacts hold only A and B.

Dropout: a weight parametrization never sees the layer's input, so instead of dropping input features
per token, a dropout mask on the input features (columns of A) is drawn each time the weight is
computed, i.e. once per block forward, shared by the tokens of the batch. Same expectation, one mask
per step instead of one per token.
"""

from __future__ import annotations

import functools
import math
from typing import ClassVar, Literal

from pydantic import Field, field_validator

from core.adapt.methods.base import MAX_EPOCHS, Method, ParamCount, RecipeBase, ScheduleError
from core.adapt.methods.common import TRAIN_TEMPLATES

Target = Literal["q", "k", "v", "out"]
Encoder = Literal["image", "text"]
QKV = ("q", "k", "v")  # the row blocks of open_clip's fused in_proj_weight, in this order


class LoraConfig(RecipeBase):
    method: Literal["lora"] = "lora"
    rank: int = Field(2, ge=1, le=1024, description="Rank r of each low-rank update B A.")
    alpha: float = Field(1.0, gt=0, le=1e4, description="The update is scaled by alpha / rank.")
    dropout: float = Field(0.25, ge=0, lt=1, description="Dropout on the update's input features while training.")
    targets: list[Target] = Field(
        ["q", "k", "v"], min_length=1, description="Attention projections to adapt: any of 'q', 'k', 'v', 'out'."
    )
    encoders: list[Encoder] = Field(["image", "text"], min_length=1, description="Encoders to adapt: 'image', 'text'.")
    iterations_per_shot: int = Field(
        500, ge=1, le=100_000,
        description="With shots set and epochs null, train for this many optimizer steps per shot (CLIP-LoRA: 500).",
    )
    weight_decay: float = Field(0.01, ge=0, le=1.0, description="AdamW weight decay (CLIP-LoRA: 0.01).")
    default_lr: ClassVar[float] = 2e-4

    @field_validator("targets", "encoders")
    @classmethod
    def _no_repeats(cls, values: list[str]) -> list[str]:
        if len(set(values)) != len(values):
            raise ValueError(f"{values} names an entry twice")
        return values

    def resolved_epochs(self, train_size: int | None = None) -> int:
        """CLIP-LoRA's schedule is 500 x shots optimizer steps; in epochs of ceil(train_size / batch_size)
        steps, rounded up. Without shots (all training images) it is the paper's epoch rule.

        Few classes make few steps an epoch, so the derived count can pass MAX_EPOCHS (16 shots of 10
        classes: 1,600). That is refused (ScheduleError) rather than cut short: capping would silently
        train a schedule other than the one asked for, and every epoch adds a validation pass."""
        if self.epochs is not None or self.shots is None or not train_size:
            return super().resolved_epochs(train_size)
        steps_per_epoch = math.ceil(train_size / min(self.batch_size, train_size))
        steps = self.iterations_per_shot * self.shots
        epochs = math.ceil(steps / steps_per_epoch)
        if epochs > MAX_EPOCHS:
            most = MAX_EPOCHS * steps_per_epoch // self.shots
            fix = f"epochs (at most {MAX_EPOCHS})" + (f" or iterations_per_shot (at most {most} on this data)" if most else "")
            raise ScheduleError(
                f"lora: iterations_per_shot {self.iterations_per_shot} x {self.shots} shots = {steps:,} steps; "
                f"{train_size} training images in batches of {min(self.batch_size, train_size)} make "
                f"{steps_per_epoch} steps an epoch, so {epochs:,} epochs, more than the limit of {MAX_EPOCHS}. "
                f"Set {fix}"
            )
        return epochs


@functools.cache
def layer_type():
    """The parametrization, defined on first use: importing the recipe (the API does) must not import torch."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    class LowRankUpdate(nn.Module):
        """W [blocks x out, in] -> W + (alpha / rank) B_t A_t on each targeted row block t of W (q, k, v of
        a fused in-projection: 3 blocks; an output projection: 1). B starts at zero: the identity."""

        def __init__(self, blocks: int, targets: list[int], out_features: int, in_features: int,
                     rank: int, alpha: float, dropout: float):
            super().__init__()
            self.blocks, self.targets = blocks, list(targets)
            self.scale, self.dropout = alpha / rank, dropout
            self.lora_a = nn.Parameter(torch.empty(len(targets), rank, in_features))
            self.lora_b = nn.Parameter(torch.zeros(len(targets), out_features, rank))
            for a in self.lora_a:  # as nn.Linear (and loralib) initialize a weight of this shape
                nn.init.kaiming_uniform_(a, a=math.sqrt(5))

        def forward(self, weight: torch.Tensor) -> torch.Tensor:
            a = self.lora_a
            if self.training and self.dropout:
                mask = torch.ones(a.shape[0], 1, a.shape[2], dtype=a.dtype, device=a.device)
                a = a * F.dropout(mask, self.dropout, training=True)
            return updated_weight(weight, a, self.lora_b, self.blocks, self.targets, self.scale)

    return LowRankUpdate


def updated_weight(weight, a, b, blocks: int, targets: list[int], scale: float):
    """W + scale B_t A_t on each targeted row block t of W (the update's arithmetic, also used by serving,
    which keeps A and B per model and computes the weight per batch)."""
    import torch

    delta = (b @ a) * scale  # [targets, out, in]
    if list(targets) != list(range(blocks)):
        rows = [torch.zeros_like(delta[0])] * blocks
        for slot, block in enumerate(targets):
            rows[block] = delta[slot]
        delta = torch.stack(rows)
    return weight + delta.reshape(weight.shape).to(weight.dtype)


def update_layout(recipe: dict, weight_name: str) -> tuple[int, list[int], float]:
    """(row blocks, targeted blocks, scale) of the update on `weight_name` ('in_proj_weight' or 'weight'
    of an out_proj) under a recipe as an artifact's manifest records it."""
    config = LoraConfig.model_validate(recipe)
    scale = config.alpha / config.rank
    if weight_name == "in_proj_weight":
        return 3, [QKV.index(t) for t in QKV if t in config.targets], scale
    return 1, [0], scale


def _attentions(clip, encoders: list[str]):
    towers = {"image": clip.visual.transformer.resblocks, "text": clip.transformer.resblocks}
    return [block.attn for encoder in encoders for block in towers[encoder]]


def build(clip, classnames, tokenizer, recipe: LoraConfig):
    from torch.nn.utils import parametrize

    from core.adapt.modules import TemplateHead

    update = layer_type()
    qkv = [QKV.index(t) for t in QKV if t in recipe.targets]
    for attn in _attentions(clip, recipe.encoders):
        width = attn.embed_dim
        if qkv:
            parametrize.register_parametrization(
                attn, "in_proj_weight", update(3, qkv, width, width, recipe.rank, recipe.alpha, recipe.dropout)
            )
        if "out" in recipe.targets:
            parametrize.register_parametrization(
                attn.out_proj, "weight", update(1, [0], width, width, recipe.rank, recipe.alpha, recipe.dropout)
            )
    return TemplateHead(tokenizer, classnames, recipe.templates or TRAIN_TEMPLATES)


def merge(clip) -> None:
    """Fold every update into its weight (evaluated without dropout) and drop A and B."""
    import torch
    from torch.nn.utils import parametrize

    for module in list(clip.modules()):
        for name in list(getattr(module, "parametrizations", {}) or {}):
            parametrizations = module.parametrizations[name]
            if any(isinstance(p, layer_type()) for p in parametrizations):
                parametrizations.eval().requires_grad_(False)
                with torch.no_grad():
                    parametrize.remove_parametrizations(module, name, leave_parametrized=True)


METHOD = Method(
    "lora", LoraConfig,
    "rank-2 LoRA (alpha 1, dropout 0.25) on q, k, v of every block of both encoders (CLIP-LoRA)",
    build,
    vit_b16=ParamCount(184_320),
    trains=r"^clip\.(visual\.)?transformer\.resblocks\.\d+\.attn\.(out_proj\.)?parametrizations\.(in_proj_weight|weight)\.0\.lora_[ab]$",
    merge=merge,
)
