"""Adapters (section 3.2, Houlsby et al. 2019): a bottleneck (down, nonlinearity, up, residual) after
the feed-forward layer of every text-encoder block, initialized to the identity. Bottleneck 24
(appendix A.3): 301,344 parameters on ViT-B/16."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from core.adapt.methods.base import Method, RecipeBase
from core.adapt.methods.layernorm import TRAIN_TEMPLATES


class AdapterConfig(RecipeBase):
    method: Literal["adapter"] = "adapter"
    bottleneck: int = Field(24, ge=1, le=4096, description="Adapter bottleneck dimension.")


def build(clip, classnames, tokenizer, recipe: AdapterConfig):
    from core.adapt.modules import Adapter, TemplateHead, inject_after_mlp, text_width

    width = text_width(clip)
    inject_after_mlp(clip, lambda: Adapter(width, recipe.bottleneck))
    return TemplateHead(tokenizer, classnames, recipe.templates or TRAIN_TEMPLATES)


METHOD = Method("adapter", AdapterConfig, "Bottleneck adapters in every text-encoder block.", build)
