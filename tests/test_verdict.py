"""compare's verdict: intervals over seeds and "best" only where it is distinguishable from noise.

Synthetic numbers (the statistics alone) and synthetic run directories (compare end to end,
no training): a large effect is distinguishable, a null effect is tied, the false-positive rate
of the verdict over many null grids is near alpha, and the issue's example is tied.
"""

import csv
import json
import math
import random

import pytest

from bertsmith.train.tools import verdict as V
from bertsmith.train.tools.compare import compare


def _pair(mean, sd):
    """Two seeds whose mean and sample standard deviation are ``mean`` and ``sd``."""
    return [mean + sd / math.sqrt(2), mean - sd / math.sqrt(2)]


def test_t_interval_and_n1():
    a = V.aggregate([1.0, 2.0, 3.0])
    assert (a.mean, a.sd, a.n) == (2.0, 1.0, 3)
    half = 4.302652729911275 / math.sqrt(3)  # t(0.975, 2)
    assert a.lo == pytest.approx(2 - half) and a.hi == pytest.approx(2 + half)
    one = V.aggregate([5.0])
    assert (one.mean, one.sd, one.n, one.lo, one.hi) == (5.0, None, 1, None, None)


def test_welch_matches_scipy():
    from scipy import stats

    a, b = [6.1, 6.3, 6.2, 6.5], [6.6, 6.4, 6.9]
    c = V.welch(a, b)
    ref = stats.ttest_ind(a, b, equal_var=False)
    assert c.p == pytest.approx(ref.pvalue) and c.diff == pytest.approx(sum(a) / 4 - sum(b) / 3)
    assert c.lo < c.diff < c.hi


def test_large_effect_is_distinguishable():
    rng = random.Random(1)
    groups = {
        "base": [rng.gauss(7.0, 0.02) for _ in range(3)],
        "better": [rng.gauss(6.5, 0.02) for _ in range(3)],
    }
    v = V.decide(groups)
    assert v.status == "best" and v.best == "better" and v.vs_runner_up.p < 0.05
    assert v.vs_base["better"].hi < 0  # lower loss than the base, the interval excludes 0
    assert "best: better" in v.text("val_loss")


def test_null_effect_is_tied():
    v = V.decide({"a": [6.90, 7.00, 6.95], "b": [6.97, 6.92, 7.01]})
    assert v.status == "tied" and v.best is None and set(v.tied) == {"a", "b"}
    assert v.seeds_needed and v.seeds_needed > 3


def test_one_seed_per_variant_is_no_verdict():
    v = V.decide({"a": [6.9], "b": [7.0]})
    assert v.status == "n=1" and v.best is None and "n=1: no verdict" in v.text("val_loss")


def test_issue_example_is_tied_with_seeds_needed():
    """rope 6.972 ± 0.043 vs alibi 6.982 ± 0.027, n = 2 (the grid the issue ran)."""
    v = V.decide({"rope": _pair(6.972, 0.043), "alibi": _pair(6.982, 0.027)})
    assert v.status == "tied" and v.top == "rope" and v.best is None
    # 2·(1.96+0.84)²·((0.043²+0.027²)/2)/0.010² ≈ 202.4
    assert v.seeds_needed == 203
    text = v.text("val_loss")
    assert "tied within noise" in text and "203 seeds per variant" in text


def test_false_positive_rate_of_the_verdict_is_near_alpha():
    """10,000 null grids (two variants, same distribution, n = 3 seeds each): the verdict marks
    a best in about alpha of them. Welch's test is slightly conservative at n = 3 with equal
    variances (about 0.035 in a 200k-grid simulation), so 10,000 grids (sd of the rate ≈ 0.002)
    keep the measured rate clear of the lower bound; about 3 s."""
    rng = random.Random(0)
    grids = 10_000
    hits = 0
    for _ in range(grids):
        g = {name: [rng.gauss(7.0, 0.05) for _ in range(3)] for name in ("a", "b")}
        hits += V.decide(g).status == "best"
    rate = hits / grids
    print(f"false-positive rate of the verdict at alpha 0.05, n=3: {rate:.4f}")
    assert 0.03 <= rate <= 0.07, rate


# --- compare on synthetic run directories ------------------------------------------------


def _fake_run(d, overrides, val_loss, finished=True):
    (d / ".hydra").mkdir(parents=True)
    (d / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    (d / "metrics.csv").write_text(f"step,val_loss,val_mlm_acc\n4,{val_loss!r},0.1\n")
    if finished:
        (d / "summary.json").write_text(json.dumps({"val_loss": val_loss}))
        (d / "model").mkdir()
        (d / "model" / "model.safetensors").write_bytes(b"")


def _grid(tmp_path, losses: dict[str, list[float]]):
    sweep = tmp_path / "sweep"
    i = 0
    for pos, values in losses.items():
        for seed, loss in enumerate(values):
            _fake_run(
                sweep / str(i), ["trainer.max_steps=4", f"model/positional={pos}", f"seed={seed}"], loss
            )
            i += 1
    return sweep


def _rows(sweep):
    with (sweep / "summary.csv").open() as f:
        return {r["variant"]: r for r in csv.DictReader(f)}


def test_compare_marks_best_only_when_distinguishable(tmp_path):
    sweep = _grid(tmp_path, {"rope": [6.50, 6.52, 6.51], "alibi": [7.00, 7.02, 7.01]})
    result = compare(sweep)
    rows = _rows(sweep)
    rope, alibi = rows["model/positional=rope"], rows["model/positional=alibi"]
    assert rope["best"] == "True" and alibi["best"] == "False" and rope["verdict"] == "best; base"
    assert rope["val_loss_n"] == "3" and float(rope["val_loss_ci_lo"]) < 6.51 < float(rope["val_loss_ci_hi"])
    # the base is the first variant; alibi's difference from it is +0.5 with its interval
    assert "base" in rope["verdict"] and float(alibi["vs_base_diff"]) == pytest.approx(0.5)
    assert float(alibi["vs_base_ci_lo"]) > 0 and float(alibi["vs_base_p"]) < 0.05
    md = (sweep / "summary.md").read_text()
    assert "(best)" in md and "Welch" in md and "95%" in md and "t-interval" in md.lower()
    assert result["best_run"] == sweep / "0"


def test_compare_issue_example_is_tied(tmp_path):
    sweep = _grid(tmp_path, {"rope": _pair(6.972, 0.043), "alibi": _pair(6.982, 0.027)})
    result = compare(sweep)
    rows = _rows(sweep)
    assert not any(r["best"] == "True" for r in rows.values()) and result["best_run"] is None
    assert {r["verdict"].split(";")[0] for r in rows.values()} == {"tied within noise"}
    md = (sweep / "summary.md").read_text()
    assert "(best)" not in md and "tied within noise" in md and "203 seeds per variant" in md
    assert "6.972 ± 0.043" in md and "n=2" in md


def test_compare_one_seed_shows_no_spread_and_no_verdict(tmp_path):
    sweep = _grid(tmp_path, {"rope": [6.5], "alibi": [7.0]})
    compare(sweep)
    rows = _rows(sweep)
    assert not any(r["best"] == "True" for r in rows.values())
    assert (
        rows["model/positional=rope"]["val_loss_std"] == ""
        and rows["model/positional=rope"]["val_loss_ci_lo"] == ""
    )
    md = (sweep / "summary.md").read_text()
    assert "6.500 n=1" in md and "±" not in md.split("Verdict")[0] and "n=1: no verdict" in md
