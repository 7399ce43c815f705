"""The model catalog: the base models a deployment offers, by name.

A catalog file is JSON: ``{"models": [{"name": ..., "model": ..., "pretrained": ...}, ...]}``.
``model`` is an open_clip architecture name, a path to an open_clip model-config JSON (relative
paths are relative to the catalog file) or ``hf-hub:org/repo``; ``pretrained`` is an open_clip tag
(``openai``), a local weights file, or null for deterministic random weights. An offline deployment
points ``pretrained`` at local files.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from pydantic import BaseModel, Field, ValidationError

from core.settings import REPO_ROOT

TINY_CONFIG = REPO_ROOT / "core" / "model_configs" / "clipadapt-tiny.json"
# Written by `clipadapt pretrain-starter` (core.starter.build); committed, so nothing is downloaded.
STARTER_DIR = REPO_ROOT / "core" / "starter" / "clipadapt-starter"


class CatalogError(ValueError):
    """The catalog file is missing or malformed."""


class CatalogEntry(BaseModel):
    name: str = Field(description="Name clients use for this model.", min_length=1)
    model: str = Field(description="open_clip architecture, model-config JSON path or hf-hub:...")
    pretrained: str | None = Field(
        None, description="open_clip weight tag, local weights file, or null for random init."
    )
    quick_gelu: bool | None = Field(None, description="Force QuickGELU; null = automatic.")
    description: str = ""

    def spec(self) -> dict:
        """Keyword arguments for core.adapt.models.ModelSpec."""
        return {"name": self.model, "pretrained": self.pretrained, "quick_gelu": self.quick_gelu}


DEFAULT_CATALOG = [
    CatalogEntry(
        name="clipadapt-starter",
        model=str(STARTER_DIR / "clipadapt-starter.json"),
        pretrained=str(STARTER_DIR / "weights.safetensors"),
        description="Small CLIP pretrained by this project on generated images of coloured shapes and "
        "characters (offline, 16 MB): adaptation visibly works on it. See its MODEL_CARD.md.",
    ),
    CatalogEntry(
        name="clipadapt-tiny",
        model=str(TINY_CONFIG),
        description="Tiny random-weights CLIP for trying the service offline; not useful for accuracy.",
    ),
    CatalogEntry(
        name="ViT-B-16-openai",
        model="ViT-B-16",
        pretrained="openai",
        description="OpenAI CLIP ViT-B/16 (downloads weights on first use).",
    ),
    CatalogEntry(
        name="ViT-B-32-openai",
        model="ViT-B-32",
        pretrained="openai",
        description="OpenAI CLIP ViT-B/32 (downloads weights on first use).",
    ),
    CatalogEntry(
        name="ViT-L-14-openai",
        model="ViT-L-14",
        pretrained="openai",
        description="OpenAI CLIP ViT-L/14 (downloads weights on first use).",
    ),
]


def _resolve(path: str | None, base: Path) -> str | None:
    """Catalog-relative file paths become absolute; names, tags and hf-hub ids stay as they are."""
    if path is None or path.startswith("hf-hub:") or "://" in path:
        return path
    if "/" not in path and not path.endswith((".json", ".pt", ".bin", ".safetensors")):
        return path
    p = Path(path).expanduser()
    return str(p if p.is_absolute() else (base / p).resolve())


@lru_cache
def load_catalog(path: str = "") -> dict[str, CatalogEntry]:
    """Entries by name; ``path`` empty means the built-in catalog."""
    if not path:
        return {e.name: e for e in DEFAULT_CATALOG}
    file = Path(path).expanduser()
    try:
        raw = json.loads(file.read_text())
        entries = [CatalogEntry.model_validate(e) for e in raw["models"]]
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValidationError) as e:
        raise CatalogError(f"cannot read model catalog {file}: {e}") from e
    catalog: dict[str, CatalogEntry] = {}
    for entry in entries:
        if entry.name in catalog:
            raise CatalogError(f"model catalog {file}: duplicate name {entry.name!r}")
        catalog[entry.name] = entry.model_copy(
            update={
                "model": _resolve(entry.model, file.parent),
                "pretrained": _resolve(entry.pretrained, file.parent),
            }
        )
    return catalog
