"""``bertsmith compare SWEEP_DIR --bench``: each variant's training step timed alone, interleaved.

The tokens/s a grid's runs log were measured while other jobs of the grid may have shared the
machine (``launcher=parallel`` runs several at once, each slowing the others): they say how
fast a run went, not how fast a variant is. ``compare`` keeps that column but labels it with
how many jobs ran at once (``jobs_at_once``: the runs' wall-clock intervals that overlap, from
``summary.json``'s ``wall_s`` and the time it was written, or, for a run still going, the times
its ``.hydra/overrides.yaml`` and ``metrics.csv`` were last written).

``--bench`` measures speed that compares variants (``bench_grid``), with ``bertsmith bench``'s
pieces (``train/tools/bench.py``)::

    one run per variant       its spec.yaml, built with random weights (speed does not
                              depend on the weights)
    one batch for all         the base run's rows: data.batch_size rows of data.seq_len tokens,
                              as pre-training packs them (else bench's 16 x 128), ids below the
                              smallest vocabulary, 30% masked (bench's train case)
    warm-up                   ``warmup`` steps of each variant
    R rounds                  each times one step of every variant in turn: A B C A B C ...
                              (``bench.interleaved``), so the machine's drift hits all alike

A step is forward, MLM loss, backward and AdamW (``bench.ours_mlm_step``), in fp32, with
the process's CPU threads or ``--bench-threads`` (1 is steadier on a small shared machine). Reported per variant: the median tokens/s over the rounds and
its min-max, the ratio of medians to the base's and the range of the per-round ratios (a
round times both back to back), model FLOP/s (``bench.train_flops``) and MFU against the fp32
GEMM rate measured in this process. Each step follows another model's, so its caches start
cold: on a 2-core CPU that costs ~0.5 ms a step, which weighs on steps of a few ms (a batch of
512 tokens of a 1-layer tiny model reads ~7% slow against itself timed back to back; at 2,048
tokens, bench's default, the two agree within a few %).
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from bertsmith.registry.errors import SpecError
from bertsmith.train.tools.bench import (
    Batch,
    interleaved,
    keep_freed_memory,
    lengths_for,
    max_len_for,
    ours_mlm_step,
    train_flops,
)
from bertsmith.train.utilisation import measured_gemm_rate

DEFAULT_SIZE = "tiny"  # without a run's config: bench --size tiny's batch (16 x 128 tokens)
DEFAULT_BATCH_TOKENS = 2048
SLACK_S = 1.0  # intervals overlapping less than this are back to back (rounding, start-up)


# --- how many jobs ran at once ---------------------------------------------------------------


def run_interval(d: Path, summary: dict) -> tuple[float, float] | None:
    """A run's wall-clock ``(start, end)``, seconds since the epoch: a finished run's from
    ``summary.json`` (written at the end; ``wall_s`` before it), a running one's from its
    ``.hydra/overrides.yaml`` (written as the job starts) to the last write of ``metrics.csv``;
    None for a run that has neither (pending)."""
    wall = summary.get("wall_s")
    if isinstance(wall, (int, float)) and wall >= 0 and (d / "summary.json").is_file():
        end = os.stat(d / "summary.json").st_mtime
        return end - float(wall), end
    try:
        start, end = os.stat(d / ".hydra" / "overrides.yaml").st_mtime, os.stat(d / "metrics.csv").st_mtime
    except OSError:
        return None
    return (start, end) if end > start else None


def jobs_at_once(intervals: list[tuple[float, float] | None]) -> list[int | None]:
    """For each interval, the most intervals (itself included) running at one moment during
    it; None for None. Each is first trimmed by ``SLACK_S``/2 at both ends (at most a quarter
    of its length), so jobs run one after another never count as overlapping."""
    trimmed = []
    for iv in intervals:
        if iv is None:
            trimmed.append(None)
            continue
        m = min(SLACK_S / 2, (iv[1] - iv[0]) / 4)
        trimmed.append((iv[0] + m, iv[1] - m))
    live = [iv for iv in trimmed if iv is not None]
    out: list[int | None] = []
    for iv in trimmed:
        if iv is None:
            out.append(None)
            continue
        moments = [iv[0], *(s for s, _ in live if iv[0] <= s < iv[1])]  # the count rises only at a start
        out.append(max(1, *(sum(s <= t < e for s, e in live) for t in moments)))
    return out


def grid_label(counts: list[int | None]) -> str:
    """The header of the grid's tokens/s column: how many jobs shared the machine."""
    known = sorted({c for c in counts if c is not None})
    if not known:
        return "tokens/s (grid)"
    if known == [1]:
        return "tokens/s (grid, 1 job at a time)"
    n = f"{known[0]}" if len(known) == 1 else f"{known[0]}–{known[-1]}"
    return f"tokens/s (grid, {n} jobs at once)"


