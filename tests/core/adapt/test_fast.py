"""The fast transformer path computes what open_clip's forward computes, values and gradients."""

from __future__ import annotations

import copy

import pytest
import torch

from core.adapt import fast
from core.adapt.adapted import build_adapted
from core.adapt.modules import encode_images, encode_text_embeddings, layernorm_parameters, set_trainable, trim_tokens
from core.adapt.recipe import parse_recipe


@pytest.fixture()
def clip(tiny_base):
    model = copy.deepcopy(tiny_base.model)
    set_trainable(layernorm_parameters(model))
    return model


def layernorm_grads(model, image: bool):
    return [p.grad.clone() for p in layernorm_parameters(model, image=image, text=not image)]


def test_image_path_matches_open_clip(clip):
    assert fast.vision_supported(clip.visual)
    images = torch.randn(3, 3, 32, 32)
    ours = encode_images(clip, images, projected=True)
    ours.sum().backward()
    ours_grads = layernorm_grads(clip, image=True)
    clip.zero_grad()
    theirs = clip.visual(images)
    theirs.sum().backward()
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)
    for a, b in zip(ours_grads, layernorm_grads(clip, image=True)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    unprojected = encode_images(clip, images, projected=False)
    torch.testing.assert_close(unprojected @ clip.visual.proj, theirs, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("prefix", [0, 5])
def test_text_path_with_and_without_shared_prefix_matches_open_clip(clip, tiny_base, prefix):
    texts = [f"a photo of a {name}." for name in ("cat", "small dog", "very large brown bear", "x")]
    tokens = tiny_base.tokenizer(texts)
    trimmed, eot = trim_tokens(tokens)
    assert bool((trimmed[:, :5] == trimmed[:1, :5]).all())  # "<sot> a photo of a" is shared
    ours = encode_text_embeddings(clip, clip.token_embedding(trimmed), eot, prefix_length=prefix)
    ours.sum().backward()
    ours_grads = layernorm_grads(clip, image=False)
    clip.zero_grad()
    theirs = clip.encode_text(tokens)
    theirs.sum().backward()
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)
    for a, b in zip(ours_grads, layernorm_grads(clip, image=False)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_prompt_tuning_context_is_shared_exactly(tiny_base, digits):
    model, _ = build_adapted(copy.deepcopy(tiny_base.model), parse_recipe({"method": "prompt_tuning"}),
                             digits.classnames, tiny_base.tokenizer, tiny_base.preprocess)
    head = model.head
    names = model.clip.token_embedding(head.tokens)
    embeddings = torch.cat([names[:, :1], head.ctx.expand(len(names), -1, -1), names[:, 1:]], dim=1)
    with torch.no_grad():
        shared = model.class_embeddings()
        separate = torch.nn.functional.normalize(encode_text_embeddings(model.clip, embeddings, head.eot_index), dim=-1)
    torch.testing.assert_close(shared, separate, atol=1e-5, rtol=1e-4)


def test_unsupported_blocks_fall_back_to_open_clip(clip):
    class Wrapped(torch.nn.Module):  # any block that is not open_clip's plain ResidualAttentionBlock
        def __init__(self, block):
            super().__init__()
            self.block = block

        def forward(self, x, attn_mask=None):
            return self.block(x, attn_mask=attn_mask)

    images = torch.randn(2, 3, 32, 32)
    expected = clip.visual(images)
    clip.visual.transformer.resblocks[0] = Wrapped(clip.visual.transformer.resblocks[0])
    assert not fast.vision_supported(clip.visual)
    torch.testing.assert_close(encode_images(clip, images, projected=True), expected, atol=1e-5, rtol=1e-4)
