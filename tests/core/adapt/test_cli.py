"""The local CLI, end to end on the tiny model: methods, train, evaluate, predict, fewshot."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from core.adapt.methods import METHODS
from core.cli import app
from tests.helpers.digits import write_digits_folder
from tests.helpers.pretrained import TINY_CONFIG

runner = CliRunner()


def run(*args: str, ok: bool = True):
    result = runner.invoke(app, [str(a) for a in args])
    if ok:
        assert result.exit_code == 0, result.output
    return result


def test_methods_lists_every_combination(tmp_path):
    rows = json.loads(run("methods", "--model-config", TINY_CONFIG, "--classes", "3", "--json").stdout)
    combos = {(r["method"], r["layernorm"]) for r in rows}
    expected = sum(3 if method.config.supports_layernorm else 1 for method in METHODS.values())
    assert ("compacter", "init") in combos and ("zero_shot", "none") in combos and len(rows) == expected
    assert all(r["vit_b16"] == str(METHODS[r["method"]].vit_b16) for r in rows)
    probe = next(r for r in rows if r["method"] == "linear_probe" and r["layernorm"] == "none")
    assert probe["trainable_params"] == 3 * (64 + 1)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_weights):
    root = tmp_path_factory.mktemp("cli")
    data = write_digits_folder(root / "digits", per_class=12, classes=4, split_folders=True)
    out = root / "artifact"
    summary = json.loads(run("train", "--data", data, "--model-config", TINY_CONFIG, "--pretrained", tiny_weights,
                             "--method", "prompt_tuning", "--layernorm", "init", "--shots", "4", "--epochs", "2",
                             "--out", out, "--json").stdout)
    return data, out, summary


def test_train_writes_an_artifact(trained):
    _, out, summary = trained
    assert (out / "weights.safetensors").is_file() and (out / "manifest.json").is_file()
    assert summary["recipe"]["method"] == "prompt_tuning" and summary["recipe"]["layernorm"] == "init"
    assert summary["trainable_params"] == 512 + 1408  # 8 x 64 context vectors + the tiny model's LayerNorms
    assert 0 <= summary["test"]["accuracy"] <= 1


def test_evaluate_and_predict(trained):
    data, out, summary = trained
    metrics = json.loads(run("evaluate", "--artifact", out, "--data", data, "--json").stdout)
    assert metrics["accuracy"] == summary["test"]["accuracy"]
    assert len(metrics["confusion_matrix"]) == 4
    image = next((data / "test" / "digit_1").iterdir())
    rows = json.loads(run("predict", "--artifact", out, image, "--top-k", "2", "--json").stdout)
    assert rows[0]["image"] == str(image) and len(rows[0]["predictions"]) == 2


def test_zero_shot_predict_and_fewshot(trained, tiny_weights):
    data, out, _ = trained
    image = next((data / "test" / "digit_1").iterdir())
    rows = json.loads(run("predict", "--model-config", TINY_CONFIG, "--pretrained", tiny_weights,
                          "--classes", "cat,dog,bird", image, "--json").stdout)
    assert {p["label"] for p in rows[0]["predictions"]} == {"cat", "dog", "bird"}
    for source in (["--artifact", out], ["--model-config", TINY_CONFIG, "--pretrained", tiny_weights]):
        result = json.loads(run("fewshot", "--data", data, *source, "--ways", "3", "--shots", "1",
                                "--queries", "2", "--episodes", "20", "--json").stdout)
        assert result["episodes"] == 20 and 0 <= result["accuracy"] <= 1


def test_bad_input_gets_a_clear_error(tmp_path, trained):
    data, out, _ = trained
    result = run("train", "--data", tmp_path / "missing", "--model-config", TINY_CONFIG, "--out", tmp_path / "x", ok=False)
    assert result.exit_code == 2 and "error:" in result.output
    result = run("train", "--data", data, "--model-config", TINY_CONFIG, "--method", "full", "--layernorm", "joint",
                 "--out", tmp_path / "x", ok=False)
    assert result.exit_code == 2 and "cannot be combined" in result.output
    not_image = tmp_path / "notes.png"
    not_image.write_text("hello")
    result = run("predict", "--artifact", out, not_image, ok=False)
    assert result.exit_code == 2 and "notes.png" in result.output
    assert not (tmp_path / "x").exists()


def test_train_takes_every_recipe_field_from_a_file_and_set(tmp_path, trained, tiny_weights):
    data, _, _ = trained
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps({"method": "compacter", "bottleneck": 8, "phm_n": 2, "shots": 2, "epochs": 3}))
    summary = json.loads(run("train", "--data", data, "--model-config", TINY_CONFIG, "--pretrained", tiny_weights,
                             "--recipe", recipe, "--epochs", "1", "--set", "bottleneck=4", "--set", "lr=1e-3",
                             "--set", 'templates=["a digit: {}."]', "--out", tmp_path / "out", "--json").stdout)
    assert {k: summary["recipe"][k] for k in ("method", "bottleneck", "phm_n", "shots", "epochs", "lr", "templates")} == {
        "method": "compacter", "bottleneck": 4, "phm_n": 2, "shots": 2, "epochs": 1, "lr": 1e-3, "templates": ["a digit: {}."]}


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--set", "rank"], "expected KEY=VALUE"),
     (["--set", "method=adapter", "--set", "n_ctx=4"], "n_ctx: Extra inputs are not permitted"),
     (["--set", "method=adapter", "--set", "bottleneck=0"], "bottleneck: Input should be greater than or equal to 1"),
     (["--recipe", "RECIPE"], "is not valid JSON"),
     (["--recipe", "MISSING"], "cannot read recipe")],
)
def test_bad_recipe_settings_get_a_clear_error(tmp_path, trained, args, message):
    data, _, _ = trained
    (tmp_path / "bad.json").write_text("{method: adapter}")
    paths = {"RECIPE": tmp_path / "bad.json", "MISSING": tmp_path / "none.json"}
    result = run("train", "--data", data, "--model-config", TINY_CONFIG, "--out", tmp_path / "x",
                 *[paths.get(a, a) for a in args], ok=False)
    assert result.exit_code == 2 and message in result.output, result.output
    assert not (tmp_path / "x").exists()
