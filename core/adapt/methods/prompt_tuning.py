"""Prompt tuning (section 3.2, appendix A.3): 8 learned context vectors of the text width prepended to
the raw class-name token embeddings, without a template. 4,096 parameters on ViT-B/16."""

from __future__ import annotations

import functools
from typing import Literal

from pydantic import Field

from core.adapt.methods.base import Method, ParamCount, RecipeBase


class PromptTuningConfig(RecipeBase):
    method: Literal["prompt_tuning"] = "prompt_tuning"
    n_ctx: int = Field(8, ge=1, le=64, description="Number of learned context vectors.")
    init_std: float = Field(0.02, gt=0, description="Standard deviation of the context vectors' initialization.")


@functools.cache
def head_type():
    """The prompt head, defined on first use: importing the recipe (the API does) must not import torch."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    from core.adapt.modules import Head, encode_text_embeddings, trim_tokens

    class PromptHead(Head):
        """Learned context vectors prepended to the raw class-name tokens, no template:
        [SOT] ctx_1..ctx_n name... [EOT]."""

        def __init__(self, tokenizer, classnames: list[str], n_ctx: int, width: int, context_length: int, init_std: float):
            super().__init__()
            tokens, eot_index = trim_tokens(tokenizer(classnames))
            if int(eot_index.max()) + 1 + n_ctx > context_length:
                longest = classnames[int(eot_index.argmax())]
                raise ValueError(f"class name {longest!r} is too long for {n_ctx} prompt vectors in a {context_length}-token context")
            self.ctx = nn.Parameter(torch.randn(n_ctx, width) * init_std)
            self.register_buffer("tokens", tokens, persistent=False)
            self.register_buffer("eot_index", eot_index + n_ctx, persistent=False)

        def class_embeddings(self, clip: nn.Module) -> torch.Tensor:
            names = clip.token_embedding(self.tokens)
            ctx = self.ctx.to(names.dtype).expand(names.shape[0], -1, -1)
            embeddings = torch.cat([names[:, :1], ctx, names[:, 1:]], dim=1)
            # [SOT] + context is the same for every class.
            return F.normalize(encode_text_embeddings(clip, embeddings, self.eot_index, prefix_length=1 + len(self.ctx)), dim=-1)

    return PromptHead


def build(clip, classnames, tokenizer, recipe: PromptTuningConfig):
    from core.adapt.modules import text_width

    context_length = clip.positional_embedding.shape[0]
    return head_type()(tokenizer, classnames, recipe.n_ctx, text_width(clip), context_length, recipe.init_std)


METHOD = Method(
    "prompt_tuning", PromptTuningConfig,
    "8 context vectors prepended to the raw class-name tokens (no template)",
    build,
    vit_b16=ParamCount(4_096),
    trains=r"^head\.ctx$",
)
