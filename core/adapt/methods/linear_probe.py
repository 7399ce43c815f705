"""Linear probe (section 3.2): a linear layer on the frozen image features before the projection
into the shared embedding space; the text encoder is not used. 769 x classes parameters on ViT-B/16."""

from __future__ import annotations

import functools
from typing import Literal

from core.adapt.methods.base import Method, ParamCount, RecipeBase


class LinearProbeConfig(RecipeBase):
    method: Literal["linear_probe"] = "linear_probe"


@functools.cache
def head_type():
    """The linear head, defined on first use: importing the recipe (the API does) must not import torch."""
    from torch import nn

    from core.adapt.modules import Head

    class LinearHead(Head):
        """Linear probe on the image features before the projection (section 3.2); the text tower is unused."""

        projected = False
        uses_text = False

        def __init__(self, in_features: int, num_classes: int):
            super().__init__()
            self.linear = nn.Linear(in_features, num_classes)

        def class_embeddings(self, clip: nn.Module) -> None:
            return None

        def logits(self, features, class_embeddings: None, clip: nn.Module):
            return self.linear(features.to(self.linear.weight.dtype))

    return LinearHead


def build(clip, classnames, tokenizer, recipe: LinearProbeConfig):
    from core.adapt.modules import image_feature_dim

    return head_type()(image_feature_dim(clip, projected=False), len(classnames))


METHOD = Method(
    "linear_probe", LinearProbeConfig,
    "a linear layer on the image features before the projection; text encoder unused",
    build,
    vit_b16=ParamCount(0, per_class=769),
    trains=r"^head\.linear\.(weight|bias)$",
)
