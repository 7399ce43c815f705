"""What several methods share and that is no method's own: the training prompt and where injected
layers go. Torch-free at import time, like every module of this package (the API imports it)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

# One prompt per class during training keeps each step cheap (section 4 uses one template too);
# `templates` in the recipe overrides it.
TRAIN_TEMPLATES = ["a photo of a {}."]


def inject_after_mlp(clip: Any, make: Callable[[], Any]) -> None:
    """Append a module after the feed-forward layer of every text-encoder block (Houlsby et al.).

    open_clip's block MLP is an nn.Sequential, so the module simply becomes its last element; the
    block's own code (and `mlp.c_fc`, which open_clip reads for its dtype) stays untouched.
    """
    for block in clip.transformer.resblocks:
        block.mlp.add_module("adapter", make())
