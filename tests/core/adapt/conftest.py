"""Fixtures for the engine tests: a tiny pre-trained CLIP (local weights file) and digits datasets."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from core.adapt.data import Dataset, load_dataset
from core.adapt.models import ClipBase, ModelSpec, load_base_model
from tests.helpers.digits import write_digits_folder
from tests.helpers.pretrained import TINY_CONFIG, pretrain_tiny_clip

# open_clip logs a warning for every random-init model.
logging.getLogger().setLevel(logging.ERROR)
torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return pretrain_tiny_clip(tmp_path_factory.mktemp("weights") / "tiny-digits.pt")


@pytest.fixture(scope="session")
def tiny_spec(tiny_weights: Path) -> ModelSpec:
    return ModelSpec(name=str(TINY_CONFIG), pretrained=str(tiny_weights))


@pytest.fixture(scope="session")
def tiny_base(tiny_spec: ModelSpec) -> ClipBase:
    return load_base_model(tiny_spec)


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_digits_folder(tmp_path_factory.mktemp("data") / "digits", per_class=40)


@pytest.fixture(scope="session")
def digits(digits_dir: Path) -> Dataset:
    return load_dataset(digits_dir)
