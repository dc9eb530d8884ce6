"""The plots of ``bertsmith compare``, and the numbers they draw (``curves``, ``finals``).

- ``val_loss.png``: every variant's validation MLM loss curve — the mean over seeds at each
  validation step, with a band of the 95% t-interval over seeds where n >= 2 — on a shared x
  axis of tokens seen (``Budget.tokens_at``: batch × seq_len × accumulate × devices per step,
  less the batch-size warm-up); optimizer steps when a run's tokens per step are unknown. The
  baseline (the unigram loss) is a dashed line.
- ``final_metric.png``: the final value of the verdict's metric per variant with its 95%
  interval (the aggregates of the table), sorted best first, the base a square, n=1 hollow
  and without interval, the baseline a dashed line.
- ``quality_vs_throughput.png``: final validation MLM loss against the training tokens/s
  observed in the grid.

Labels are wrapped (long variant names over several lines), each figure is laid out with
``tight_layout`` and saved with ``bbox_inches="tight"``; ``Drawn.fits`` records, per file,
whether every axes' drawn extent (tick labels, axis labels, title, legend) lies inside its
figure: nothing is clipped.
"""

from __future__ import annotations

import statistics
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

from bertsmith.train.tools import verdict as V

WRAP = 28  # characters per line of a variant's name in legends and tick labels
FILES = ("val_loss.png", "final_metric.png", "quality_vs_throughput.png")


@dataclass
class Curve:
    """One variant's validation curve: at each validation step, x (tokens seen, or the step),
    the mean over the seeds that reached it, its 95% t-interval (None where n < 2) and n."""

    variant: str
    step: list[int] = field(default_factory=list)
    x: list[float] = field(default_factory=list)
    mean: list[float] = field(default_factory=list)
    lo: list[float | None] = field(default_factory=list)
    hi: list[float | None] = field(default_factory=list)
    n: list[int] = field(default_factory=list)
    best: bool = False
    base: bool = False


@dataclass
class Final:
    """A variant's final value of the metric: mean, 95% interval (None at n = 1) and n."""

    variant: str
    mean: float
    lo: float | None
    hi: float | None
    n: int
    best: bool = False
    base: bool = False


@dataclass
class Drawn:
    """What ``draw`` wrote and drew: the files, the data, and per file the labels as drawn
    (``labels``: legend entries; for ``final_metric.png`` its tick labels, top to bottom) and
    whether everything lies inside the figure (``fits``)."""

    paths: list[Path]
    metric: str
    unit: str  # the curves' x axis: "tokens" or "step"
    curves: list[Curve]
    finals: list[Final]
    labels: dict[str, list[str]] = field(default_factory=dict)
    fits: dict[str, bool] = field(default_factory=dict)
    baseline: dict[str, list[float]] = field(default_factory=dict)  # per file: baseline lines drawn


def _base(rows: list[dict]) -> str | None:
    v = rows[0].get("_verdict") if rows else None
    return v.base if v is not None else None


def curves(rows: list[dict], key: str = "val_loss") -> tuple[str, list[Curve]]:
    """Each variant's curve of ``key`` over seeds, and the unit of the shared x axis: "tokens"
    when every run with a curve knows its tokens per step (a pre-training ``config.yaml``),
    else "step". A point's n is the number of the variant's runs that reached that step."""
    with_curve = [x for r in rows for x in r["_runs"] if x.curve(key)]
    unit = "tokens" if with_curve and all(x.budget and x.budget.packed for x in with_curve) else "step"
    base = _base(rows)
    out = []
    for r in rows:
        points: dict[int, list[tuple[float, float]]] = {}
        for run in r["_runs"]:
            for step, y in dict(run.curve(key)).items():  # a step written twice: its last value
                x = run.budget.tokens_at(step) if unit == "tokens" else step
                points.setdefault(step, []).append((x, y))
        if not points:
            continue
        c = Curve(r["variant"], best=r["best"], base=r["variant"] == base)
        for step in sorted(points):
            xs, ys = zip(*points[step], strict=True)
            a = V.aggregate(list(ys))
            c.step.append(step)
            c.x.append(statistics.fmean(xs))
            c.mean.append(a.mean)
            c.lo.append(a.lo)
            c.hi.append(a.hi)
            c.n.append(a.n)
        out.append(c)
    return unit, out


