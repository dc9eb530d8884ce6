"""``bertsmith compare SWEEP_DIR``: one row per variant of a grid, plots, the best marked.

A *variant* is what a run's overrides change relative to the sweep's base (the overrides
every run shares), seeds aside; runs of a variant that differ only by ``seed`` are averaged
(mean ± std, n and a 95% t-interval over seeds). Every run is read whatever its state — finished, failed, still running — and
its state is shown, never a crash.

Downstream scores: a run's fine-tuning results (``RUN/finetune/<task>/summary.json``, written
by ``bertsmith finetune``) become columns ``finetune:<task>/<metric>``, averaged over seeds
like the MLM columns, and ``--metric finetune:<task>/<metric>`` ranks the grid by one of
them (higher is better, except ``mse`` and ``loss``). A grid of fine-tuning runs (``bertsmith
finetune -m ...``) compares the same way, by its own scores.

The ``tokenizer`` column is the first 12 hex digits of each variant's tokenizer hash
(``summary.json``'s ``tokenizer_sha256``, or the hash of the run's ``tokenizer.json`` while it
runs); runs of one variant that trained on different tokenizers show each, joined by ``/``.

The verdict (``verdict.py``): each variant against the sweep's base (the variant ``base``, else
the first) and the best mean against the runner-up by Welch's t-test; ``best`` is marked only
when the best is distinguishable from the runner-up at alpha 0.05, else the variants are
reported as tied within noise, with the seeds per variant a separation would need.
"""

from __future__ import annotations

import csv
import math
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from bertsmith.registry.errors import SpecError, nearest
from bertsmith.registry.jsonfile import read_json
from bertsmith.registry.yamlfile import read_yaml
from bertsmith.train.callbacks import read_metrics
from bertsmith.train.pretrain.config import DataConfig
from bertsmith.train.pretrain.tokenizer import file_sha256
from bertsmith.train.tools import verdict as V

_SEED = re.compile(r"^\+{0,2}seed=")
MLM_METRICS = ("val_loss", "val_mlm_acc")
_DOWNSTREAM = re.compile(r"^finetune:(?P<task>[^/]+)/(?P<metric>.+)$")


@dataclass
class Run:
    path: Path
    overrides: list[str]
    status: str
    seed: int | None = None
    metrics: list[dict] = field(default_factory=list)
    summary: dict = field(default_factory=dict)
    params: int | None = None
    flops: int | None = None
    tokenizer: str | None = None  # tokenizer_sha256 of the run's tokenizer
    downstream: dict[str, float] = field(default_factory=dict)  # "finetune:<task>/<metric>"

    def last(self, key: str) -> float | None:
        if key in self.downstream:
            return self.downstream[key]
        return next((r[key] for r in reversed(self.metrics) if key in r), None)

    @property
    def val_curve(self) -> list[tuple[int, float]]:
        return [(r["step"], r["val_loss"]) for r in self.metrics if "val_loss" in r]


def find_runs(sweep_dir: Path) -> list[Path]:
    """Run directories under ``sweep_dir`` (each has Hydra's ``.hydra/overrides.yaml``); a run
    inside another run is that run's fine-tuning (``RUN/finetune/<task>``), not a run of the grid."""
    found = {p.parent.parent for p in sweep_dir.rglob(".hydra/overrides.yaml")}
    found = {p for p in found if not any(q in p.parents for q in found)}

    def key(p: Path):
        rel = p.relative_to(sweep_dir).parts
        return [int(x) if x.isdigit() else x for x in rel]

    return sorted(found, key=key)


def _summary(path: Path) -> dict:
    try:
        return read_json(path)
    except SpecError:
        return {}  # missing, or half-written by a job still running


def _downstream(summary: dict) -> dict[str, float]:
    """``finetune:<task>/<metric>`` values of a fine-tuning summary (its ``metrics`` and loss)."""
    task = summary.get("task")
    if not task or not isinstance(summary.get("metrics"), dict):
        return {}
    out = {f"finetune:{task}/{k}": v for k, v in summary["metrics"].items() if isinstance(v, (int, float))}
    if isinstance(summary.get("val_loss"), (int, float)):
        out[f"finetune:{task}/loss"] = summary["val_loss"]
    return out


def downstream_of(d: Path, summary: dict) -> dict[str, float]:
    """A run's fine-tuning scores: those of ``d/finetune/*/`` and, for a fine-tuning run, its own."""
    out = {}
    for f in sorted(d.glob("finetune/*/summary.json")):
        out.update(_downstream(_summary(f)))
    out.update(_downstream(summary))
    return out


def _status(d: Path) -> str:
    if (d / "FAILED").exists():
        return "failed"
    if (d / "summary.json").exists() and (d / "model" / "model.safetensors").exists():
        return "finished"
    return "running" if (d / "metrics.csv").exists() or (d / "checkpoints").exists() else "pending"


