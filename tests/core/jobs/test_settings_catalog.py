from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.jobs.catalog import TINY_CONFIG, CatalogError, load_catalog
from core.settings import Settings, get_settings


def test_settings_read_prefixed_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CLIPADAPT_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("CLIPADAPT_DATABASE_URL", "postgresql://u:p@db:5432/clipadapt")
    monkeypatch.setenv("CLIPADAPT_BROKER_URL", "redis://redis:6379/0")
    get_settings.cache_clear()
    try:
        settings = get_settings()
        assert get_settings() is settings
    finally:
        get_settings.cache_clear()
    assert settings.data_dir == tmp_path
    assert settings.resolved_database_url == "postgresql+psycopg://u:p@db:5432/clipadapt"
    assert not settings.embedded


def test_defaults_are_one_local_data_directory(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    assert settings.embedded
    assert settings.resolved_database_url == f"sqlite:///{tmp_path / 'clipadapt.db'}"
    assert settings.resolved_storage_url == str(tmp_path / "storage")
    env = settings.to_env()
    assert env["CLIPADAPT_DATA_DIR"] == str(tmp_path)
    assert Settings.model_validate({k.removeprefix("CLIPADAPT_").lower(): v for k, v in env.items()}) == settings


@pytest.mark.parametrize("variable", ["CLIPADAPT_RECOVERY_EVERY_S", "CLIPADAPT_SWEEP_EVERY_S"])
def test_recovery_period_reads_its_old_name_too(monkeypatch: pytest.MonkeyPatch, variable: str) -> None:
    monkeypatch.setenv(variable, "7")
    assert Settings().recovery_every_s == 7
    assert Settings(recovery_every_s=3).recovery_every_s == 3


def test_default_catalog_has_an_offline_model() -> None:
    catalog = load_catalog()
    tiny = catalog["clipadapt-tiny"]
    assert Path(tiny.model) == TINY_CONFIG and TINY_CONFIG.is_file() and tiny.pretrained is None
    assert catalog["ViT-B-16-openai"].spec() == {"name": "ViT-B-16", "pretrained": "openai", "quick_gelu": None}


def test_catalog_file_resolves_relative_paths(tmp_path: Path) -> None:
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps({"models": [
        {"name": "local-b16", "model": "ViT-B-16", "pretrained": "weights/b16.pt", "quick_gelu": True},
        {"name": "custom", "model": "configs/custom.json"},
        {"name": "hub", "model": "hf-hub:org/repo"},
    ]}))
    catalog = load_catalog(str(path))
    assert catalog["local-b16"].pretrained == str(tmp_path / "weights" / "b16.pt")
    assert catalog["local-b16"].model == "ViT-B-16"
    assert catalog["custom"].model == str(tmp_path / "configs" / "custom.json")
    assert catalog["hub"].model == "hf-hub:org/repo"


@pytest.mark.parametrize(
    "content",
    ["not json", json.dumps({"entries": []}), json.dumps({"models": [{"name": "a", "model": "x"}, {"name": "a", "model": "y"}]})],
)
def test_bad_catalog_files_are_reported(tmp_path: Path, content: str) -> None:
    path = tmp_path / "catalog.json"
    path.write_text(content)
    with pytest.raises(CatalogError, match="catalog"):
        load_catalog(str(path))
