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

The context a reader needs (``summary.md``): the training budget (``Budget``, from each run's
``config.yaml``: steps, batch, sequence length, tokens), the base recipe (the base variant's
config groups and overrides), and the baseline every variant must beat (``Baseline``: the unigram
loss of pre-training summaries, the majority class or other ``baseline`` of fine-tuning ones) as
a row of the table and a line in the plots (``compare_plots``: learning curves on tokens seen with
a band over seeds, the final metric per variant with its interval, sorted, the base marked).
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
from bertsmith.train.tools import compare_bench as CB
from bertsmith.train.tools import compare_plots as P
from bertsmith.train.tools import verdict as V

_SEED = re.compile(r"^\+{0,2}seed=")
MLM_METRICS = ("val_loss", "val_mlm_acc")
_DOWNSTREAM = V.DOWNSTREAM
lower_is_better = V.lower_is_better


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
    budget: Budget | None = None  # from config.yaml
    baselines: dict[str, tuple[str, float]] = field(default_factory=dict)  # metric: (name, value)
    interval: tuple[float, float] | None = None  # wall-clock (start, end): compare_bench.run_interval

    def last(self, key: str) -> float | None:
        if key in self.downstream:
            return self.downstream[key]
        return next((r[key] for r in reversed(self.metrics) if key in r), None)

    def curve(self, key: str = "val_loss") -> list[tuple[int, float]]:
        """``(step, value)`` at each validation of the run (``metrics.csv``'s rows that have it)."""
        return [(r["step"], r[key]) for r in self.metrics if key in r]

    @property
    def val_curve(self) -> list[tuple[int, float]]:
        return self.curve("val_loss")


@dataclass(frozen=True)
class Budget:
    """What a run was given to train with (its ``config.yaml``). Pre-training packs rows of
    exactly ``seq_len`` tokens, so the tokens of a step are known: ``batch × seq_len ×
    accumulate × devices``, less the rows the batch-size warm-up leaves out of its first
    micro-steps (``schedule.batch_warmup_steps``). Fine-tuning batches are padded sequences of
    at most ``seq_len`` tokens (``data.max_len``): steps and batch only, no token count."""

    max_steps: int
    batch: int
    seq_len: int
    accumulate: int = 1
    devices: int = 1  # trainer.devices × trainer.num_nodes
    warmup_steps: int = 0  # micro-steps of batch-size warm-up
    warmup_start: float = 1.0
    packed: bool = True  # pre-training; False: fine-tuning

    @property
    def tokens_per_step(self) -> int | None:
        return self.batch * self.seq_len * self.accumulate * self.devices if self.packed else None

    def tokens_at(self, step: int) -> int | None:
        """Tokens seen after ``step`` optimizer steps: the rows of micro-steps ``0 .. step ×
        accumulate × devices - 1`` (``PretrainBatches.rows_at``) times ``seq_len``."""
        if not self.packed:
            return None
        micro = step * self.accumulate * self.devices
        rows = micro * self.batch
        for m in range(min(micro, self.warmup_steps)):
            frac = self.warmup_start + (1 - self.warmup_start) * m / self.warmup_steps
            rows -= self.batch - min(self.batch, max(1, math.ceil(frac * self.batch)))
        return rows * self.seq_len

    @property
    def tokens(self) -> int | None:
        return self.tokens_at(self.max_steps)

    def text(self) -> str:
        if not self.packed:
            return (
                f"{self.max_steps:,} steps × batch {self.batch} sequences of up to {self.seq_len} tokens"
                " (fine-tuning: padded, no token count)"
            )
        devices = f"{self.devices} device{'s' if self.devices > 1 else ''}"
        warm = (
            f"; batch-size warm-up from {self.warmup_start:.0%} over the first {self.warmup_steps:,} micro-steps"
            if self.warmup_steps
            else ""
        )
        return (
            f"{self.max_steps:,} steps × {self.tokens_per_step:,} tokens/step (batch {self.batch} × "
            f"seq_len {self.seq_len} × accumulate {self.accumulate} × {devices}) = {self.tokens:,} tokens{warm}"
        )


def _int(section: dict, key: str, default: int) -> int:
    v = section.get(key, default)
    return v if isinstance(v, int) and not isinstance(v, bool) and v >= 1 else default