def _costs(d: Path) -> tuple[int | None, int | None]:
    """Parameters and forward FLOPs per token at the run's sequence length, from its spec."""
    from bertsmith import registry

    if not (d / "spec.yaml").exists():
        return None, None
    try:
        spec = registry.load_spec(d / "spec.yaml")
        data = _yaml(d / "config.yaml").get("data", {})
        seq_len = DataConfig.model_validate(data).seq_len  # defaults fill what the file omits
        c = registry.cost(spec, seq_len)
    except (SpecError, AttributeError, ValidationError):
        return None, None
    return c["params"]["total"], c["flops_per_token"]["encoder"]


def load_run(d: Path) -> Run:
    listed = _yaml(d / ".hydra" / "overrides.yaml")
    overrides = [str(o) for o in listed] if isinstance(listed, list) else []
    seed = next((int(o.split("=", 1)[1]) for o in overrides if _SEED.match(o)), None)
    run = Run(d, overrides, _status(d), seed)
    try:
        run.metrics = read_metrics(d / "metrics.csv")
    except (OSError, ValueError, csv.Error):
        run.metrics = []  # a half-written file of a running job
    run.summary = _summary(d / "summary.json")
    if "task" in run.summary or (d / "config.yaml").is_file() and "task" in _config_keys(d):
        run.metrics = []  # a fine-tuning run: its val_loss is the task's, not MLM's
    run.downstream = downstream_of(d, run.summary)
    run.params, run.flops = _costs(d)
    run.tokenizer = _tokenizer_sha256(d, run.summary)
    return run


def _tokenizer_sha256(d: Path, summary: dict) -> str | None:
    recorded = summary.get("tokenizer_sha256")
    return recorded if isinstance(recorded, str) and recorded else file_sha256(d / "tokenizer.json")


def _yaml(path: Path):
    """A run's YAML file (``config.yaml``, Hydra's ``overrides.yaml``), or None when it is
    missing, half-written or not bertsmith's (read strictly: no aliases)."""
    try:
        return read_yaml(path, path.name)
    except SpecError:
        return None


def _config_keys(d: Path) -> set[str]:
    data = _yaml(d / "config.yaml")
    return set(data) if isinstance(data, dict) else set()


def variant_of(run: Run, common: set[str]) -> str:
    own = [o for o in run.overrides if o not in common and not _SEED.match(o)]
    return " ".join(own) if own else "base"


def _cells(key: str, values: list[float]) -> dict:
    """``key`` (mean), ``key_std``, ``key_n``, ``key_ci_lo``/``key_ci_hi`` (95% t-interval) over
    seeds; the std and interval are None at n = 1 (no spread to estimate)."""
    a = V.aggregate(values)
    return {key: a.mean, key + "_std": a.sd, key + "_n": a.n, key + "_ci_lo": a.lo, key + "_ci_hi": a.hi}


_SUFFIXES = ("_std", "_n", "_ci_lo", "_ci_hi")


def lower_is_better(metric: str) -> bool:
    m = _DOWNSTREAM.match(metric)
    return metric == "val_loss" or (m is not None and m["metric"] in ("mse", "loss"))


def check_metric(metric: str, runs: list[Run]) -> None:
    """``val_loss``, ``val_mlm_acc`` or a ``finetune:<task>/<metric>`` some run has."""
    known = sorted({k for r in runs for k in r.downstream})
    if metric in MLM_METRICS or metric in known:
        return
    allowed = [*MLM_METRICS, *known]
    hint = "" if known else " (no run has fine-tuning results: run bertsmith finetune init_from=SWEEP_DIR)"
    raise SpecError(
        f"--metric: given {metric!r}, allowed: {', '.join(allowed)}{nearest(metric, allowed)}{hint}"
    )


