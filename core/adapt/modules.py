"""Torch building blocks shared by the methods: text encoding, the head interface and the template
head, parameter selection. A method's own layers live in its file in `core/adapt/methods/`.

Everything here works on an open_clip `CLIP` model (built-in text tower). The text encoder is run through
`encode_text_embeddings`, which accepts token *embeddings* (so prompt tuning can insert learned vectors)
and trims the sequence to the longest prompt: with CLIP's causal mask the tokens up to the end-of-text
token never attend to the padding after it, so the result equals the full 77-token pass.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from core.adapt import fast

# ---------------------------------------------------------------------------------------------------
# Text encoding


def text_width(clip: nn.Module) -> int:
    return clip.token_embedding.weight.shape[1]


def encode_text_embeddings(clip: nn.Module, embeddings: torch.Tensor, eot_index: torch.Tensor, prefix_length: int = 0) -> torch.Tensor:
    """Run CLIP's text transformer on token embeddings [N, L, W]; returns projected features [N, D].

    `prefix_length`: how many leading positions are identical in every row (computed once then)."""
    length = embeddings.shape[1]
    x = embeddings + clip.positional_embedding[:length].to(embeddings.dtype)
    causal = clip.attn_mask is not None
    if fast.supported(clip.transformer.resblocks) and causal and prefix_length > 0 and len(x) > 1:
        x = clip.ln_final(fast.text_forward_shared_prefix(clip.transformer.resblocks, x, prefix_length, eot_index))
    elif fast.supported(clip.transformer.resblocks):
        x = clip.ln_final(fast.transformer_forward(clip.transformer.resblocks, x, causal, eot_index))
    else:
        attn_mask = clip.attn_mask[:length, :length] if clip.attn_mask is not None else None
        x = clip.ln_final(clip.transformer(x, attn_mask=attn_mask))
        x = x[torch.arange(x.shape[0], device=x.device), eot_index]
    projection = clip.text_projection
    if projection is None:
        return x
    return projection(x) if isinstance(projection, nn.Linear) else x @ projection


def trim_tokens(tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut padded token ids [N, 77] to the longest prompt; returns (tokens, end-of-text index)."""
    eot_index = tokens.argmax(dim=-1)  # the end-of-text token has the largest id in CLIP's vocabulary
    return tokens[:, : int(eot_index.max()) + 1], eot_index


