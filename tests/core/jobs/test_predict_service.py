"""The prediction service: one serving engine per base model, batching across requests with a wait on
GPUs only, and evicted engines release their worker thread."""

from __future__ import annotations

from core.adapt.models import ModelSpec, load_base_model
from core.jobs.predict import PredictionService
from core.settings import Settings
from tests.helpers.pretrained import TINY_CONFIG


def test_engines_are_shared_per_base_and_closed_on_eviction(tmp_path, monkeypatch):
    monkeypatch.setattr("core.adapt.models.load_base_model", lambda spec, device: load_base_model(ModelSpec(name=str(TINY_CONFIG))))
    service = PredictionService(Settings(data_dir=tmp_path, device="cpu", model_cache_size=1, predict_batch_size=8))
    first = service.engine({"name": "a"})
    assert service.engine({"name": "a"}) is first
    assert (first.max_batch, first.max_wait) == (8, 0.0)  # on a CPU the worker does not wait for others
    cat, dog = service.zero_shot({"name": "a"}, ["cat", "dog"]), service.zero_shot({"name": "a"}, ["cat", "dog"])
    assert cat is dog and len(service.predictors) == 1
    second = service.engine({"name": "b"})
    assert second is not first and not first._thread.is_alive()  # evicted: its worker thread ended
    # A model whose engine was evicted is served by a freshly built one.
    assert len(service.predict(cat, [], top_k=1)) == 0
    second.close()