def summarize_runs(runs: list[Run], metric: str = "val_loss") -> list[dict]:
    """One row per variant, in the order variants first appear; the best marked."""
    common = set.intersection(*(set(r.overrides) for r in runs)) if runs else set()
    downstream = sorted(
        {k for r in runs for k in r.downstream if not k.endswith("/loss")}
        | ({metric} if metric.startswith("finetune:") else set())
    )
    groups: dict[str, list[Run]] = {}
    for r in runs:
        groups.setdefault(variant_of(r, common), []).append(r)
    rows = []
    for name, rs in groups.items():
        done = [r for r in rs if r.last("val_loss") is not None]
        loss = _cells("val_loss", [r.last("val_loss") for r in done])
        acc = _cells(
            "val_mlm_acc", [r.last("val_mlm_acc") for r in done if r.last("val_mlm_acc") is not None]
        )
        tps = [r.last("tokens_per_s") for r in rs if r.last("tokens_per_s") is not None]
        states = sorted({r.status for r in rs})
        rows.append(
            {
                "variant": name,
                "runs": len(rs),
                "seeds": ",".join(str(r.seed) for r in rs if r.seed is not None),
                "status": states[0]
                if len(states) == 1
                else "/".join(f"{s}:{sum(r.status == s for r in rs)}" for s in states),
                "params": next((r.params for r in rs if r.params), None),
                "flops_per_token": next((r.flops for r in rs if r.flops), None),
                "tokenizer": "/".join(dict.fromkeys(r.tokenizer[:12] for r in rs if r.tokenizer)) or None,
                **loss,
                **acc,
                "tokens_per_s": statistics.fmean(tps) if tps else None,
                "peak_rss_mb": max(
                    (r.summary["peak_rss_mb"] for r in rs if "peak_rss_mb" in r.summary), default=None
                ),
                "wall_s": statistics.fmean(
                    [r.summary["wall_s"] for r in rs if "wall_s" in r.summary] or [math.nan]
                ),
                **_downstream_cells(rs, downstream),
                "best": False,
                "verdict": "",
                "vs_base_diff": None,
                "vs_base_ci_lo": None,
                "vs_base_ci_hi": None,
                "vs_base_p": None,
                "_runs": rs,
            }
        )
    judge(rows, metric)
    return rows


def judge(rows: list[dict], metric: str) -> V.Verdict:
    """Mark the rows with the verdict on ``metric`` (variants with a finished run take part):
    ``best`` only where distinguishable from the runner-up; ``verdict`` per row; the difference
    from the base (``vs_base_*``, Welch). The Verdict goes to ``rows[0]["_verdict"]`` too."""
    scored = {
        r["variant"]: [x.last(metric) for x in r["_runs"] if x.last(metric) is not None]
        for r in rows
        if r[metric] is not None and any(x.status == "finished" for x in r["_runs"])
    }
    base = "base" if "base" in scored else next(iter(scored), None)
    v = V.decide(scored, lower_is_better(metric), base)
    for r in rows:
        name = r["variant"]
        if name not in scored:
            continue
        if name == v.best:
            r["best"] = True
        if v.status == "n=1" or len(scored[name]) < 2:
            r["verdict"] = "n=1: no verdict" if len(scored) > 1 else ""
        elif v.status == "best":
            r["verdict"] = "best" if name == v.best else ""
        elif v.status == "tied" and name in v.tied:
            r["verdict"] = "tied within noise"
        c = v.vs_base.get(name)
        if name == v.base:
            r["verdict"] = (r["verdict"] + "; base").lstrip("; ")
        if c is not None:
            r.update(vs_base_diff=c.diff, vs_base_ci_lo=c.lo, vs_base_ci_hi=c.hi, vs_base_p=c.p)
    if rows:
        rows[0]["_verdict"] = v
    return v


def _downstream_cells(rs: list[Run], keys: list[str]) -> dict:
    """Mean, std, n and interval over seeds of each downstream score (``None`` where no run has it)."""
    cells = {}
    for k in keys:
        cells.update(_cells(k, [r.downstream[k] for r in rs if k in r.downstream]))
    return cells


