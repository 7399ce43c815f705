"""Adapters (section 3.2, Houlsby et al. 2019): a bottleneck (down, nonlinearity, up, residual) after
the feed-forward layer of every text-encoder block, initialized to the identity. Bottleneck 24
(appendix A.3): 301,344 parameters on ViT-B/16."""

from __future__ import annotations

import functools
from typing import Literal

from pydantic import Field

from core.adapt.methods.base import Method, ParamCount, RecipeBase
from core.adapt.methods.common import TRAIN_TEMPLATES, inject_after_mlp


class AdapterConfig(RecipeBase):
    method: Literal["adapter"] = "adapter"
    bottleneck: int = Field(24, ge=1, le=4096, description="Adapter bottleneck dimension.")


@functools.cache
def layer_type():
    """The adapter layer, defined on first use: importing the recipe (the API does) must not import torch."""
    from torch import nn

    class Adapter(nn.Module):
        """Houlsby bottleneck: x + up(gelu(down(x))). The up-projection starts at zero, so the block is
        the identity before training."""

        def __init__(self, width: int, bottleneck: int):
            super().__init__()
            self.down = nn.Linear(width, bottleneck)
            self.act = nn.GELU()
            self.up = nn.Linear(bottleneck, width)
            nn.init.zeros_(self.up.weight)
            nn.init.zeros_(self.up.bias)

        def forward(self, x):
            return x + self.up(self.act(self.down(x)))

    return Adapter


def build(clip, classnames, tokenizer, recipe: AdapterConfig):
    from core.adapt.modules import TemplateHead, text_width

    adapter, width = layer_type(), text_width(clip)
    inject_after_mlp(clip, lambda: adapter(width, recipe.bottleneck))
    return TemplateHead(tokenizer, classnames, recipe.templates or TRAIN_TEMPLATES)


METHOD = Method(
    "adapter", AdapterConfig,
    "bottleneck 24 (down, GELU, up, residual; identity at start) in every text block",
    build,
    vit_b16=ParamCount(301_344),
    trains=r"^clip\.transformer\.resblocks\.\d+\.mlp\.adapter\.",
)
