"""LayerNorm tuning (section 3.1): gamma and beta of every LayerNorm in both encoders, optionally only
in the last K blocks of each (Figure 7). 65,536 parameters on ViT-B/16."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from core.adapt.methods.base import Method, RecipeBase

TRAIN_TEMPLATES = ["a photo of a {}."]


class LayerNormConfig(RecipeBase):
    method: Literal["layernorm"] = "layernorm"
    last_blocks: int | None = Field(
        None, ge=0, description="Tune only the LayerNorms of each encoder's last K blocks (and its final LayerNorm)."
    )
    supports_layernorm: ClassVar[bool] = False  # it already is LayerNorm tuning


def build(clip, classnames, tokenizer, recipe: LayerNormConfig):
    from core.adapt.modules import TemplateHead, layernorm_parameters, set_trainable

    set_trainable(layernorm_parameters(clip, last_blocks=recipe.last_blocks))
    return TemplateHead(tokenizer, classnames, recipe.templates or TRAIN_TEMPLATES)


METHOD = Method("layernorm", LayerNormConfig, "LayerNorm gamma and beta of both encoders.", build)