def budget_of(d: Path) -> Budget | None:
    """The run's ``Budget`` from its ``config.yaml`` (the training defaults fill keys it omits);
    None without one."""
    from bertsmith.train.pretrain.config import ScheduleConfig, TrainerConfig

    cfg = _yaml(d / "config.yaml")
    if not isinstance(cfg, dict):
        return None
    data, trainer, sched = (
        cfg.get(k) if isinstance(cfg.get(k), dict) else {} for k in ("data", "trainer", "schedule")
    )
    tf, sf, df = TrainerConfig.model_fields, ScheduleConfig.model_fields, DataConfig.model_fields
    steps = _int(trainer, "max_steps", tf["max_steps"].default)
    if "task" in cfg:  # a fine-tuning run
        return Budget(steps, _int(data, "batch_size", 32), _int(data, "max_len", 128), packed=False)
    start = sched.get("batch_warmup_start", sf["batch_warmup_start"].default)
    warm = sched.get("batch_warmup_steps", 0)
    return Budget(
        steps,
        _int(data, "batch_size", df["batch_size"].default),
        _int(data, "seq_len", df["seq_len"].default),
        _int(trainer, "accumulate", 1),
        _int(trainer, "devices", 1) * _int(trainer, "num_nodes", 1),
        warm if isinstance(warm, int) and warm > 0 else 0,
        float(start) if isinstance(start, (int, float)) and 0 < start <= 1 else 1.0,
    )


def find_runs(sweep_dir: Path) -> list[Path]:
    """Run directories under ``sweep_dir`` (each has Hydra's ``.hydra/overrides.yaml``); a run
    inside another run is that run's fine-tuning (``RUN/finetune/<task>``), not a run of the grid."""
    found = {p.parent.parent for p in sweep_dir.rglob(".hydra/overrides.yaml")}
    found = {p for p in found if not any(q in p.parents for q in found)}

    def key(p: Path):  # numbered job directories in numeric order, at any depth (sweep/more/3)
        rel = p.relative_to(sweep_dir).parts
        return [(0, int(x), "") if x.isdigit() else (1, 0, x) for x in rel]

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


def _baselines(summary: dict) -> dict[str, tuple[str, float]]:
    """What a model that learned nothing scores, by metric: the unigram loss of a pre-training
    summary (``unigram_val_loss``), a fine-tuning summary's ``baseline`` (majority class,
    training mean, majority tag) and its ``majority_accuracy``."""
    out = {}
    if isinstance(summary.get("unigram_val_loss"), (int, float)):
        out["val_loss"] = ("unigram loss", float(summary["unigram_val_loss"]))
    task, b = summary.get("task"), summary.get("baseline")
    if task and isinstance(summary.get("majority_accuracy"), (int, float)):
        out[f"finetune:{task}/accuracy"] = ("the majority class", float(summary["majority_accuracy"]))
    if task and isinstance(b, dict) and isinstance(b.get("value"), (int, float)) and b.get("metric"):
        out[f"finetune:{task}/{b['metric']}"] = (str(b.get("name", "baseline")), float(b["value"]))
    return out


def baselines_of(d: Path, summary: dict) -> dict[str, tuple[str, float]]:
    """A run's baselines: its own and those of its fine-tuning runs (``d/finetune/*/``)."""
    out = {}
    for f in sorted(d.glob("finetune/*/summary.json")):
        out.update(_baselines(_summary(f)))
    out.update(_baselines(summary))
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
    run.budget = budget_of(d)
    run.baselines = baselines_of(d, run.summary)
    run.interval = CB.run_interval(d, run.summary)
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
    at_once = dict(zip(map(id, runs), CB.jobs_at_once([r.interval for r in runs]), strict=True))
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
                # how many of the grid's jobs shared the machine while they logged it
                "grid_jobs_at_once": max((at_once[id(r)] for r in rs if at_once[id(r)]), default=None),
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


