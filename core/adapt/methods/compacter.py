"""Compacters (section 3.2, Mahabadi et al. 2021): the adapter bottleneck with PHM projections,
W = sum_i A_i kron (s_i t_i^T), n = 4 shared 4x4 matrices A_i and rank-1 local weights (appendix A.3).
19,360 parameters on ViT-B/16."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from core.adapt.methods.base import Method, RecipeBase
from core.adapt.methods.layernorm import TRAIN_TEMPLATES


class CompacterConfig(RecipeBase):
    method: Literal["compacter"] = "compacter"
    bottleneck: int = Field(24, ge=1, le=4096, description="Bottleneck dimension (divisible by phm_n).")
    phm_n: int = Field(4, ge=1, le=64, description="Number n of shared n x n PHM matrices.")


def build(clip, classnames, tokenizer, recipe: CompacterConfig):
    import torch
    from torch import nn

    from core.adapt.modules import Compacter, TemplateHead, inject_after_mlp, text_width

    n = recipe.phm_n
    rule = nn.Parameter(torch.randn(n, n, n) / n)  # the A_i, shared by every compacter layer
    clip.transformer.register_parameter("compacter_rule", rule)
    width = text_width(clip)
    inject_after_mlp(clip, lambda: Compacter(width, recipe.bottleneck, rule))
    return TemplateHead(tokenizer, classnames, recipe.templates or TRAIN_TEMPLATES)


METHOD = Method("compacter", CompacterConfig, "PHM (hypercomplex) adapters in every text-encoder block.", build)