def finals(rows: list[dict], metric: str) -> list[Final]:
    """The final ``metric`` of each variant that has one, best first (the table's aggregates)."""

    base = _base(rows)
    items = [
        Final(
            r["variant"],
            r[metric],
            r.get(metric + "_ci_lo"),
            r.get(metric + "_ci_hi"),
            r.get(metric + "_n") or 1,
            r["best"],
            r["variant"] == base,
        )
        for r in rows
        if r.get(metric) is not None
    ]
    sign = 1 if V.lower_is_better(metric) else -1
    return sorted(items, key=lambda f: sign * f.mean)


def metric_label(metric: str) -> str:
    names = {"val_loss": "validation MLM loss", "val_mlm_acc": "validation MLM accuracy"}
    if metric in names:
        return names[metric]
    task, _, name = metric.removeprefix("finetune:").partition("/")
    return f"{task} {name} (fine-tuning)"


def _wrap(name: str) -> str:
    return textwrap.fill(name, WRAP, break_on_hyphens=False) or name


def _tag(name: str, best: bool, base: bool) -> str:
    tags = [t for t, on in (("best", best), ("base", base)) if on]
    return _wrap(name) + (f" ({', '.join(tags)})" if tags else "")


def _fits(fig) -> bool:
    """Whether every axes' drawn extent (ticks, labels, title, legend) is inside the figure."""
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    box = fig.bbox
    for ax in fig.axes:
        bb = ax.get_tightbbox(r)
        if bb.x0 < box.x0 - 1 or bb.y0 < box.y0 - 1 or bb.x1 > box.x1 + 1 or bb.y1 > box.y1 + 1:
            return False
    return True


def _save(fig, path: Path, drawn: Drawn) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    drawn.fits[path.name] = _fits(fig)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def _baseline_lines(ax, b, colors: dict[str, str], horizontal: bool, ypos: dict[str, float]) -> list[float]:
    """The baseline: one dashed line where every variant shares it, else a dotted line (curves)
    in the variant's colour (curves) or an x on the variant's row (final values) per variant.
    Returns the values drawn."""
    if b is None:
        return []
    if b.value is not None:
        line = ax.axhline if horizontal else ax.axvline
        line(b.value, color="0.35", ls="--", lw=1.2, label=f"baseline: {b.name} {b.value:.3f}")
        return [b.value]
    drawn = []
    for variant, value in b.values.items():
        if horizontal and variant in colors:
            ax.axhline(
                value, color=colors[variant], ls=":", lw=1, label=_wrap(f"baseline of {variant}: {b.name}")
            )
        elif not horizontal and variant in ypos:
            first = not drawn
            ax.plot(
                [value], [ypos[variant]], "x", color="0.35", label=f"baseline: {b.name}" if first else None
            )
        else:
            continue
        drawn.append(value)
    return drawn