@dataclass
class Baseline:
    """What every variant must beat on ``metric``: ``name`` (the unigram loss, the majority
    class, ...) and its value per variant (the mean over the variant's runs that recorded it;
    one value where the variants share their data and tokenizer)."""

    metric: str
    name: str
    values: dict[str, float] = field(default_factory=dict)

    @property
    def value(self) -> float | None:
        """The value every variant shares, else None (e.g. variants with other tokenizers)."""
        v = list(self.values.values())
        return v[0] if v and max(v) - min(v) <= 1e-9 * max(1.0, abs(v[0])) else None

    def text(self, nd: int = 3) -> str:
        if self.value is not None:
            return f"{self.value:.{nd}f}"
        v = self.values.values()
        return f"{min(v):.{nd}f} to {max(v):.{nd}f} by variant"


def baselines(rows: list[dict]) -> dict[str, Baseline]:
    """The baselines of the grid, by metric (``val_loss``, ``finetune:<task>/<metric>``)."""
    out: dict[str, Baseline] = {}
    for r in rows:
        seen: dict[str, tuple[str, list[float]]] = {}
        for run in r["_runs"]:
            for k, (name, value) in run.baselines.items():
                seen.setdefault(k, (name, []))[1].append(value)
        for k, (name, values) in seen.items():
            out.setdefault(k, Baseline(k, name)).values[r["variant"]] = statistics.fmean(values)
    return dict(sorted(out.items(), key=lambda kv: (kv[0] != "val_loss", kv[0])))


def budget_text(rows: list[dict]) -> str:
    """The training budget: one line when every run had the same, else one line per variant."""
    by_variant = {r["variant"]: sorted({x.budget.text() for x in r["_runs"] if x.budget}) for r in rows}
    every = {t for ts in by_variant.values() for t in ts}
    if not every:
        return "Budget: unknown (no run has a config.yaml)."
    if len(every) == 1 and all(by_variant.values()):
        return f"Budget per run: {every.pop()}."
    lines = "".join(f"\n- {v}: {' / '.join(ts) or 'unknown'}" for v, ts in by_variant.items())
    return f"Budget per run, by variant (not the same for all):{lines}"


def recipe_text(rows: list[dict], base: str | None) -> str:
    """The base recipe: the base variant's Hydra config groups, its overrides (seed aside) and
    the optimizer and schedule its config resolved to."""
    row = next((r for r in rows if r["variant"] == base), rows[0])
    run = row["_runs"][0]
    hydra = _yaml(run.path / ".hydra" / "hydra.yaml")
    runtime = hydra.get("hydra", {}).get("runtime", {}) if isinstance(hydra, dict) else {}
    choices = runtime.get("choices") if isinstance(runtime, dict) else None
    groups = [
        f"{k}={v}"
        for k, v in reversed(list(choices.items() if isinstance(choices, dict) else []))
        if "/" not in str(k) and v is not None and k != "launcher"
    ]
    own = [o for o in run.overrides if not _SEED.match(o)]
    cfg = _yaml(run.path / "config.yaml")
    cfg = cfg if isinstance(cfg, dict) else {}
    optim, sched = (cfg.get(k) if isinstance(cfg.get(k), dict) else {} for k in ("optim", "schedule"))
    parts = [" ".join(groups) or "config groups unknown (no .hydra/hydra.yaml)"]
    parts.append(f"overrides `{' '.join(own)}`" if own else "no overrides")
    if optim.get("kind") or optim.get("lr") is not None:
        parts.append(f"optim {optim.get('kind', '?')} lr {optim.get('lr', '?')}")
    if sched.get("kind"):
        parts.append(f"schedule {sched['kind']}")
    return f"Base recipe ({row['variant']}, run {run.path.name}): {'; '.join(parts)}."


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


