"""Classification metrics reported for every evaluation: accuracy, macro-F1, per-class accuracy and
the confusion matrix. Plain Python so results are exact and JSON-ready; macro-F1 matches
``sklearn.metrics.f1_score(average="macro")``: averaged over labels in y_true or y_pred.
"""

from __future__ import annotations

from collections.abc import Sequence


def classification_metrics(
    y_true: Sequence[int], y_pred: Sequence[int], classnames: list[str]
) -> dict:
    """Metrics for predictions of class indices into ``classnames``.

    ``per_class_accuracy`` (recall) lists only classes that occur in ``y_true``; with no samples,
    accuracy and macro-F1 are 0.0 and ``count`` is 0.
    """
    y_true, y_pred = [int(y) for y in y_true], [int(y) for y in y_pred]
    if len(y_true) != len(y_pred):
        raise ValueError(f"y_true has {len(y_true)} labels but y_pred has {len(y_pred)}")
    n = len(classnames)
    out_of_range = sorted({y for y in (*y_true, *y_pred) if not 0 <= y < n})
    if out_of_range:
        raise ValueError(f"labels {out_of_range} are outside 0..{n - 1} ({n} classes)")

    confusion = [[0] * n for _ in range(n)]
    for t, p in zip(y_true, y_pred):
        confusion[t][p] += 1
    support = [sum(row) for row in confusion]
    predicted = [sum(confusion[t][c] for t in range(n)) for c in range(n)]
    correct = [confusion[c][c] for c in range(n)]

    present = [c for c in range(n) if support[c] or predicted[c]]
    # F1 = 2TP / (2TP + FP + FN) = 2TP / (support + predicted); nonzero for present classes.
    f1 = [2 * correct[c] / (support[c] + predicted[c]) for c in present]
    count = len(y_true)
    return {
        "accuracy": sum(correct) / count if count else 0.0,
        "macro_f1": sum(f1) / len(f1) if f1 else 0.0,
        "per_class_accuracy": {
            classnames[c]: correct[c] / support[c] for c in range(n) if support[c]
        },
        "confusion_matrix": confusion,
        "count": count,
    }
