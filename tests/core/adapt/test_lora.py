"""LoRA: counts, the fast path with exact equivalence to open_clip's forward, merging for prediction,
the adapter-sized artifact and the CLIP-LoRA schedule. (test_methods.py runs it through every generic
method test with each LayerNorm combination; test_counts.py checks its ViT-B/16 count.)"""

from __future__ import annotations

import copy

import pydantic
import pytest
import torch
from safetensors.torch import load_file

from core.adapt import fast
from core.adapt.adapted import build_adapted, merge_for_prediction, plan_stages
from core.adapt.artifact import load_artifact, save_artifact
from core.adapt.methods.base import MAX_EPOCHS, ScheduleError
from core.adapt.methods.lora import LoraConfig
from core.adapt.modules import encode_images, encode_text_embeddings, trim_tokens
from core.adapt.recipe import parse_recipe
from core.adapt.trainer import NoCallbacks, train


def lora_model(base, classnames, **fields):
    recipe = parse_recipe({"method": "lora", **fields})
    model, trained = build_adapted(copy.deepcopy(base.model), recipe, classnames, base.tokenizer, base.preprocess)
    with torch.no_grad():  # B starts at zero (the identity); give the update something to do
        generator = torch.Generator().manual_seed(0)
        for name, p in model.named_parameters():
            if name.endswith("lora_b"):
                p.copy_(torch.randn(p.shape, generator=generator) * 0.05)
    return model, trained, recipe


def widths(clip):
    image = [b.attn.embed_dim for b in clip.visual.transformer.resblocks]
    text = [b.attn.embed_dim for b in clip.transformer.resblocks]
    return image, text


@pytest.mark.parametrize(
    ("fields", "per_block"),
    [({}, lambda w: 3 * 2 * 2 * w),  # q, k, v: rank 2 x (in + out)
     ({"targets": ["q", "k", "v", "out"], "rank": 4}, lambda w: 4 * 4 * 2 * w),
     ({"targets": ["v"], "encoders": ["text"]}, None)],
)
def test_trainable_count(tiny_base, digits, fields, per_block):
    _, trained, recipe = lora_model(tiny_base, digits.classnames, **fields)
    params = dict(build_adapted(copy.deepcopy(tiny_base.model), recipe, digits.classnames, tiny_base.tokenizer,
                                tiny_base.preprocess)[0].named_parameters())
    image, text = widths(tiny_base.model)
    expected = sum(map(per_block, image + text)) if per_block else sum(2 * 2 * w for w in text)
    assert sum(params[n].numel() for n in trained) == expected


def test_fast_path_is_taken_and_equals_open_clip_forward(tiny_base, digits, monkeypatch):
    model, trained, _ = lora_model(tiny_base, digits.classnames, targets=["q", "k", "v", "out"])
    clip = model.clip.eval()  # no dropout: both paths must see the same weights
    assert fast.vision_supported(clip.visual) and fast.supported(clip.transformer.resblocks)
    calls = []
    for name in ("transformer_forward", "text_forward_shared_prefix"):
        original = getattr(fast, name)
        monkeypatch.setattr(fast, name, lambda *a, _f=original, _n=name, **k: calls.append(_n) or _f(*a, **k))
    lora = {n.removeprefix("clip."): p for n, p in model.named_parameters() if n in trained}

    def grads():
        result = {n: p.grad.clone() for n, p in lora.items() if p.grad is not None}
        clip.zero_grad()
        return result

    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    ours = encode_images(clip, images, projected=True)
    ours.sum().backward()
    ours_grads = grads()
    theirs = clip.visual(images)  # open_clip's own forward: nn.MultiheadAttention reads the same parametrization
    theirs.sum().backward()
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)
    theirs_grads = grads()
    assert ours_grads.keys() == theirs_grads.keys() and any(k.startswith("visual.") for k in ours_grads)
    for name in ours_grads:
        torch.testing.assert_close(ours_grads[name], theirs_grads[name], atol=1e-5, rtol=1e-4)

    tokens = tiny_base.tokenizer([f"a photo of a {name}." for name in digits.classnames])
    trimmed, eot = trim_tokens(tokens)
    ours = encode_text_embeddings(clip, clip.token_embedding(trimmed), eot, prefix_length=5)
    ours.sum().backward()
    ours_grads = grads()
    theirs = clip.encode_text(tokens)
    theirs.sum().backward()
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)
    theirs_grads = grads()
    assert ours_grads.keys() == theirs_grads.keys() and any(k.startswith("transformer.") for k in ours_grads)
    for name in ours_grads:
        torch.testing.assert_close(ours_grads[name], theirs_grads[name], atol=1e-5, rtol=1e-4)
    assert calls == ["transformer_forward", "text_forward_shared_prefix"]


def test_dropout_only_while_training(tiny_base, digits):
    model, _, _ = lora_model(tiny_base, digits.classnames, dropout=0.5)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        model.train()
        assert not torch.equal(model.encode_images(images), model.encode_images(images))
        model.eval()
        torch.testing.assert_close(model.encode_images(images), model.encode_images(images), rtol=0, atol=0)


