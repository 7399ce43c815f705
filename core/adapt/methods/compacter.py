"""Compacters (section 3.2, Mahabadi et al. 2021): the adapter bottleneck with PHM projections,
W = sum_i A_i kron (s_i t_i^T), n = 4 shared 4x4 matrices A_i and rank-1 local weights (appendix A.3).
19,360 parameters on ViT-B/16."""

from __future__ import annotations

import functools
import math
from types import SimpleNamespace
from typing import Literal

from pydantic import Field

from core.adapt.methods.base import Method, ParamCount, RecipeBase
from core.adapt.methods.common import TRAIN_TEMPLATES, inject_after_mlp


class CompacterConfig(RecipeBase):
    method: Literal["compacter"] = "compacter"
    bottleneck: int = Field(24, ge=1, le=4096, description="Bottleneck dimension (divisible by phm_n).")
    phm_n: int = Field(4, ge=1, le=64, description="Number n of shared n x n PHM matrices.")


@functools.cache
def layer_types() -> SimpleNamespace:
    """The compacter's layers, defined on first use: importing the recipe (the API does) must not import torch."""
    import torch
    from torch import nn

    class PHMLinear(nn.Module):
        """Parameterized hypercomplex linear layer (Mahabadi et al., 2021): W = sum_i A_i kron (s_i t_i^T),
        with the n x n matrices A_i shared across layers and rank-1 s_i t_i^T."""

        def __init__(self, in_features: int, out_features: int, rule: nn.Parameter, zero_init: bool = False):
            super().__init__()
            n = rule.shape[0]
            if in_features % n or out_features % n:
                raise ValueError(f"PHM layer sizes {in_features}x{out_features} must be divisible by n={n}")
            # Held in a tuple so that it is not registered here: the owner registers it once (one name
            # in state dicts and artifacts, one copy in the optimizer).
            self._shared = (rule,)
            self.s = nn.Parameter(torch.empty(n, in_features // n, 1))
            self.t = nn.Parameter(torch.empty(n, 1, out_features // n))
            self.bias = nn.Parameter(torch.zeros(out_features))
            bound = 1.0 / math.sqrt(in_features)
            nn.init.uniform_(self.s, -bound, bound)
            nn.init.uniform_(self.t, -bound, bound)
            if zero_init:
                nn.init.zeros_(self.s)

        def weight(self) -> torch.Tensor:
            # kron(A_i [n,n], s_i t_i^T [in/n, out/n]) summed over i -> [in, out]
            rule = self._shared[0]
            n = rule.shape[0]
            low_rank = self.s @ self.t  # [n, in/n, out/n]
            w = torch.einsum("iab,icd->acbd", rule, low_rank)
            return w.reshape(n * low_rank.shape[1], n * low_rank.shape[2])

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x @ self.weight().to(x.dtype) + self.bias.to(x.dtype)

    class Compacter(nn.Module):
        """The adapter bottleneck with PHM projections; identity before training (the up-projection's s
        starts at zero)."""

        def __init__(self, width: int, bottleneck: int, rule: nn.Parameter):
            super().__init__()
            self.down = PHMLinear(width, bottleneck, rule)
            self.act = nn.GELU()
            self.up = PHMLinear(bottleneck, width, rule, zero_init=True)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + self.up(self.act(self.down(x)))

    return SimpleNamespace(PHMLinear=PHMLinear, Compacter=Compacter)


def build(clip, classnames, tokenizer, recipe: CompacterConfig):
    import torch
    from torch import nn

    from core.adapt.modules import TemplateHead, text_width

    n = recipe.phm_n
    rule = nn.Parameter(torch.randn(n, n, n) / n)  # the A_i, shared by every compacter layer
    clip.transformer.register_parameter("compacter_rule", rule)
    compacter, width = layer_types().Compacter, text_width(clip)
    inject_after_mlp(clip, lambda: compacter(width, recipe.bottleneck, rule))
    return TemplateHead(tokenizer, classnames, recipe.templates or TRAIN_TEMPLATES)


METHOD = Method(
    "compacter", CompacterConfig,
    "PHM bottleneck (24, n = 4, shared 4×4 `A_i`, rank-1 `s_i t_iᵀ`) in every text block",
    build,
    vit_b16=ParamCount(19_360),
    trains=r"^clip\.transformer\.(resblocks\.\d+\.mlp\.adapter\.|compacter_rule$)",
)
