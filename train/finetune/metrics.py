"""Downstream metrics in plain Python (no scipy or sklearn): the GLUE set and tagging scores.

Classification: ``accuracy``; ``f1`` — of label 1 for two labels (GLUE's MRPC/QQP), the
macro average over labels otherwise; ``matthews`` — Matthews correlation, in its multiclass
form (Gorodkin 2004), which is the usual MCC for two labels (GLUE's CoLA).
Regression: ``pearson``, ``spearman`` (Pearson of average ranks, ties averaged) and ``mse``.
Token classification: ``token_accuracy``; ``token_f1`` — token-level micro F1 over tokens
whose gold or predicted tag is not the outside tag ``O`` (with no ``O`` tag it equals
accuracy); ``entity_f1`` — entity-level F1 (conlleval: a predicted entity counts when its
type, first and last token all match), reported when the tag names follow BIO
(``O``, ``B-X``, ``I-X``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

CLASSIFICATION = ("accuracy", "f1", "matthews")
REGRESSION = ("pearson", "spearman", "mse")
TOKEN = ("token_accuracy", "token_f1", "entity_f1")
METRICS = {"classification": CLASSIFICATION, "regression": REGRESSION, "token_classification": TOKEN}
LOWER_IS_BETTER = {"mse", "loss"}


def accuracy(pred: Sequence[int], gold: Sequence[int]) -> float:
    return sum(p == g for p, g in zip(pred, gold, strict=True)) / max(1, len(gold))


def _f1(tp: int, n_pred: int, n_gold: int) -> float:
    return 0.0 if tp == 0 else 2 * tp / (n_pred + n_gold)


def f1(pred: Sequence[int], gold: Sequence[int], num_labels: int) -> float:
    """F1 of label 1 (two labels) or the unweighted mean over labels (more than two)."""
    labels = [1] if num_labels == 2 else range(num_labels)
    scores = [
        _f1(
            sum(p == g == k for p, g in zip(pred, gold, strict=True)),
            sum(p == k for p in pred),
            sum(g == k for g in gold),
        )
        for k in labels
    ]
    return sum(scores) / len(scores)


def matthews(pred: Sequence[int], gold: Sequence[int], num_labels: int) -> float:
    """Matthews correlation coefficient for K labels (0 when either side is constant)::

    MCC = (c·s − Σ_k p_k·t_k) / sqrt((s² − Σ_k p_k²)(s² − Σ_k t_k²))

    with c correct predictions, s samples, p_k / t_k how often k is predicted / true.
    """
    s, c = len(gold), sum(p == g for p, g in zip(pred, gold, strict=True))
    p = [sum(x == k for x in pred) for k in range(num_labels)]
    t = [sum(x == k for x in gold) for k in range(num_labels)]
    den = (s * s - sum(x * x for x in p)) * (s * s - sum(x * x for x in t))
    return 0.0 if den == 0 else (c * s - sum(a * b for a, b in zip(p, t, strict=True))) / math.sqrt(den)


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson correlation (0 when either side is constant)."""
    n = len(x)
    if n < 2:
        return 0.0
    mx, my = sum(x) / n, sum(y) / n
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True))
    sxx, syy = sum((a - mx) ** 2 for a in x), sum((b - my) ** 2 for b in y)
    return 0.0 if sxx == 0 or syy == 0 else sxy / math.sqrt(sxx * syy)


