"""Linear probe (section 3.2): a linear layer on the frozen image features before the projection
into the shared embedding space; the text encoder is not used. 769 x classes parameters on ViT-B/16."""

from __future__ import annotations

from typing import Literal

from core.adapt.methods.base import Method, RecipeBase


class LinearProbeConfig(RecipeBase):
    method: Literal["linear_probe"] = "linear_probe"


def build(clip, classnames, tokenizer, recipe: LinearProbeConfig):
    from core.adapt.modules import LinearHead, image_feature_dim

    return LinearHead(image_feature_dim(clip, projected=False), len(classnames))


METHOD = Method("linear_probe", LinearProbeConfig, "Linear layer on pre-projection image features.", build)
