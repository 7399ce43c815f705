"""Exported models (merged open_clip checkpoint + classifier, ONNX) give the artifact's logits."""

from __future__ import annotations

import json

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from core.adapt.artifact import load_artifact
from core.adapt.export import CHECKPOINT_FILE, CLASSIFIER_FILE, CONFIG_FILE, INFO_FILE, ONNX_FILE, export_artifact
from core.adapt.models import ModelSpec, load_base_model
from tests.helpers.artifacts import synthetic_artifact
from tests.helpers.pretrained import TINY_CONFIG

TOLERANCE = 1e-4  # float32 ONNX Runtime kernels and open_clip's own forward vs ours
CASES = [("layernorm", "none"), ("adapter", "joint"), ("prompt_tuning", "init"), ("linear_probe", "joint"), ("full", "none")]
CLASSES = ["zero", "one", "two", "three"]


@pytest.fixture(scope="module")
def tiny_base():
    return load_base_model(ModelSpec(name=str(TINY_CONFIG)))


def images(base, n=3):
    return torch.randn(n, 3, base.image_size, base.image_size, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("case", CASES, ids=["-".join(c) for c in CASES])
def test_open_clip_export_loads_in_plain_open_clip(tiny_base, tmp_path, case):
    artifact = synthetic_artifact(tiny_base, case[0], CLASSES, tmp_path / "artifact", layernorm=case[1], seed=3)
    out = export_artifact(artifact, tiny_base, "open_clip", tmp_path / "export")
    config = tmp_path / "exported-tiny.json"
    config.write_text((out / CONFIG_FILE).read_text())
    open_clip.add_model_config(config)
    model = open_clip.create_model("exported-tiny", pretrained=str(out / CHECKPOINT_FILE)).eval()
    classifier = load_file(out / CLASSIFIER_FILE)
    x = images(tiny_base)
    with torch.no_grad():
        if "class_embeddings" in classifier:
            logits = classifier["logit_scale"].exp() * F.normalize(model.encode_image(x), dim=-1) @ classifier["class_embeddings"].T
        else:
            visual = model.visual  # the linear probe reads the features before the projection
            pooled, _ = visual._pool(visual.transformer(visual._embeds(x)))
            logits = F.linear(pooled, classifier["linear.weight"], classifier["linear.bias"])
        expected = load_artifact(artifact, tiny_base)(x)
    torch.testing.assert_close(logits, expected, rtol=0, atol=TOLERANCE)
    assert json.loads((out / INFO_FILE).read_text())["classnames"] == CLASSES


@pytest.mark.parametrize("case", [("layernorm", "none"), ("linear_probe", "none"), ("compacter", "joint")], ids="-".join)
def test_onnx_export_matches_the_artifact(tiny_base, tmp_path, case):
    ort = pytest.importorskip("onnxruntime")
    artifact = synthetic_artifact(tiny_base, case[0], CLASSES, tmp_path / "artifact", layernorm=case[1], seed=5)
    out = export_artifact(artifact, tiny_base, "onnx", tmp_path / "export")
    session = ort.InferenceSession(str(out / ONNX_FILE), providers=["CPUExecutionProvider"])
    for n in (1, 5):  # the batch dimension is dynamic
        x = images(tiny_base, n)
        (logits,) = session.run(None, {"images": x.numpy()})
        with torch.no_grad():
            expected = load_artifact(artifact, tiny_base)(x).numpy()
        np.testing.assert_allclose(logits, expected, rtol=0, atol=TOLERANCE)


def test_unknown_format(tiny_base, tmp_path):
    artifact = synthetic_artifact(tiny_base, "linear_probe", CLASSES, tmp_path / "artifact")
    with pytest.raises(ValueError, match="unknown export format"):
        export_artifact(artifact, tiny_base, "tflite", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cli_export(tiny_base, tmp_path):
    from typer.testing import CliRunner

    from core.cli import app

    artifact = synthetic_artifact(tiny_base, "adapter", CLASSES, tmp_path / "artifact")
    result = CliRunner().invoke(app, ["export", "--artifact", str(artifact), "--format", "open_clip", "--out", str(tmp_path / "oc"), "--json"])
    assert result.exit_code == 0, result.output
    assert {CHECKPOINT_FILE, CLASSIFIER_FILE, CONFIG_FILE, INFO_FILE} <= set(json.loads(result.stdout)["files"])
    bad = CliRunner().invoke(app, ["export", "--artifact", str(artifact), "--format", "tflite", "--out", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "unknown --format" in bad.output
    missing = CliRunner().invoke(app, ["export", "--artifact", str(tmp_path), "--format", "onnx", "--out", str(tmp_path / "x")])
    assert missing.exit_code == 2 and "manifest.json is missing" in missing.output
