"""Loading base models: architectures by name or config file, weights from local files, the QuickGELU
rule for OpenAI weights, and base identities that keep artifacts on their own base."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from open_clip.transformer import QuickGELU
from safetensors.torch import save_file

from core.adapt.artifact import ArtifactError, load_artifact, save_artifact
from core.adapt.models import ModelLoadError, ModelSpec, load_base_model, resolve_quick_gelu
from core.adapt.modules import encode_tokens
from core.adapt.recipe import parse_recipe
from core.adapt.trainer import train
from tests.helpers.pretrained import TINY_CONFIG


def uses_quick_gelu(model) -> bool:
    return any(isinstance(m, QuickGELU) for m in model.modules())


def test_local_state_dict_file_is_loaded(tiny_base, tiny_weights):
    saved = torch.load(tiny_weights, weights_only=True)
    for name, tensor in tiny_base.model.state_dict().items():
        assert torch.equal(tensor, saved[name]), name


def test_local_safetensors_file_is_loaded(tiny_base, tmp_path):
    weights = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in tiny_base.model.state_dict().items()}, weights)
    loaded = load_base_model(ModelSpec(name=str(TINY_CONFIG), pretrained=str(weights)))
    assert loaded.identity == tiny_base.identity


def test_random_init_is_deterministic_and_differs_from_pretrained(tiny_base):
    first = load_base_model(ModelSpec(name=str(TINY_CONFIG)))
    second = load_base_model(ModelSpec(name=str(TINY_CONFIG)))
    assert first.identity == second.identity
    assert first.identity["weights_fingerprint"] != tiny_base.identity["weights_fingerprint"]
    assert first.identity["config_sha256"] == tiny_base.identity["config_sha256"]


def test_config_file_cannot_shadow_a_builtin_architecture(tmp_path):
    shadow = tmp_path / "ViT-B-16.json"
    shadow.write_text(TINY_CONFIG.read_text())
    tiny = load_base_model(ModelSpec(name=str(shadow)))
    assert tiny.model.visual.conv1.out_channels == 64
    import open_clip

    assert open_clip.get_model_config("ViT-B-16")["vision_cfg"]["width"] == 768


@pytest.mark.parametrize(
    ("spec", "architecture", "expected"),
    [
        (ModelSpec(name="ViT-B-16", pretrained="openai"), "ViT-B-16", True),
        (ModelSpec(name="ViT-B-16", pretrained="laion2b_s34b_b88k"), "ViT-B-16", False),
        (ModelSpec(name="ViT-B-16", pretrained="/weights/ViT-B-16-openai.pt"), "ViT-B-16", True),
        (ModelSpec(name="ViT-B-16", pretrained="/weights/my-finetune.pt"), "ViT-B-16", False),
        (ModelSpec(name="ViT-B-16", pretrained="openai", quick_gelu=False), "ViT-B-16", False),
        (ModelSpec(name="ViT-B-16", pretrained=None), "ViT-B-16", False),
    ],
)
def test_quick_gelu_rule(spec, architecture, expected):
    assert resolve_quick_gelu(spec, architecture) is expected


def test_openai_weights_file_gets_quick_gelu(tiny_base, tmp_path):
    """A local file of OpenAI weights must be built with QuickGELU, else it loads silently but wrong."""
    weights = tmp_path / "tiny-openai.pt"
    torch.save(tiny_base.model.state_dict(), weights)
    openai = load_base_model(ModelSpec(name=str(TINY_CONFIG), pretrained=str(weights)))
    assert uses_quick_gelu(openai.model) and not uses_quick_gelu(tiny_base.model)
    assert openai.identity["quick_gelu"] and openai.identity["weights_fingerprint"] == tiny_base.identity["weights_fingerprint"]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (ModelSpec(name="No-Such-Arch"), "unknown open_clip architecture"),
        (ModelSpec(name="/nowhere/model.json"), "model config file not found"),
        (ModelSpec(name=str(TINY_CONFIG), pretrained="/nowhere/weights.pt"), "neither an open_clip tag"),
        (ModelSpec(name="ViT-B-16", pretrained="no-such-tag"), "neither an open_clip tag"),
    ],
)
def test_load_errors_are_clear(spec, message):
    with pytest.raises(ModelLoadError, match=message):
        load_base_model(spec)


def test_not_a_model_config(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"hello": 1}))
    with pytest.raises(ModelLoadError, match="not an open_clip model config"):
        load_base_model(ModelSpec(name=str(bad)))


def test_wrong_weights_file_is_a_load_error(tmp_path):
    weights = tmp_path / "other.pt"
    torch.save({"nothing": torch.zeros(1)}, weights)
    with pytest.raises(ModelLoadError, match="cannot load model"):
        load_base_model(ModelSpec(name=str(TINY_CONFIG), pretrained=str(weights)))


def test_artifact_refuses_another_base(tiny_base, digits, tmp_path):
    result = train(tiny_base, digits, parse_recipe({"method": "layernorm", "shots": 2, "epochs": 1}))
    out = save_artifact(result, tmp_path / "artifact")
    other = load_base_model(ModelSpec(name=str(TINY_CONFIG)))  # same architecture, other weights
    with pytest.raises(ArtifactError, match="cannot be applied"):
        load_artifact(out, other)


def test_trimmed_text_encoding_equals_full_context(tiny_base):
    tokens = tiny_base.tokenizer(["a photo of a cat.", "dog", "a very long description of a small brown bird"])
    with torch.no_grad():
        torch.testing.assert_close(encode_tokens(tiny_base.model, tokens), tiny_base.model.encode_text(tokens))


def test_base_model_is_not_modified_by_training(tiny_base, digits):
    before = copy.deepcopy(tiny_base.model.state_dict())
    train(tiny_base, digits, parse_recipe({"method": "full", "shots": 2, "epochs": 1}))
    assert all(torch.equal(before[k], v) for k, v in tiny_base.model.state_dict().items())
    assert not any(p.requires_grad for p in tiny_base.model.parameters())


def test_hf_hub_model_from_the_local_cache(tiny_base, tmp_path, monkeypatch):
    """'hf-hub:' ids resolve through the Hugging Face cache, so an offline deployment can pre-seed it."""
    import huggingface_hub.constants

    commit = "0" * 40
    repo = tmp_path / "models--local--tiny-clip"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    (snapshot / "open_clip_config.json").write_text(json.dumps({"model_cfg": json.loads(TINY_CONFIG.read_text())}))
    save_file({k: v.contiguous() for k, v in tiny_base.model.state_dict().items()}, snapshot / "open_clip_model.safetensors")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)

    hub = load_base_model(ModelSpec(name="hf-hub:local/tiny-clip"))
    assert hub.identity["weights_fingerprint"] == tiny_base.identity["weights_fingerprint"]
    assert hub.identity["config_sha256"] == tiny_base.identity["config_sha256"]
    with pytest.raises(ModelLoadError, match="hf-hub:local/absent"):
        load_base_model(ModelSpec(name="hf-hub:local/absent"))
