"""The prediction service batches concurrent requests on GPUs only."""

from __future__ import annotations

from core.adapt.predictor import BatchingPredictor
from core.jobs.predict import PredictionService
from core.settings import Settings


class FakePredictor:
    classnames = ["a", "b"]


def test_batching_on_gpu_only(tmp_path):
    gpu = PredictionService(Settings(data_dir=tmp_path, device="cuda", predict_batch_size=16, predict_max_wait_ms=2))
    batching = gpu._serving(FakePredictor())
    try:
        assert isinstance(batching, BatchingPredictor)
        assert (batching.max_batch, batching.max_wait) == (16, 0.002)
    finally:
        batching.close()
    cpu = PredictionService(Settings(data_dir=tmp_path, device="cpu"))
    assert isinstance(cpu._serving(FakePredictor()), FakePredictor)
    off = PredictionService(Settings(data_dir=tmp_path, device="cuda", predict_batch_size=1))
    assert isinstance(off._serving(FakePredictor()), FakePredictor)
