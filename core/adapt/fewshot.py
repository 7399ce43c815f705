"""Episodic few-shot evaluation with the Classifier-Baseline of Chen et al. (2020), section 4.5.

Each N-way K-shot episode draws N classes, K support and Q query images per class; a class's
prototype is the mean of its L2-normalized support embeddings, and queries take the class of the
prototype with the highest cosine similarity. Embeddings are computed once by the caller.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict

import torch
import torch.nn.functional as F


def fewshot_episodes(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    n_way: int = 5,
    k_shot: int = 1,
    queries: int = 15,
    episodes: int = 600,
    seed: int = 0,
) -> dict:
    """Mean query accuracy over ``episodes`` episodes, with a 95% confidence interval."""
    if embeddings.ndim != 2 or labels.ndim != 1 or len(embeddings) != len(labels):
        raise ValueError(
            f"expected embeddings (N, D) and labels (N,), got {tuple(embeddings.shape)} "
            f"and {tuple(labels.shape)}"
        )
    if min(n_way, k_shot, queries, episodes) < 1:
        raise ValueError("n_way, k_shot, queries and episodes must all be >= 1")

    by_class: dict[int, list[int]] = defaultdict(list)
    for i, y in enumerate(labels.tolist()):
        by_class[int(y)].append(i)
    per_class = k_shot + queries
    eligible = sorted(c for c, idx in by_class.items() if len(idx) >= per_class)
    if len(eligible) < n_way:
        raise ValueError(
            f"{n_way}-way {k_shot}-shot episodes with {queries} queries need {n_way} classes with "
            f">= {per_class} samples each; only {len(eligible)} of {len(by_class)} classes do"
        )

    feats = F.normalize(embeddings.float(), dim=-1)
    rng = random.Random(seed)
    accuracies = []
    for _ in range(episodes):
        classes = rng.sample(eligible, n_way)
        picks = torch.tensor([rng.sample(by_class[c], per_class) for c in classes])  # (n, k+q)
        chosen = feats[picks.to(feats.device)]  # (n, k+q, d)
        prototypes = F.normalize(chosen[:, :k_shot].mean(dim=1), dim=-1)
        query = chosen[:, k_shot:].reshape(-1, feats.shape[1])
        target = torch.arange(n_way, device=feats.device).repeat_interleave(queries)
        pred = (query @ prototypes.T).argmax(dim=1)
        accuracies.append((pred == target).float().mean().item())

    acc = torch.tensor(accuracies, dtype=torch.float64)
    return {
        "accuracy": acc.mean().item(),
        # Normal approximation with the sample std (ddof=1), i.e. 1.96 standard errors.
        "ci95": 1.96 * acc.std().item() / math.sqrt(episodes) if episodes > 1 else 0.0,
        "episodes": episodes,
        "n_way": n_way,
        "k_shot": k_shot,
        "queries": queries,
    }
