"""Prompt tuning (section 3.2, appendix A.3): 8 learned context vectors of the text width prepended to
the raw class-name token embeddings, without a template. 4,096 parameters on ViT-B/16."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from core.adapt.methods.base import Method, RecipeBase


class PromptTuningConfig(RecipeBase):
    method: Literal["prompt_tuning"] = "prompt_tuning"
    n_ctx: int = Field(8, ge=1, le=64, description="Number of learned context vectors.")
    init_std: float = Field(0.02, gt=0, description="Standard deviation of the context vectors' initialization.")


def build(clip, classnames, tokenizer, recipe: PromptTuningConfig):
    from core.adapt.modules import PromptHead, text_width

    context_length = clip.positional_embedding.shape[0]
    return PromptHead(tokenizer, classnames, recipe.n_ctx, text_width(clip), context_length, recipe.init_std)


METHOD = Method("prompt_tuning", PromptTuningConfig, "Learned context vectors before the class-name tokens.", build)