def ranks(x: Sequence[float]) -> list[float]:
    """1-based ranks; tied values share the mean of their ranks."""
    order = sorted(range(len(x)), key=lambda i: x[i])
    out = [0.0] * len(x)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and x[order[j + 1]] == x[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return out


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    return pearson(ranks(x), ranks(y))


def is_bio(names: Sequence[str] | None) -> bool:
    """Whether tag names follow BIO: ``O``, ``B-X``, ``I-X`` (and at least one entity type)."""
    if not names:
        return False
    return any(n.startswith("B-") for n in names) and all(
        n == "O" or n[:2] in ("B-", "I-") and len(n) > 2 for n in names
    )


def bio_entities(tags: Sequence[str]) -> set[tuple[str, int, int]]:
    """``(type, first, last)`` of each entity: it starts at ``B-X``, or at an ``I-X`` that does
    not continue an ``X`` entity (conlleval), and runs over the ``I-X`` that follow."""
    found, start, kind = set(), None, None
    for i, tag in enumerate([*tags, "O"]):
        inside = tag.startswith("I-") and kind == tag[2:]
        if start is not None and not inside:
            found.add((kind, start, i - 1))
            start, kind = None, None
        if tag[:2] in ("B-", "I-") and not inside:
            start, kind = i, tag[2:]
    return found


def token_scores(
    pred: Sequence[Sequence[int]], gold: Sequence[Sequence[int]], names: Sequence[str] | None
) -> dict[str, float]:
    """Token accuracy, token F1 (tags other than ``O``) and, for BIO tags, entity F1, over
    sequences of label ids (positions without a gold label already removed)."""
    flat_p = [p for seq in pred for p in seq]
    flat_g = [g for seq in gold for g in seq]
    outside = names.index("O") if names and "O" in names else None
    tp = sum(p == g and g != outside for p, g in zip(flat_p, flat_g, strict=True))
    out = {
        "token_accuracy": accuracy(flat_p, flat_g),
        "token_f1": _f1(tp, sum(p != outside for p in flat_p), sum(g != outside for g in flat_g)),
    }
    if is_bio(names):
        tp = n_pred = n_gold = 0
        for p, g in zip(pred, gold, strict=True):
            ep, eg = bio_entities([names[i] for i in p]), bio_entities([names[i] for i in g])
            tp, n_pred, n_gold = tp + len(ep & eg), n_pred + len(ep), n_gold + len(eg)
        out["entity_f1"] = _f1(tp, n_pred, n_gold)
    return out


def classification_scores(pred: Sequence[int], gold: Sequence[int], num_labels: int) -> dict[str, float]:
    return {
        "accuracy": accuracy(pred, gold),
        "f1": f1(pred, gold, num_labels),
        "matthews": matthews(pred, gold, num_labels),
    }


def regression_scores(pred: Sequence[float], gold: Sequence[float]) -> dict[str, float]:
    return {
        "pearson": pearson(pred, gold),
        "spearman": spearman(pred, gold),
        "mse": sum((p - g) ** 2 for p, g in zip(pred, gold, strict=True)) / max(1, len(gold)),
    }


def majority_accuracy(train_labels: Sequence[int], val_labels: Sequence[int]) -> float:
    """Chance as a baseline: the accuracy of always predicting the training set's most
    frequent label."""
    if not train_labels:
        return 0.0
    top = max(set(train_labels), key=lambda k: (train_labels.count(k), -k))
    return accuracy([top] * len(val_labels), val_labels)


def baseline(kind: str, train_labels: Sequence, val_labels: Sequence) -> dict:
    """What a model that learned nothing from the text scores on the validation set, from
    the training labels alone: the majority class (accuracy), the training mean (MSE), the
    majority tag (token accuracy; label lists with -100 at positions not scored)."""
    if kind == "regression":
        mean = sum(train_labels) / max(1, len(train_labels))
        mse = sum((mean - y) ** 2 for y in val_labels) / max(1, len(val_labels))
        return {"name": "the training mean", "metric": "mse", "value": mse}
    if kind == "token_classification":
        flat_t = [t for seq in train_labels for t in seq if t != -100]
        flat_v = [t for seq in val_labels for t in seq if t != -100]
        value = majority_accuracy(flat_t, flat_v)
        return {"name": "the majority tag", "metric": "token_accuracy", "value": value}
    value = majority_accuracy(list(train_labels), list(val_labels))
    return {"name": "the majority class", "metric": "accuracy", "value": value}


def no_better(score: float, base: dict) -> bool:
    """Whether ``score`` (of ``base["metric"]``) is no better than the baseline's."""
    if base["metric"] in LOWER_IS_BETTER:
        return score >= base["value"]
    return score <= base["value"]
