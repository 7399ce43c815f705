"""Full fine-tuning (section 3.1): every parameter of both encoders, the projections and the logit
scale. The paper reports it unstable at the shared learning rate of 5e-4; 1e-5 (the usual CLIP
fine-tuning rate) is the default here. 149,620,737 parameters on ViT-B/16."""

from __future__ import annotations

from typing import ClassVar, Literal

from core.adapt.methods.base import Method, ParamCount, RecipeBase
from core.adapt.methods.common import TRAIN_TEMPLATES


class FullConfig(RecipeBase):
    method: Literal["full"] = "full"
    default_lr: ClassVar[float] = 1e-5
    supports_layernorm: ClassVar[bool] = False  # LayerNorms are already trained


def build(clip, classnames, tokenizer, recipe: FullConfig):
    from core.adapt.modules import TemplateHead, set_trainable

    set_trainable(clip.parameters())
    return TemplateHead(tokenizer, classnames, recipe.templates or TRAIN_TEMPLATES)


METHOD = Method(
    "full", FullConfig,
    "everything (default learning rate 1e-5: the paper's 5e-4 is unstable here)",
    build,
    vit_b16=ParamCount(149_620_737),
    trains=r"^clip\.",
)
