"""LayerNorm tuning (section 3.1): gamma and beta of every LayerNorm in both encoders, optionally only
in the last K blocks of each (Figure 7). 65,536 parameters on ViT-B/16."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from core.adapt.methods.base import Method, ParamCount, RecipeBase
from core.adapt.methods.common import TRAIN_TEMPLATES


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


# Every LayerNorm of both towers: the image tower's ln_pre, ln_post and block norms, the text blocks'
# norms and ln_final.
LAYERNORM_NAMES = (
    r"^clip\.(visual\.(ln_pre|ln_post|transformer\.resblocks\.\d+\.ln_[12])|transformer\.resblocks\.\d+\.ln_[12]|ln_final)"
    r"\.(weight|bias)$"
)

METHOD = Method(
    "layernorm", LayerNormConfig,
    "gamma and beta of every LayerNorm in both encoders (optionally the last K blocks)",
    build,
    vit_b16=ParamCount(65_536),
    trains=LAYERNORM_NAMES,
)