def draw(rows: list[dict], out: Path, metric: str = "val_loss", base_lines: dict | None = None) -> Drawn:
    """Write ``FILES`` into ``out``; return what they show (``Drawn``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import EngFormatter

    base_lines = base_lines or {}
    unit, cs = curves(rows)
    fs = finals(rows, metric)
    drawn = Drawn([out / f for f in FILES], metric, unit, cs, fs)

    # 1. validation curves on tokens seen, bands over seeds
    fig, ax = plt.subplots(figsize=(10, 5.5))
    colors = {}
    for i, c in enumerate(cs):
        colors[c.variant] = color = f"C{i % 10}"
        ax.plot(c.x, c.mean, marker="o", ms=3, color=color, label=_tag(c.variant, c.best, c.base))
        has = [lo is not None for lo in c.lo]
        if any(has):
            lo = [m if v is None else v for m, v in zip(c.mean, c.lo, strict=True)]
            hi = [m if v is None else v for m, v in zip(c.mean, c.hi, strict=True)]
            ax.fill_between(c.x, lo, hi, where=has, color=color, alpha=0.2, lw=0)
    drawn.baseline[FILES[0]] = _baseline_lines(ax, base_lines.get("val_loss"), colors, True, {})
    if not cs:
        ax.text(0.5, 0.5, "no validation points yet", transform=ax.transAxes, ha="center")
    if unit == "tokens":
        ax.set_xlabel("tokens seen (batch × seq_len × accumulate × devices per step)")
        ax.xaxis.set_major_formatter(EngFormatter())
    else:
        ax.set_xlabel("optimizer step (tokens per step unknown for a run: no pre-training config.yaml)")
    ax.set_ylabel("validation MLM loss")
    ax.set_title("Validation MLM loss: mean over seeds, band = 95% t-interval (n ≥ 2)", fontsize=10)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        leg = ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1), borderaxespad=0)
        drawn.labels[FILES[0]] = [t.get_text() for t in leg.get_texts()]
    _save(fig, drawn.paths[0], drawn)

    # 2. the final metric per variant with its interval, sorted, the base marked
    fig, ax = plt.subplots(figsize=(9, max(2.8, 0.55 * len(fs) + 1.6)))
    ypos = {f.variant: float(len(fs) - 1 - i) for i, f in enumerate(fs)}  # best at the top
    for f in fs:
        y, color, marker = ypos[f.variant], "C3" if f.base else "C0", "s" if f.base else "o"
        if f.lo is not None:
            err = [[f.mean - f.lo], [f.hi - f.mean]]
            ax.errorbar([f.mean], [y], xerr=err, fmt=marker, color=color, capsize=4, ms=6)
        else:
            ax.plot([f.mean], [y], marker, mfc="none", color=color, ms=7)
    ticks = [f"{_tag(f.variant, f.best, f.base)}\nn={f.n}" for f in fs]
    ax.set_yticks([ypos[f.variant] for f in fs], ticks, fontsize=8)
    ax.set_ylim(-0.7, max(0.7, len(fs) - 0.3))
    drawn.labels[FILES[1]] = ticks
    drawn.baseline[FILES[1]] = _baseline_lines(ax, base_lines.get(metric), {}, False, ypos)
    if not fs:
        ax.text(0.5, 0.5, f"no variant has {metric} yet", transform=ax.transAxes, ha="center")

    better = "lower is better" if V.lower_is_better(metric) else "higher is better"
    ax.set_xlabel(f"final {metric_label(metric)} ({better})")
    ax.set_title(f"{metric}: mean over seeds and 95% t-interval, best first", fontsize=10)
    handles = [
        Line2D([], [], marker="o", color="C0", ls="-", label="mean, 95% t-interval over seeds"),
        Line2D([], [], marker="o", color="C0", mfc="none", ls="none", label="n=1: no interval"),
        Line2D([], [], marker="s", color="C3", ls="none", label="the base variant"),
    ]
    handles += [h for h in ax.get_legend_handles_labels()[0] if h.get_label().startswith("baseline")]
    ax.legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1), borderaxespad=0)
    ax.grid(alpha=0.3, axis="x")
    _save(fig, drawn.paths[1], drawn)

    # 3. quality against the throughput observed in the grid
    fig, ax = plt.subplots(figsize=(8, 5.5))
    for r in rows:
        if r["val_loss"] is None or r["tokens_per_s"] is None:
            continue
        yerr = 0 if r["val_loss_ci_hi"] is None else r["val_loss_ci_hi"] - r["val_loss"]  # 95% t-interval
        ax.errorbar(r["tokens_per_s"], r["val_loss"], yerr=yerr, fmt="o", capsize=3)
        ax.annotate(
            _wrap(r["variant"]),
            (r["tokens_per_s"], r["val_loss"]),
            fontsize=7,
            xytext=(4, 4),
            textcoords="offset points",
        )
    drawn.baseline[FILES[2]] = _baseline_lines(ax, base_lines.get("val_loss"), {}, True, {})
    if drawn.baseline[FILES[2]] and base_lines["val_loss"].value is not None:
        ax.legend(fontsize=8)
    ax.set_xlabel("training tokens/s observed in the grid (jobs may have shared the machine)")
    ax.set_ylabel("validation MLM loss, 95% interval over seeds (lower is better)")
    ax.grid(alpha=0.3)
    _save(fig, drawn.paths[2], drawn)
    return drawn


def describe(drawn: Drawn) -> str:
    """summary.md's paragraph on the plots."""
    axis = "tokens seen" if drawn.unit == "tokens" else "optimizer steps (tokens per step unknown)"
    line = ", the baseline a dashed line" if drawn.baseline.get(FILES[0]) else ""
    final_line = ", the baseline marked" if drawn.baseline.get(FILES[1]) else ""
    return (
        f"Plots: `val_loss.png`, each variant's validation MLM loss against {axis}, the mean over "
        f"seeds with its 95% t-interval as a band{line}; `final_metric.png`, the final "
        f"{drawn.metric} per variant with its 95% interval, sorted best first, the base a square, "
        f"n=1 hollow{final_line}; `quality_vs_throughput.png`, final validation MLM loss against "
        "the tokens/s observed in the grid."
    )
