"""A faster forward for open_clip's standard transformer blocks, with the same parameters and results.

Two things make open_clip's own forward slower than it needs to be for adaptation:
- `nn.MultiheadAttention` (batch-first) hands non-contiguous activations to the MLP; its linear layers
  then fall back to a batched matmul with a broadcast weight, which on CPU took 40% of a ViT-B/16
  training step. Here attention is computed with `scaled_dot_product_attention` on contiguous tensors.
- Only one output token is used per sequence (the class token of an image, the end-of-text token of a
  prompt), so the last block computes its attention query, output projection and MLP for that token
  alone; keys and values still come from every token. With the causal text mask nothing after the
  end-of-text token can change it either.

Prompts that share their first tokens (every class in one template, "a photo of a ...", or the
learned context of prompt tuning) share, under the causal mask, every activation of those tokens: the
prefix runs through the text tower once and its keys and values serve all prompts.

`supported()` says whether a tower is made of plain `ResidualAttentionBlock`s; otherwise callers use
open_clip's forward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from open_clip.transformer import ResidualAttentionBlock
from torch import nn


def supported(blocks: nn.ModuleList) -> bool:
    return all(
        type(block) is ResidualAttentionBlock
        and isinstance(block.attn, nn.MultiheadAttention)
        and block.attn._qkv_same_embed_dim
        and block.attn.in_proj_bias is not None
        and not hasattr(block, "ln_1_kv")
        for block in blocks
    )


def block_forward(block: ResidualAttentionBlock, x: torch.Tensor, causal: bool, query_index: torch.Tensor | None = None) -> torch.Tensor:
    """One block on x [N, L, D]. With `query_index` [N], only that position's output is computed: [N, 1, D]."""
    attn = block.attn
    n, length, width = x.shape
    heads = attn.num_heads
    h = block.ln_1(x)
    qkv = F.linear(h, attn.in_proj_weight, attn.in_proj_bias)
    # Serving (core.adapt.serving) sets this for a call to add each image's own LoRA update, so models
    # with different updates share one pass; it is never set while training.
    if (per_sample := attn.__dict__.get("per_sample_qkv")) is not None:
        qkv = qkv + per_sample(h)
    q, k, v = qkv.chunk(3, dim=-1)
    rows = torch.arange(n, device=x.device)
    mask = None
    if query_index is not None:
        q = q[rows, query_index].unsqueeze(1)
        x = x[rows, query_index].unsqueeze(1)
        if causal:  # the kept query sees keys up to its own position
            mask = (torch.arange(length, device=x.device) <= query_index[:, None]).view(n, 1, 1, length)
    q, k, v = (t.reshape(n, -1, heads, width // heads).transpose(1, 2) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal and query_index is None)
    out = attn.out_proj(out.transpose(1, 2).reshape(n, -1, width))
    x = x + block.ls_1(out)
    return x + block.ls_2(block.mlp(block.ln_2(x)))


def transformer_forward(blocks: nn.ModuleList, x: torch.Tensor, causal: bool, output_index: torch.Tensor) -> torch.Tensor:
    """All blocks; returns the features at `output_index` [N] only: [N, D]."""
    for block in blocks[:-1]:
        x = block_forward(block, x, causal)
    return block_forward(blocks[-1], x, causal, query_index=output_index).squeeze(1)


def prefixed_block_forward(
    block: ResidualAttentionBlock, prefix: torch.Tensor, suffix: torch.Tensor, query_index: torch.Tensor | None = None
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """One causal block over sequences that all start with the same `prefix` [1, P, D]; `suffix` [N, S, D]
    holds each sequence's remaining tokens. With `query_index` [N] (suffix positions), only those outputs
    are computed and the prefix's own outputs are not (no later block needs them)."""
    attn = block.attn
    n, length, width = suffix.shape
    shared, heads = prefix.shape[1], attn.num_heads

    def split_heads(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(t.shape[0], -1, heads, width // heads).transpose(1, 2)

    def finish(x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        x = x + block.ls_1(attn.out_proj(out.transpose(1, 2).reshape(x.shape[0], -1, width)))
        return x + block.ls_2(block.mlp(block.ln_2(x)))

    qp, kp, vp = F.linear(block.ln_1(prefix), attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    qs, ks, vs = F.linear(block.ln_1(suffix), attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    keys = torch.cat([kp.expand(n, -1, -1), ks], dim=1)
    values = torch.cat([vp.expand(n, -1, -1), vs], dim=1)
    positions = torch.arange(shared + length, device=suffix.device)
    if query_index is None:
        new_prefix = finish(prefix, F.scaled_dot_product_attention(*map(split_heads, (qp, kp, vp)), is_causal=True))
        mask = positions[None, :] <= shared + torch.arange(length, device=suffix.device)[:, None]  # [S, P+S]
    else:
        rows = torch.arange(n, device=suffix.device)
        qs, suffix, new_prefix = qs[rows, query_index].unsqueeze(1), suffix[rows, query_index].unsqueeze(1), None
        mask = (positions[None, :] <= shared + query_index[:, None]).view(n, 1, 1, -1)
    out = F.scaled_dot_product_attention(split_heads(qs), split_heads(keys), split_heads(values), attn_mask=mask)
    return new_prefix, finish(suffix, out)


def text_forward_shared_prefix(blocks: nn.ModuleList, x: torch.Tensor, prefix_length: int, output_index: torch.Tensor) -> torch.Tensor:
    """Causal text tower over x [N, L, D] whose first `prefix_length` positions are the same in every
    row; returns the features at `output_index` [N] (which must lie after the prefix): [N, D]."""
    prefix, suffix = x[:1, :prefix_length], x[:, prefix_length:]
    index = output_index - prefix_length
    for block in blocks[:-1]:
        prefix, suffix = prefixed_block_forward(block, prefix, suffix)
    return prefixed_block_forward(blocks[-1], prefix, suffix, query_index=index)[1].squeeze(1)


def vision_supported(visual: nn.Module) -> bool:
    return (
        hasattr(visual, "_embeds")
        and getattr(visual, "attn_pool", None) is None
        and getattr(visual, "pool_type", None) == "tok"
        and not getattr(visual, "final_ln_after_pool", False)
        and supported(visual.transformer.resblocks)
    )


def encode_image(visual: nn.Module, images: torch.Tensor, projected: bool) -> torch.Tensor:
    """open_clip's VisionTransformer forward for class-token pooling, computing the last block for
    the class token only."""
    x = visual._embeds(images)
    cls = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
    pooled = visual.ln_post(transformer_forward(visual.transformer.resblocks, x, causal=False, output_index=cls))
    return pooled @ visual.proj if projected and visual.proj is not None else pooled
