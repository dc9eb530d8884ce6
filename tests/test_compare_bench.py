"""``bertsmith compare --bench``: speed measured alone, interleaved; the grid's tokens/s labelled
with how many jobs ran at once. Timings here are noisy: no absolute speed is asserted."""

import csv
import json
import os
import statistics

import pytest
import yaml
from helpers import run_main

from bertsmith import registry
from bertsmith.registry.io import spec_file_text
from bertsmith.train.tools import compare_bench as CB
from bertsmith.train.tools.bench import interleaved, ours_mlm_step
from bertsmith.train.tools.compare import Budget, compare

T0 = 1_700_000_000.0  # a wall-clock origin for synthetic run times


def _tiny(**fields):
    """modernbert-tiny, narrow enough that a training step takes milliseconds."""
    over = {"d_model": 64, "d_ff": 96, "n_layers": 1, "vocab_size": 512, **fields}
    return registry.compose("modernbert-tiny", [f"model.{k}={v}" for k, v in over.items()])


def _run(d, overrides, *, spec=None, times=None, running=False, seq_len=64, batch=4):
    """A pre-training run directory: ``times`` = (start, end) wall-clock; a finished run records
    them as summary.json's ``wall_s`` and its write time, a running one as the write times of
    ``.hydra/overrides.yaml`` and ``metrics.csv``; no ``times``: a pending run (no metrics)."""
    (d / ".hydra").mkdir(parents=True)
    (d / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    cfg = {"data": {"seq_len": seq_len, "batch_size": batch}, "trainer": {"max_steps": 2}}
    (d / "config.yaml").write_text(yaml.safe_dump(cfg))
    if spec is not None:
        (d / "spec.yaml").write_text(spec_file_text(spec))
    if times is None:
        return d
    start, end = times
    (d / "metrics.csv").write_text(
        "step,train_loss,lr,tokens_per_s,val_loss,val_mlm_acc\n1,9.0,0.001,1000.0,,\n2,,,,6.0,0.1\n"
    )
    if running:
        os.utime(d / ".hydra" / "overrides.yaml", (start, start))
        os.utime(d / "metrics.csv", (end, end))
    else:
        (d / "summary.json").write_text(json.dumps({"val_loss": 6.0, "wall_s": end - start}))
        (d / "model").mkdir()
        (d / "model" / "model.safetensors").write_bytes(b"")
        os.utime(d / "summary.json", (end, end))
    return d


def _csv(sweep):
    with (sweep / "summary.csv").open() as f:
        return {r["variant"]: r for r in csv.DictReader(f)}


# --- the arithmetic, on a stubbed clock ---------------------------------------------------------


class FakeClock:
    """``clock()`` reads ``now``; each step advances it by its next duration."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def step(self, durations, calls, name):
        it = iter(durations)

        def call():
            calls.append(name)
            self.now += next(it)

        return call


def test_interleaving_is_round_robin_after_one_warm_up_each():
    calls = []
    clock = FakeClock()
    steps = {v: clock.step([0.1] * 4, calls, v) for v in ("a", "b", "c")}
    CB.measure(steps, 100, {"a": 1, "b": 1, "c": 1}, "a", repeats=3, clock=clock)
    assert calls == ["a", "b", "c"] + ["a", "b", "c"] * 3


def test_median_spread_and_ratio_on_a_stubbed_clock():
    """Warm-up time (100 s) is not counted; tokens/s is the median over rounds of tokens ÷
    seconds; the ratio is of medians; the per-round ratio is the base's seconds ÷ the variant's."""
    calls = []
    clock = FakeClock()
    base = [100.0, 1.0, 2.0, 1.5, 1.0, 3.0]  # median of the timed: 1.5 s
    fast = [100.0, 0.5, 1.0, 1.0, 0.4, 1.5]
    steps = {"base": clock.step(base, calls, "base"), "fast": clock.step(fast, calls, "fast")}
    speeds = CB.measure(steps, 300, {"base": 3e9, "fast": 1.5e9}, "base", repeats=5, clock=clock)
    b, f = speeds
    assert (b.variant, f.variant) == ("base", "fast")
    assert b.seconds == pytest.approx(base[1:]) and f.seconds == pytest.approx(fast[1:])
    assert b.tokens_per_s == pytest.approx(300 / 1.5)
    assert f.tokens_per_s == pytest.approx(statistics.median([600, 300, 300, 750, 200]))  # 300
    assert b.tokens_per_s_range == (pytest.approx(100), pytest.approx(300))
    assert f.tokens_per_s_range == (pytest.approx(200), pytest.approx(750))
    assert b.ratio == 1.0 and f.ratio == pytest.approx(1.5)
    assert f.ratio_rounds == pytest.approx([2.0, 2.0, 1.5, 2.5, 2.0]) and b.ratio_rounds == [1.0] * 5
    assert b.flop_s == pytest.approx(2e9) and f.flop_s == pytest.approx(1.5e9)
    text = CB.section(
        {
            "speeds": speeds,
            "base": "base",
            "batch": "4 rows × 64 tokens",
            "threads": 2,
            "device": "cpu",
            "repeats": 5,
            "warmup": 1,
            "gemm": 1e10,
            "skipped": [],
        },
        "tokens/s (grid, 2 jobs at once)",
    )
    assert "| base (base) | 200 | 100–300 | 1.00 | 1.00–1.00 | 2.0 | 20.0% |" in text
    assert "| fast | 300 | 200–750 | 1.50 | 1.50–2.50 | 1.5 | 15.0% |" in text
    assert "2 threads: the process's default" in text and "5 rounds" in text


def test_interleaved_times_each_step_with_the_given_clock():
    clock = FakeClock()
    steps = {"x": clock.step([0.25, 0.5], [], "x"), "y": clock.step([2.0, 4.0], [], "y")}
    assert interleaved(steps, 2, "cpu", clock=clock) == {"x": [0.25, 0.5], "y": [2.0, 4.0]}


# --- how many jobs ran at once --------------------------------------------------------------------


def test_jobs_at_once_from_intervals():
    one_after_another = [(0, 10), (10.2, 20), (19.9, 30)]  # touching ends: rounding, not overlap
    assert CB.jobs_at_once(one_after_another) == [1, 1, 1]
    two_workers = [(0, 10), (0.1, 12), (10.05, 20), (12.1, 22)]  # joblib n_jobs=2, four jobs
    assert CB.jobs_at_once(two_workers) == [2, 2, 2, 2]
    nested = [(0, 10), (1, 9), (2, 8), (9.8, 15), None]
    assert CB.jobs_at_once(nested) == [3, 3, 3, 1, None]
    assert CB.jobs_at_once([(5, 5)]) == [1]  # a zero-length interval is still one job
    assert CB.grid_label([2, 2, None]) == "tokens/s (grid, 2 jobs at once)"
    assert CB.grid_label([1, 3]) == "tokens/s (grid, 1–3 jobs at once)"
    assert CB.grid_label([1, 1]) == "tokens/s (grid, 1 job at a time)"
    assert CB.grid_label([None]) == "tokens/s (grid)"


def test_grid_tokens_per_s_is_labelled_with_the_jobs_that_shared_the_machine(tmp_path):
    """Two workers: runs 0 and 1 together, then 2 (finished) with 3 (still running: its times
    from overrides.yaml and metrics.csv); run 4 pending. Then the same grid one job at a time."""
    sweep = tmp_path / "parallel"
    times = [(T0, T0 + 60), (T0 + 1, T0 + 50), (T0 + 50.5, T0 + 100), (T0 + 60.2, T0 + 90)]
    for i, (pos, seed) in enumerate([("rope", 0), ("alibi", 0), ("rope", 1), ("alibi", 1), ("alibi", 2)]):
        iv = times[i] if i < 4 else None
        _run(sweep / str(i), [f"model/positional={pos}", f"seed={seed}"], times=iv, running=i == 3)
    result = compare(sweep)
    assert [r.interval for r in _runs(result)][:4] == [pytest.approx(t) for t in times]
    assert _runs(result)[4].interval is None
    rows = _csv(sweep)
    assert rows["model/positional=rope"]["grid_jobs_at_once"] == "2"
    assert rows["model/positional=alibi"]["grid_jobs_at_once"] == "2"
    md = (sweep / "summary.md").read_text()
    assert "| verdict | tokens/s (grid, 2 jobs at once) | peak RSS MB |" in md
    assert "| params | FLOPs/token |" in md  # unchanged columns
    assert "Speed (measured alone" not in md and "bench_tokens_per_s" not in rows["model/positional=rope"]

    alone = tmp_path / "alone"
    for i, pos in enumerate(["rope", "alibi"]):
        _run(alone / str(i), [f"model/positional={pos}"], times=(T0 + 10 * i, T0 + 10 * i + 9.9))
    compare(alone)
    assert "| tokens/s (grid, 1 job at a time) |" in (alone / "summary.md").read_text()
    assert {r["grid_jobs_at_once"] for r in _csv(alone).values()} == {"1"}


def _runs(result):
    return [x for r in result["rows"] for x in r["_runs"]]


# --- the shared batch and the bench end to end ------------------------------------------------------


def test_shared_batch_uses_the_base_rows_below_every_vocabulary_and_length():
    specs = {"a": _tiny(vocab_size=512), "b": _tiny(vocab_size=300, max_seq_len=48)}
    batch, text = CB.shared_batch({"a": specs["a"]}, Budget(10, 4, 32), "cpu")
    assert batch.lengths == [32] * 4 and batch.tokens == 128 and "4 rows × 32 tokens" in text
    batch, text = CB.shared_batch(specs, Budget(10, 4, 64), "cpu")
    assert batch.lengths == [48] * 4 and "cut to the shortest max_seq_len" in text
    assert int(batch.packed.max()) < 300 and "ids below 300" in text
    batch, text = CB.shared_batch(specs, None, "cpu")  # no config: bench --size tiny, cut to 48
    assert batch.lengths == [48] * (2048 // 128)


def test_compare_bench_end_to_end_interleaves_every_variant(tmp_path, monkeypatch):
    """A grid of three variants, one without a spec.yaml yet (not timed, said so): each step
    of the real model runs in the order warm-up A B, then A B per round; the table's cells are
    the Speed's own numbers; the base's ratio is 1."""
    sweep = tmp_path / "sweep"
    for i, (n, seed) in enumerate([(1, 0), (1, 1), (2, 0), (3, 0)]):
        spec = _tiny(n_layers=n) if n < 3 else None
        _run(sweep / str(i), [f"model.n_layers={n}", f"seed={seed}"], spec=spec, times=(T0 + i, T0 + i + 0.5))
    order = []

    def spy(model, batch, compiled=False):
        step = ours_mlm_step(model, batch, compiled)

        def call():
            order.append(model.spec.n_layers)
            return step()

        return call

    monkeypatch.setattr(CB, "ours_mlm_step", spy)
    result = compare(sweep, bench=True, bench_repeats=3)
    assert order == [1, 2] + [1, 2] * 3
    rows = _csv(sweep)
    base, deeper, pending = (rows[f"model.n_layers={n}"] for n in (1, 2, 3))
    assert float(base["bench_ratio"]) == 1.0
    ratio = float(deeper["bench_tokens_per_s"]) / float(base["bench_tokens_per_s"])
    assert float(deeper["bench_ratio"]) == pytest.approx(ratio, rel=1e-9)
    for r in (base, deeper):
        lo, mid, hi = (
            float(r[k]) for k in ("bench_tokens_per_s_min", "bench_tokens_per_s", "bench_tokens_per_s_max")
        )
        assert 0 < lo <= mid <= hi
        assert float(r["bench_ratio_lo"]) <= float(r["bench_ratio_hi"]) and float(r["bench_mfu"]) > 0
    assert pending["bench_tokens_per_s"] == "" and pending["bench_ratio"] == ""
    md = (sweep / "summary.md").read_text()
    assert result["speed"] and result["speed"] in md
    assert "## Speed (measured alone, interleaved)" in md
    assert "on one shared batch of 4 rows × 64 tokens (the base run's data.batch_size × data.seq_len)" in md
    assert "Not timed (no spec.yaml yet): model.n_layers=3." in md
    assert f"| model.n_layers=1 (base) | {float(base['bench_tokens_per_s']):,.0f} |" in md
    assert "The table's tokens/s (grid, 1 job at a time) is what the runs logged" in md


def test_cli_bench_prints_the_section_and_refuses_bad_repeats(tmp_path):
    sweep = tmp_path / "sweep"
    for i, n in enumerate([1, 2]):
        _run(sweep / str(i), [f"model.n_layers={n}"], spec=_tiny(n_layers=n), times=(T0 + i, T0 + i + 0.5))
    out = run_main("compare", sweep, "--bench", "--bench-repeats", "2")
    assert out.returncode == 0, out.stderr
    assert "## Speed (measured alone, interleaved)" in out.stdout and "| model.n_layers=2 |" in out.stdout
    assert "2 rounds timing one step of every variant" in out.stdout
    bad = run_main("compare", sweep, "--bench", "--bench-repeats", "0")
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0
    assert "--bench-repeats: given 0, allowed: 1 or more" in bad.stderr
    empty = tmp_path / "empty"
    _run(empty / "0", ["model.n_layers=1"], times=(T0, T0 + 1))  # no spec.yaml anywhere
    none = run_main("compare", empty, "--bench")
    assert none.returncode == 2 and "no run of the sweep has a spec.yaml" in none.stderr
    gpu = tmp_path / "gpu"
    spec = _tiny().model_copy(update={"kernel": registry.REGISTRY.get("kernel", "flash_attn").params()})
    _run(gpu / "0", ["model.n_layers=1"], spec=spec, times=(T0, T0 + 1))
    refused = run_main("compare", gpu, "--bench")  # checked from the kernel's capabilities, not a crash
    assert refused.returncode == 2 and refused.stderr.strip().count("\n") == 0, refused.stderr
    assert "kernel" in refused.stderr and "Traceback" not in refused.stderr


def test_ratios_agree_with_each_variant_timed_separately(tmp_path):
    """``compare --bench``'s ratio within noise (25%) of the ratio of each variant timed alone,
    one after the other, with ``bertsmith bench``'s training step and timing; a 3-layer model
    is clearly slower than a 1-layer one. One thread on both sides: two threads on two cores
    that other work shares stall each other at every barrier, by 100x at times. 2,048 tokens
    a batch (bench --size tiny's): steps of a few ms would add the cold cache a switch of
    model costs (~0.5 ms here) and read the smaller model's speed ~7% low."""
    import torch

    sweep = tmp_path / "sweep"
    for i, n in enumerate([1, 3]):
        spec = _tiny(n_layers=n, d_model=128, d_ff=256)
        _run(
            sweep / str(i),
            [f"model.n_layers={n}"],
            spec=spec,
            times=(T0 + i, T0 + i + 0.5),
            seq_len=128,
            batch=16,
        )
    threads = torch.get_num_threads()
    result = compare(sweep, bench=True, bench_repeats=7, bench_threads=1)
    assert torch.get_num_threads() == threads  # given back
    assert "1 thread: as --bench-threads asked" in result["speed"]
    together = float(_csv(sweep)["model.n_layers=3"]["bench_ratio"])

    specs = {n: registry.load_spec(sweep / str(i) / "spec.yaml") for i, n in enumerate([1, 3])}
    batch, _ = CB.shared_batch(specs, Budget(2, 16, 128), "cpu")
    alone = {}
    torch.set_num_threads(1)
    try:
        for n, spec in specs.items():
            step = ours_mlm_step(registry.build(spec), batch)
            step()
            alone[n] = statistics.median(interleaved({n: step}, 7, "cpu")[n])
    finally:
        torch.set_num_threads(threads)
    separate = alone[1] / alone[3]  # tokens/s of 3 layers ÷ of 1 layer
    assert separate < 0.8 and together < 0.8, (separate, together)
    assert together == pytest.approx(separate, rel=0.25)


def test_bench_training_step_takes_a_dense_head_too():
    """A dense MLM head decodes every token; the step's loss is over the masked ones, the same
    as a sparse head's with the same weights."""
    import torch

    sparse = registry.build(_tiny())
    dense = registry.build(
        sparse.spec.model_copy(update={"head": sparse.spec.head.model_copy(update={"sparse": False})})
    )
    dense.load_state_dict(sparse.state_dict())
    batch, _ = CB.shared_batch({"a": sparse.spec}, Budget(2, 4, 32), "cpu")
    a, b = ours_mlm_step(sparse, batch)(), ours_mlm_step(dense, batch)()
    assert int(batch.predict.sum()) > 0 and torch.allclose(a, b, rtol=1e-5, atol=1e-6)