def encode_tokens(clip: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """Same result as `clip.encode_text(tokens)`, with the context trimmed to what the prompts need."""
    tokens, eot_index = trim_tokens(tokens)
    return encode_text_embeddings(clip, clip.token_embedding(tokens), eot_index)


def check_supported(clip: nn.Module) -> None:
    required = ("token_embedding", "positional_embedding", "transformer", "ln_final", "visual")
    missing = [name for name in required if not hasattr(clip, name)]
    if missing or getattr(clip, "text_pool_type", "argmax") != "argmax":
        raise ValueError(
            "only open_clip CLIP models with the built-in text transformer (argmax pooling) are supported; "
            f"this model is a {type(clip).__name__}"
        )


# ---------------------------------------------------------------------------------------------------
# Image encoding


def encode_images(clip: nn.Module, images: torch.Tensor, projected: bool) -> torch.Tensor:
    """Image features: CLIP-space embeddings, or the pooled features before the projection."""
    visual = clip.visual
    if fast.vision_supported(visual):
        return fast.encode_image(visual, images, projected)
    if projected:
        return visual(images)
    # open_clip's VisionTransformer.forward minus the final projection (linear probe, section 3.2).
    x = visual.transformer(visual._embeds(images))
    pooled, _ = visual._pool(x)
    return pooled


def image_feature_dim(clip: nn.Module, projected: bool) -> int:
    visual = clip.visual
    if projected or getattr(visual, "proj", None) is None:
        return clip.visual.output_dim
    return visual.proj.shape[0]


# ---------------------------------------------------------------------------------------------------
# Heads: image features -> class logits


class Head(nn.Module):
    """Turns image features into logits. Text heads build class embeddings with the CLIP text tower.

    `class_embeddings(clip)` is what can be computed once whenever nothing on the text side trains;
    `logits(features, class_embeddings, clip)` is the per-image part.
    """

    projected: bool = True  # consumes CLIP-space image embeddings (False: pre-projection features)
    uses_text: bool = True

    def class_embeddings(self, clip: nn.Module) -> torch.Tensor | None:
        raise NotImplementedError

    def logits(self, features: torch.Tensor, class_embeddings: torch.Tensor | None, clip: nn.Module) -> torch.Tensor:
        features = F.normalize(features, dim=-1)
        return clip.logit_scale.exp() * features @ class_embeddings.to(features.dtype).T


def shared_prefix_length(tokens: torch.Tensor, eot_index: torch.Tensor) -> int:
    """Leading positions where every row has the same token, stopping before any end-of-text."""
    same = (tokens == tokens[:1]).all(dim=0).long()
    return min(int(same.cumprod(0).sum()), int(eot_index.min()))


class TemplateHead(Head):
    """Class embeddings from prompt templates, ensembled per Radford et al.: per-template normalize,
    average over templates, renormalize. Prompts are encoded one template at a time, so each group
    shares its template's leading words."""

    def __init__(self, tokenizer, classnames: list[str], templates: list[str]):
        super().__init__()
        self.num_classes = len(classnames)
        self.num_templates = len(templates)
        groups = [trim_tokens(tokenizer([template.format(name) for name in classnames])) for template in templates]
        self.lengths = [tokens.shape[1] for tokens, _ in groups]
        self.prefix_lengths = [shared_prefix_length(tokens, eot) for tokens, eot in groups]
        longest = max(self.lengths)
        padded = [F.pad(tokens, (0, longest - tokens.shape[1])) for tokens, _ in groups]
        self.register_buffer("tokens", torch.stack(padded), persistent=False)  # [templates, classes, L]
        self.register_buffer("eot_index", torch.stack([eot for _, eot in groups]), persistent=False)

    def class_embeddings(self, clip: nn.Module) -> torch.Tensor:
        per_template = torch.stack([
            encode_text_embeddings(clip, clip.token_embedding(self.tokens[t, :, :length]), self.eot_index[t], prefix)
            for t, (length, prefix) in enumerate(zip(self.lengths, self.prefix_lengths))
        ])  # [templates, classes, D]
        return F.normalize(F.normalize(per_template, dim=-1).mean(dim=0), dim=-1)


# ---------------------------------------------------------------------------------------------------
# Parameter selection


def _layernorms(modules) -> list[nn.LayerNorm]:
    return [m for module in modules for m in module.modules() if isinstance(m, nn.LayerNorm)]


def layernorm_parameters(clip: nn.Module, image: bool = True, text: bool = True, last_blocks: int | None = None) -> list[nn.Parameter]:
    """gamma and beta of the LayerNorms of the chosen towers (section 3.1). With last_blocks=K, only
    those in each tower's last K blocks and the final one after them (ln_post, ln_final)."""
    towers = []
    if image:
        towers.append((clip.visual, clip.visual.transformer.resblocks, clip.visual.ln_post))
    if text:
        towers.append((None, clip.transformer.resblocks, clip.ln_final))
    norms: list[nn.LayerNorm] = []
    for visual, blocks, final_norm in towers:
        if last_blocks is None:
            norms += _layernorms([visual]) if visual is not None else _layernorms(blocks) + [final_norm]
        else:
            norms += _layernorms(list(blocks)[len(blocks) - last_blocks :] if last_blocks else []) + [final_norm]
    return [p for m in norms for p in m.parameters(recurse=False)]


def text_tower_parameters(clip: nn.Module) -> list[nn.Parameter]:
    visual = {id(p) for p in clip.visual.parameters()}
    return [p for p in clip.parameters() if id(p) not in visual]


def set_trainable(parameters, trainable: bool = True) -> None:
    for p in parameters:
        p.requires_grad_(trainable)
