"""classification_metrics against scikit-learn."""

from __future__ import annotations

import random

import pytest
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, recall_score

from core.adapt.metrics import classification_metrics

NAMES = ["cat", "dog", "bird", "fish", "frog"]


@pytest.mark.parametrize("seed", range(5))
def test_matches_sklearn(seed):
    rng = random.Random(seed)
    # Labels drawn from a subset of the classes, so some classes are absent from y_true/y_pred.
    y_true = [rng.choice([0, 1, 2, 3]) for _ in range(50)]
    y_pred = [rng.choice([0, 1, 2, 4]) if rng.random() < 0.5 else t for t in y_true]
    m = classification_metrics(y_true, y_pred, NAMES)
    assert m["count"] == 50
    assert m["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred))
    assert m["macro_f1"] == pytest.approx(f1_score(y_true, y_pred, average="macro"))
    assert m["confusion_matrix"] == confusion_matrix(y_true, y_pred, labels=range(5)).tolist()
    recalls = recall_score(y_true, y_pred, labels=[0, 1, 2, 3], average=None)
    assert m["per_class_accuracy"] == pytest.approx(dict(zip(NAMES[:4], recalls)))


def test_perfect_and_empty():
    m = classification_metrics([0, 1, 1], [0, 1, 1], ["a", "b", "c"])
    assert m["accuracy"] == m["macro_f1"] == 1.0
    assert m["per_class_accuracy"] == {"a": 1.0, "b": 1.0}
    assert m["confusion_matrix"] == [[1, 0, 0], [0, 2, 0], [0, 0, 0]]
    empty = classification_metrics([], [], ["a", "b"])
    assert empty["count"] == 0 and empty["accuracy"] == 0.0 and empty["macro_f1"] == 0.0


def test_bad_input():
    with pytest.raises(ValueError, match="y_pred has 1"):
        classification_metrics([0, 1], [0], ["a", "b"])
    with pytest.raises(ValueError, match=r"\[2\]"):
        classification_metrics([0, 2], [0, 1], ["a", "b"])