def test_merge_folds_the_update_into_plain_weights(tiny_base, digits):
    model, _, recipe = lora_model(tiny_base, digits.classnames, targets=["q", "v", "out"])
    model.eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = model.logits(model.encode_images(images), model.class_embeddings())
        merge_for_prediction(model, recipe)
        after = model.logits(model.encode_images(images), model.class_embeddings())
    torch.testing.assert_close(after, before, rtol=0, atol=1e-6)
    names = [n for n, _ in model.named_parameters()]
    assert not [n for n in names if "lora" in n or "parametrizations" in n]
    assert sum(p.numel() for p in model.clip.parameters()) == sum(p.numel() for p in tiny_base.model.parameters())
    block = model.clip.visual.transformer.resblocks[0]
    assert type(block.attn) is torch.nn.MultiheadAttention and fast.vision_supported(model.clip.visual)
    # k was not targeted: its rows of the fused weight are the base model's.
    width = block.attn.embed_dim
    base_weight = tiny_base.model.visual.transformer.resblocks[0].attn.in_proj_weight
    torch.testing.assert_close(block.attn.in_proj_weight[width : 2 * width], base_weight[width : 2 * width], rtol=0, atol=0)
    assert not torch.equal(block.attn.in_proj_weight[:width], base_weight[:width])


def test_trains_with_layernorm_and_keeps_an_adapter_sized_artifact(tiny_base, digits, tmp_path):
    recipe = parse_recipe({"method": "lora", "layernorm": "joint", "shots": 4, "epochs": 2, "lr": 5e-3})
    result = train(tiny_base, digits, recipe)
    out = save_artifact(result, tmp_path / "artifact")
    tensors = load_file(out / "weights.safetensors")
    assert set(tensors) == result.trained_names
    assert all("lora_" in n or ".ln_" in n or "ln_final" in n for n in tensors)
    assert sum(t.numel() for t in tensors.values()) == result.trainable_params
    assert result.trainable_params < sum(p.numel() for p in tiny_base.model.parameters()) // 10
    loaded = load_artifact(out, tiny_base)
    assert not [n for n, _ in loaded.named_parameters() if "lora" in n]  # merged: base-model speed
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(images), result.adapted(images), rtol=0, atol=1e-5)


def test_clip_lora_defaults_and_schedule():
    recipe = LoraConfig(shots=4)
    assert (recipe.rank, recipe.alpha, recipe.dropout, recipe.targets, recipe.encoders) == (2, 1.0, 0.25, ["q", "k", "v"], ["image", "text"])
    assert (recipe.resolved_lr(), recipe.batch_size, recipe.weight_decay) == (2e-4, 32, 0.01)
    # 500 x 4 shots = 2,000 steps; 40 images in batches of 32 are 2 steps an epoch.
    assert recipe.resolved_epochs(train_size=40) == 1000
    assert [s.epochs for s in plan_stages(LoraConfig(shots=4, layernorm="init"), train_size=40)] == [1000, 1000]
    assert LoraConfig(shots=4, epochs=3).resolved_epochs(train_size=40) == 3
    assert LoraConfig().resolved_epochs(train_size=40) == 100  # all images: the paper's epoch rule


def test_a_derived_schedule_over_the_epoch_limit_is_refused_naming_the_fix():
    # 16 shots of 10 classes: 160 images, 5 steps an epoch; 8,000 steps would be 1,600 epochs.
    with pytest.raises(ScheduleError) as refused:
        LoraConfig(shots=16).resolved_epochs(train_size=160)
    message = str(refused.value)
    assert "1,600 epochs" in message and f"limit of {MAX_EPOCHS}" in message
    assert "Set epochs (at most 1000) or iterations_per_shot (at most 312 on this data)" in message
    # The fix it names is within the limit, and one more iteration per shot is not.
    assert LoraConfig(shots=16, iterations_per_shot=312).resolved_epochs(train_size=160) == 999
    with pytest.raises(ScheduleError):
        LoraConfig(shots=16, iterations_per_shot=313).resolved_epochs(train_size=160)
    assert LoraConfig(shots=16, epochs=MAX_EPOCHS).resolved_epochs(train_size=160) == MAX_EPOCHS
    # LayerNorm init's first stage takes the main stage's epochs: it used to fail deep in plan_stages
    # with a pydantic error on the LayerNorm recipe; now the same refusal comes first.
    with pytest.raises(ScheduleError):
        plan_stages(LoraConfig(shots=16, layernorm="init"), train_size=160)
    # More shots than the schedule allows at all: only epochs can fix it.
    with pytest.raises(ScheduleError, match=r"Set epochs \(at most 1000\)$"):
        LoraConfig(shots=5000).resolved_epochs(train_size=20)


def test_training_refuses_the_schedule_before_any_stage_starts(tiny_base, digits):
    stages = []

    class Record(NoCallbacks):
        def on_stage_start(self, stage, name, epochs):
            stages.append(name)

    # digits: 10 classes; 16 shots make 160 training images as above.
    with pytest.raises(ScheduleError, match="1,600 epochs"):
        train(tiny_base, digits, parse_recipe({"method": "lora", "shots": 16}), callbacks=Record())
    assert stages == []


@pytest.mark.parametrize(
    ("fields", "message"),
    [({"targets": ["q", "q"]}, "twice"), ({"targets": ["x"]}, "targets"), ({"encoders": []}, "encoders"),
     ({"rank": 0}, "rank"), ({"dropout": 1.0}, "dropout")],
)
def test_bad_settings_are_refused(fields, message):
    with pytest.raises(pydantic.ValidationError, match=message):
        parse_recipe({"method": "lora", **fields})