def markdown(rows: list[dict], base_lines: dict[str, Baseline] | None = None) -> str:
    """The table: one row per variant, and a last row of the baselines where runs recorded them."""
    extra = downstream_keys(rows)  # "finetune:sst2/accuracy" is shown as "sst2 accuracy"
    names = "".join(f" {k.removeprefix('finetune:').replace('/', ' ')} |" for k in extra)
    head = (
        "| variant | runs | status | params | FLOPs/token | tokenizer | val MLM loss | val MLM acc |"
        f"{names} vs base | verdict | {CB.grid_label([r['grid_jobs_at_once'] for r in rows])} | "
        "peak RSS MB | wall s |\n"
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
    shown = {k: base_lines[k] for k in ("val_loss", "val_mlm_acc", *extra) if k in (base_lines or {})}
    if shown:
        names = "; ".join(dict.fromkeys(b.name for b in shown.values()))
        cell = {k: b.text() for k, b in shown.items()}
        lines.append(
            f"| *baseline: {names}* | – | – | – | – | – | {cell.get('val_loss', '–')} | "
            f"{cell.get('val_mlm_acc', '–')} |{''.join(f' {cell.get(k, chr(8211))} |' for k in extra)}"
            " – | – | – | – | – |"
        )
    return head + "\n".join(lines) + "\n"


def compare(
    sweep_dir: str | Path,
    metric: str = "val_loss",
    bench: bool = False,
    bench_repeats: int = 5,
    bench_device: str = "cpu",
    bench_threads: int | None = None,
) -> dict:
    """Read every run of ``sweep_dir``; write summary.md, summary.csv and the plots there.
    ``bench``: also time each variant's training step alone, interleaved (``compare_bench``):
    a section of summary.md and ``bench_*`` columns of summary.csv."""
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
    base_lines = baselines(rows)
    table = markdown(rows, base_lines)
    v = rows[0]["_verdict"]
    table += f"\nVerdict on {metric}: {v.text(metric)}\n"
    context = f"{budget_text(rows)}\n\n{recipe_text(rows, v.base)}\n"
    speed = ""
    if bench:
        grid = CB.grid_label([r["grid_jobs_at_once"] for r in rows])
        speed = CB.section(
            CB.bench_grid(
                rows, v.base or rows[0]["variant"], bench_repeats, bench_device, threads=bench_threads
            ),
            grid,
        )
    drawn = P.draw(rows, d, metric, base_lines)
    (d / "summary.md").write_text(
        f"# {d.name}\n\n{len(runs)} runs, {len(rows)} variants; verdict by {metric}, "
        f"base: {v.base or '–'}.\n\n{context}\n{table}\n{_baselines_text(base_lines)}"
        f"Method: cells are mean ± sd [95% interval] n over seeds (n counts the runs that have the "
        f"value: no ± at n=1); 'vs base' is the difference of means from the base [95% interval] "
        f"and Welch's p. {V.METHOD}\n\n{P.describe(drawn)}\n" + (f"\n{speed}" if speed else "")
    )
    for r in rows:  # the context summary.md states, per variant, for whoever reads the CSV
        r["budget"] = " / ".join(sorted({x.budget.text() for x in r["_runs"] if x.budget})) or None
        for key, line in base_lines.items():
            r[f"baseline:{key}"] = line.values.get(r["variant"])
    cols = [k for k in rows[0] if not k.startswith("_")]
    with (d / "summary.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows({k: r[k] for k in cols} for r in rows)
    best_run = _best_run(next((r for r in rows if r["best"]), None), metric)
    top_run = _best_run(next((r for r in rows if r["variant"] == v.top), None), metric)
    return {
        "table": table,
        "rows": rows,
        "images": drawn.paths,
        "plots": drawn,
        "baselines": base_lines,
        "budget": budget_text(rows),
        "best_run": best_run,
        "top_run": top_run,
        "verdict": v,
        "speed": speed,
    }


def _baselines_text(base_lines: dict[str, Baseline]) -> str:
    if not base_lines:
        return ""
    what = {
        "unigram loss": "each masked token predicted from the training-token frequencies alone; "
        "the mean over a variant's seeds, whose validation masks differ",
    }
    parts = [
        f"{k}: {b.name}{f' ({what[b.name]})' if b.name in what else ''} {b.text(4)}"
        for k, b in base_lines.items()
    ]
    return f"Baselines (what a model that learned nothing scores; every variant must beat them): {'; '.join(parts)}.\n\n"


def _best_run(row: dict | None, metric: str) -> Path | None:
    """The finished run of ``row``'s variant with the best ``metric``."""
    if row is None:
        return None
    sign = 1 if lower_is_better(metric) else -1
    scored = [x for x in row["_runs"] if x.status == "finished" and x.last(metric) is not None]
    return min(scored, key=lambda x: sign * x.last(metric)).path if scored else None
