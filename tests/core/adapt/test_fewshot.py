"""Episodic few-shot evaluation (Classifier-Baseline) on synthetic embeddings."""

from __future__ import annotations

import pytest
import torch

from core.adapt.fewshot import fewshot_episodes


def clusters(classes: int, per_class: int, dim: int = 32, noise: float = 0.05, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, dim, generator=g)
    labels = torch.arange(classes).repeat_interleave(per_class)
    return centers[labels] + noise * torch.randn(len(labels), dim, generator=g), labels


def test_separated_clusters_are_solved():
    x, y = clusters(classes=10, per_class=20)
    r = fewshot_episodes(x, y, n_way=5, k_shot=1, queries=15, episodes=200)
    assert r["accuracy"] > 0.99 and r["ci95"] < 0.01
    assert {k: r[k] for k in ("episodes", "n_way", "k_shot", "queries")} == {
        "episodes": 200, "n_way": 5, "k_shot": 1, "queries": 15,
    }


def test_random_embeddings_are_at_chance():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(400, 32, generator=g), torch.arange(20).repeat_interleave(20)
    r = fewshot_episodes(x, y, n_way=5, k_shot=5, queries=10, episodes=300)
    assert abs(r["accuracy"] - 0.2) < 0.05
    assert 0 < r["ci95"] < 0.03


def test_deterministic_for_seed():
    x, y = clusters(classes=8, per_class=10, noise=2.0)
    a = fewshot_episodes(x, y, k_shot=2, queries=5, episodes=50, seed=7)
    assert a == fewshot_episodes(x, y, k_shot=2, queries=5, episodes=50, seed=7)
    assert a != fewshot_episodes(x, y, k_shot=2, queries=5, episodes=50, seed=8)


def test_too_few_eligible_classes():
    x, y = clusters(classes=6, per_class=16)
    x, y = torch.cat([x, x[:4]]), torch.cat([y, torch.full((4,), 99)])  # a small extra class
    fewshot_episodes(x, y, n_way=6, k_shot=1, queries=15, episodes=3)
    with pytest.raises(ValueError, match="only 6 of 7 classes"):
        fewshot_episodes(x, y, n_way=7, k_shot=1, queries=15, episodes=3)
    with pytest.raises(ValueError, match="only 0 of 7"):
        fewshot_episodes(x, y, n_way=5, k_shot=5, queries=15, episodes=3)