def _fmt(v, nd=3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return f"{v:,}" if isinstance(v, int) else str(v)


def _pm(row: dict, key: str) -> str:
    """``mean ± std [95% interval] n=N`` of ``key`` over a variant's seeds (``mean n=1`` alone)."""
    if row[key] is None:
        return "–"
    if row[key + "_n"] < 2:
        return f"{row[key]:.3f} n=1"
    return (
        f"{row[key]:.3f} ± {row[key + '_std']:.3f} [{row[key + '_ci_lo']:.3f}, {row[key + '_ci_hi']:.3f}]"
        f" n={row[key + '_n']}"
    )


def _vs_base(row: dict) -> str:
    if row["vs_base_diff"] is None:
        return "–"
    return (
        f"{row['vs_base_diff']:+.3f} [{row['vs_base_ci_lo']:+.3f}, {row['vs_base_ci_hi']:+.3f}]"
        f" p={row['vs_base_p']:.2g}"
    )


def downstream_keys(rows: list[dict]) -> list[str]:
    return [k for k in (rows[0] if rows else {}) if k.startswith("finetune:") and not k.endswith(_SUFFIXES)]


def markdown(rows: list[dict]) -> str:
    extra = downstream_keys(rows)  # "finetune:sst2/accuracy" is shown as "sst2 accuracy"
    names = "".join(f" {k.removeprefix('finetune:').replace('/', ' ')} |" for k in extra)
    head = (
        "| variant | runs | status | params | FLOPs/token | tokenizer | val MLM loss | val MLM acc |"
        f"{names} vs base | verdict | tokens/s | peak RSS MB | wall s |\n"
        f"|---|---:|---|---:|---:|---|---:|---:|{'---:|' * len(extra)}---:|---|---:|---:|---:|\n"
    )
    lines = []
    for r in rows:
        mark = " **(best)**" if r["best"] else ""
        cells = "".join(f" {_pm(r, k)} |" for k in extra)
        lines.append(
            f"| {r['variant']}{mark} | {r['runs']} | {r['status']} | {_fmt(r['params'])} | "
            f"{_fmt(r['flops_per_token'])} | {_fmt(r['tokenizer'])} | {_pm(r, 'val_loss')} | "
            f"{_pm(r, 'val_mlm_acc')} |{cells} {_vs_base(r)} | {r['verdict'] or '–'} | "
            f"{_fmt(r['tokens_per_s'], 0)} | "
            f"{_fmt(r['peak_rss_mb'], 0)} | {_fmt(r['wall_s'], 0)} |"
        )
    return head + "\n".join(lines) + "\n"


def plots(rows: list[dict], out: Path) -> list[Path]:
    """``val_loss.png`` (mean curve per variant) and ``quality_vs_throughput.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = [out / "val_loss.png", out / "quality_vs_throughput.png"]
    fig, ax = plt.subplots(figsize=(8, 5))
    for r in rows:
        curves = [dict(x.val_curve) for x in r["_runs"] if x.val_curve]
        if not curves:
            continue
        steps = sorted(set.intersection(*(set(c) for c in curves)))
        ax.plot(
            steps,
            [statistics.fmean(c[s] for c in curves) for s in steps],
            marker="o",
            label=r["variant"] + (" (best)" if r["best"] else ""),
        )
    ax.set_xlabel("step")
    ax.set_ylabel("validation MLM loss (mean over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(paths[0], dpi=110)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(7, 5))
    for r in rows:
        if r["val_loss"] is None or r["tokens_per_s"] is None:
            continue
        yerr = 0 if r["val_loss_ci_hi"] is None else r["val_loss_ci_hi"] - r["val_loss"]  # 95% t-interval
        ax.errorbar(r["tokens_per_s"], r["val_loss"], yerr=yerr, fmt="o", capsize=3)
        ax.annotate(
            r["variant"],
            (r["tokens_per_s"], r["val_loss"]),
            fontsize=7,
            xytext=(4, 4),
            textcoords="offset points",
        )
    ax.set_xlabel("training tokens/s")
    ax.set_ylabel("validation MLM loss, 95% interval over seeds (lower is better)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(paths[1], dpi=110)
    plt.close(fig)
    return paths


def compare(sweep_dir: str | Path, metric: str = "val_loss") -> dict:
    """Read every run of ``sweep_dir``; write summary.md, summary.csv and the plots there."""
    d = Path(sweep_dir)
    if not d.is_dir():
        raise SpecError(f"compare: given {str(d)!r}, allowed: an existing sweep directory")
    runs = [load_run(p) for p in find_runs(d)]
    if not runs:
        raise SpecError(
            f"compare: given {str(d)!r}, allowed: a directory holding runs (none has .hydra/overrides.yaml)"
        )
    check_metric(metric, runs)
    rows = summarize_runs(runs, metric)
    table = markdown(rows)
    v = rows[0]["_verdict"]
    table += f"\nVerdict on {metric}: {v.text(metric)}\n"
    (d / "summary.md").write_text(
        f"# {d.name}\n\n{len(runs)} runs, {len(rows)} variants; verdict by {metric}, "
        f"base: {v.base or '–'}.\n\n{table}\nMethod: cells are mean ± sd [95% interval] n over "
        f"seeds; 'vs base' is the difference of means from the base [95% interval] and Welch's p. "
        f"{V.METHOD}\n"
    )
    cols = [k for k in rows[0] if not k.startswith("_")]
    with (d / "summary.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows({k: r[k] for k in cols} for r in rows)
    images = plots(rows, d)
    best_run = _best_run(next((r for r in rows if r["best"]), None), metric)
    top_run = _best_run(next((r for r in rows if r["variant"] == v.top), None), metric)
    return {
        "table": table,
        "rows": rows,
        "images": images,
        "best_run": best_run,
        "top_run": top_run,
        "verdict": v,
    }


def _best_run(row: dict | None, metric: str) -> Path | None:
    """The finished run of ``row``'s variant with the best ``metric``."""
    if row is None:
        return None
    sign = 1 if lower_is_better(metric) else -1
    scored = [x for x in row["_runs"] if x.status == "finished" and x.last(metric) is not None]
    return min(scored, key=lambda x: sign * x.last(metric)).path if scored else None