# --- speed measured alone ----------------------------------------------------------------------


@dataclass
class Speed:
    """One variant's training step, timed in ``measure``'s interleaved rounds."""

    variant: str
    tokens: int  # real tokens of the shared batch
    seconds: list[float]  # per round
    flops: float  # useful FLOPs of one step (bench.train_flops)
    ratio_rounds: list[float]  # per round: the base's seconds / this variant's
    ratio: float = 1.0  # median tokens/s ÷ the base's

    @property
    def tokens_per_s(self) -> float:
        return statistics.median(self.tokens / s for s in self.seconds)

    @property
    def tokens_per_s_range(self) -> tuple[float, float]:
        return self.tokens / max(self.seconds), self.tokens / min(self.seconds)

    @property
    def flop_s(self) -> float:
        return self.flops / statistics.median(self.seconds)


def measure(
    steps: dict,
    tokens: int,
    flops: dict[str, float],
    base: str,
    repeats: int,
    device: str = "cpu",
    warmup: int = 1,
    clock=time.perf_counter,
) -> list[Speed]:
    """Time ``steps`` (variant: one training step) interleaved over ``repeats`` rounds after
    ``warmup`` calls each; one ``Speed`` per variant, in the order of ``steps``, its ratio to
    ``base``'s."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    times = interleaved(steps, repeats, device, clock=clock)
    out = [
        Speed(v, tokens, s, flops[v], [b / x for b, x in zip(times[base], s, strict=True)])
        for v, s in times.items()
    ]
    base_tps = next(s for s in out if s.variant == base).tokens_per_s
    for s in out:
        s.ratio = s.tokens_per_s / base_tps
    return out


def spec_path(run) -> Path | None:
    """The spec a run trained (``spec.yaml``, or its saved model's), None before it started."""
    return next((p for p in (run.path / "spec.yaml", run.path / "model" / "spec.yaml") if p.is_file()), None)


def shared_batch(specs: dict, budget, device: str, seed: int = 0) -> tuple[Batch, str]:
    """(the batch every variant is timed on, how it was made): ``budget``'s (a pre-training
    run's) rows of ``seq_len`` tokens, or bench's default; no longer than any variant's
    ``max_seq_len``; ids below the smallest vocabulary."""
    if budget is not None and budget.packed:
        seq_len, rows, source = budget.seq_len, budget.batch, "the base run's data.batch_size × data.seq_len"
    else:
        seq_len = max_len_for(DEFAULT_SIZE)
        rows, source = DEFAULT_BATCH_TOKENS // seq_len, "bertsmith bench --size tiny's default"
    longest = min(s.max_seq_len for s in specs.values())
    if seq_len > longest:
        seq_len, source = longest, f"{source}, cut to the shortest max_seq_len"
    gen = torch.Generator().manual_seed(seed)
    lengths = lengths_for("fixed", rows * seq_len, seq_len, gen)
    vocab = min(s.vocab_size for s in specs.values())
    text = f"{len(lengths)} rows × {seq_len} tokens ({source}), ids below {vocab:,}"
    return Batch(lengths, vocab, device, gen), text


def bench_grid(
    rows: list[dict],
    base: str,
    repeats: int = 5,
    device: str = "cpu",
    warmup: int = 1,
    threads: int | None = None,
) -> dict:
    """Time every variant of ``rows`` (``compare.summarize_runs``'s) that has a spec; add
    ``bench_*`` cells to every row (None where not timed); returns what ``section`` reports.
    ``threads``: torch's CPU threads while timing (None: the process's default)."""
    if repeats < 1:
        raise SpecError(f"--bench-repeats: given {repeats}, allowed: 1 or more")
    if threads is not None and threads < 1:
        raise SpecError(f"--bench-threads: given {threads}, allowed: 1 or more")
    default = torch.get_num_threads()
    torch.set_num_threads(threads or default)
    try:
        result = _bench_grid(rows, base, repeats, device, warmup)
    finally:
        torch.set_num_threads(default)
    return {**result, "threads_default": threads is None}


def _bench_grid(rows: list[dict], base: str, repeats: int, device: str, warmup: int) -> dict:
    from bertsmith import registry

    if device == "cuda" and not torch.cuda.is_available():
        raise SpecError("--bench-device: given cuda, allowed: cpu (torch sees no CUDA device here)")
    chosen = {r["variant"]: next((x for x in r["_runs"] if spec_path(x)), None) for r in rows}
    runs = {v: x for v, x in chosen.items() if x is not None}
    if not runs:
        raise SpecError(
            "compare --bench: no run of the sweep has a spec.yaml yet (none has started training)"
        )
    base = base if base in runs else next(iter(runs))
    specs = {v: registry.load_spec(spec_path(x)) for v, x in runs.items()}
    for spec in specs.values():  # e.g. a GPU grid's kernel timed on a CPU: refused, not a crash
        registry.check(spec, device=device, training=True)
    batch, batch_text = shared_batch(specs, runs[base].budget, device)
    torch.manual_seed(0)
    models = {v: registry.build(s).to(device) for v, s in specs.items()}
    if device == "cpu":
        keep_freed_memory()  # allocator as in a long-running process (see bench.keep_freed_memory)
    steps = {v: ours_mlm_step(m, batch) for v, m in models.items()}
    flops = {v: train_flops(s, batch) for v, s in specs.items()}
    speeds = measure(steps, batch.tokens, flops, base, repeats, device, warmup)
    gemm = measured_gemm_rate(device, torch.float32, torch.get_num_threads())
    by = {s.variant: s for s in speeds}
    for r in rows:
        s = by.get(r["variant"])
        lo, hi = s.tokens_per_s_range if s else (None, None)
        r.update(
            bench_tokens_per_s=s.tokens_per_s if s else None,
            bench_tokens_per_s_min=lo,
            bench_tokens_per_s_max=hi,
            bench_ratio=s.ratio if s else None,
            bench_ratio_lo=min(s.ratio_rounds) if s else None,
            bench_ratio_hi=max(s.ratio_rounds) if s else None,
            bench_mfu=s.flop_s / gemm if s else None,
        )
    return {
        "speeds": speeds,
        "base": base,
        "batch": batch_text,
        "threads": torch.get_num_threads(),
        "device": device,
        "repeats": repeats,
        "warmup": warmup,
        "gemm": gemm,
        "skipped": [v for v, x in chosen.items() if x is None],
    }


def section(result: dict, grid: str) -> str:
    """The ``summary.md`` section (and what ``compare --bench`` prints); ``grid``: the grid
    column's label (``grid_label``)."""
    head = (
        "| variant | tokens/s (median) | min–max | × base | per-round × base | model GFLOP/s | MFU |\n"
        "|---|---:|---:|---:|---:|---:|---:|\n"
    )
    lines = []
    for s in result["speeds"]:
        lo, hi = s.tokens_per_s_range
        mark = " (base)" if s.variant == result["base"] else ""
        lines.append(
            f"| {s.variant}{mark} | {s.tokens_per_s:,.0f} | {lo:,.0f}–{hi:,.0f} | {s.ratio:.2f} | "
            f"{min(s.ratio_rounds):.2f}–{max(s.ratio_rounds):.2f} | {s.flop_s / 1e9:,.1f} | "
            f"{s.flop_s / result['gemm']:.1%} |"
        )
    skipped = f" Not timed (no spec.yaml yet): {', '.join(result['skipped'])}." if result["skipped"] else ""
    threads = result["threads"]
    how = "the process's default" if result.get("threads_default", True) else "as --bench-threads asked"
    return (
        "## Speed (measured alone, interleaved)\n\n"
        f"Each variant's training step (forward, MLM loss, backward, AdamW; fp32 on "
        f"{result['device']}, {threads} thread{'s' if threads > 1 else ''}: {how}) "
        f"on one shared batch of {result['batch']}, 30% masked; random weights. {result['warmup']} "
        f"warm-up step{'s' if result['warmup'] != 1 else ''} each, then {result['repeats']} rounds timing one step of every variant in "
        f"turn (A B C A B C ...). tokens/s: the median over rounds and its min–max; × base: the "
        f"ratio of medians to the base's; per-round: the range of the base's time ÷ the variant's "
        f"within a round; MFU against an fp32 GEMM measured here ({result['gemm'] / 1e9:,.1f} GFLOP/s). "
        f"The table's {grid} is what the runs logged while training.{skipped}\n\n"
        + head
        + "\n".join(lines)
        + "\n"
    )
