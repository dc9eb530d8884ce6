"""The model card (``README.md``) of a transformers export: how to load it, its architecture
and parameter counts, the resolved recipe, and, for a run, its training settings and metrics.

    ---                  front matter: library, tags, pipeline
    # name               what it is (native class, or remote code and why)
    ## Load              the Auto class to load it with
    ## Architecture      sizes, parameter counts, head; notes on the export
    ## Recipe            spec.yaml
    ## Training          from the run's config.yaml (a run only)
    ## Metrics           from the run's metrics.csv (a run only)
"""

from __future__ import annotations

from pathlib import Path

from bertsmith import registry
from bertsmith.registry.io import spec_to_yaml
from bertsmith.registry.yamlfile import read_yaml
from bertsmith.train.callbacks import read_metrics
from bertsmith.train.interop import FAMILIES, remote


def read_run(run_dir: Path | None) -> tuple[dict, list[dict]]:
    """(config.yaml, metrics.csv rows with numbers) of a run directory, or empty."""
    if run_dir is None:
        return {}, []
    cfg = {}
    if (run_dir / "config.yaml").is_file():
        cfg = read_yaml(run_dir / "config.yaml", "config.yaml") or {}
    return cfg, read_metrics(run_dir / "metrics.csv")


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _auto_class(arch: str) -> str:
    """The transformers Auto class that loads ``arch`` with its head."""
    if arch.endswith("ForSequenceClassification"):
        return "AutoModelForSequenceClassification"
    return "AutoModelForMaskedLM" if arch.endswith(("ForMaskedLM", "ForPreTraining")) else "AutoModel"


def _intro(spec, plan, source, auto: str) -> list[str]:
    """Front matter, title, and what the export is."""
    front = [
        "---",
        "library_name: transformers",
        f"tags: [bertsmith{', ' + plan.family if plan.family else ''}]",
    ]
    if auto == "AutoModelForMaskedLM":
        front.append("pipeline_tag: fill-mask")
    lines = [*front, "---", "", f"# {spec.name}", ""]
    if plan.kind == "native":
        lines.append(
            f"A {FAMILIES[plan.family].title} encoder (`transformers.{plan.arch}`), exported by "
            f"`bertsmith export` from `{source.path}`."
        )
    else:
        lines.append(
            f"A bertsmith encoder exported as transformers remote code (`{remote.FILE}`, class "
            f"`{plan.arch}`) from `{source.path}`"
            + (f": no transformers class holds this composition ({plan.reason})." if plan.reason else ".")
            + " The modeling file is bertsmith's own block source and needs only torch and transformers."
        )
    return lines + [""]


def _load(plan, auto: str, has_tokenizer: bool) -> list[str]:
    remote_flag = ", trust_remote_code=True" if plan.kind == "remote" else ""
    lines = ["## Load", "", "```python"]
    lines.append(f"from transformers import {auto}" + (", AutoTokenizer" if has_tokenizer else ""))
    lines.append(f'model = {auto}.from_pretrained("path/to/this/directory"{remote_flag})')
    if has_tokenizer:
        lines.append(f'tokenizer = AutoTokenizer.from_pretrained("path/to/this/directory"{remote_flag})')
    return lines + ["```", ""]


def _architecture(model, plan) -> list[str]:
    spec = model.spec
    params = registry.cost(spec)["params"]
    total = sum(p.numel() for p in model.parameters())
    lines = [
        "## Architecture",
        "",
        f"- Parameters, encoder body (embeddings, layers, final norm): {params['total']:,} "
        f"(embedding {params['embedding']:,}, non-embedding {params['non_embedding']:,})",
        f"- Parameters with the head (tied weights counted once): {total:,}",
        f"- Layers {spec.n_layers}, width {spec.d_model}, heads {spec.n_heads}, MLP {spec.d_ff}, "
        f"vocabulary {spec.vocab_size}, max length {spec.max_seq_len}",
        f"- Head: {spec.head.kind if spec.head is not None else 'none'}",
        "",
    ]
    if plan.notes:
        lines += ["Notes:", "", *(f"- {n}" for n in plan.notes), ""]
    return lines


def _recipe(spec) -> list[str]:
    return [
        "## Recipe",
        "",
        "The resolved bertsmith recipe (`bertsmith export --to recipe` writes it as a file; "
        "`bertsmith train model=<file>` trains it again):",
        "",
        "```yaml",
        spec_to_yaml(spec).rstrip(),
        "```",
        "",
    ]


def _training(spec, cfg: dict) -> list[str]:
    """The run's data, tokenizer, objective and optimiser, from its ``config.yaml``."""
    if not cfg:
        return []
    data, tok, obj = cfg.get("data", {}), cfg.get("tokenizer", {}), cfg.get("objective", {})
    optim, sched, trainer = cfg.get("optim", {}), cfg.get("schedule", {}), cfg.get("trainer", {})
    corpus = data.get("source", "?")
    where = data.get("path") or data.get("name")
    lines = [
        "## Training",
        "",
        f"- Data: `{corpus}`{f' ({where})' if where else ''}, split `{data.get('split', 'train')}`, "
        f"max_docs {data.get('max_docs')}, sequence length {data.get('seq_len')}, "
        f"{data.get('batch_size')} packed rows per micro-batch",
        f"- Tokenizer: {tok.get('kind')} (vocabulary {tok.get('vocab_size')}, padded to {spec.vocab_size})",
        f"- Objective: MLM at {obj.get('mask_ratio')} ({obj.get('masking')} masks)"
        + (" + NSP" if obj.get("nsp") else ""),
        f"- Optimiser: {optim.get('kind')} lr {optim.get('lr')}, schedule {sched.get('kind')}, "
        f"{trainer.get('max_steps')} steps, precision {trainer.get('precision')}, seed {cfg.get('seed')}",
    ]
    if cfg.get("init_from"):
        lines.append(f"- Initialised from `{cfg['init_from']}`")
    return lines + [""]


def _metrics(cfg: dict, rows: list[dict]) -> list[str]:
    """The last ten validations as a table, and the last training loss."""
    val = [r for r in rows if "val_loss" in r]
    train_rows = [r for r in rows if "train_loss" in r]
    if not (val or train_rows):
        return []
    ratio = cfg.get("objective", {}).get("eval_mask_ratio", 0.15)
    lines = ["## Metrics", "", f"From the run's `metrics.csv` (validation MLM at {ratio:.0%} masking):", ""]
    cols = [
        "step",
        "val_loss",
        "val_mlm_acc",
        *(["val_nsp_acc"] if any("val_nsp_acc" in r for r in val) else []),
    ]
    lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in val[-10:]:
        lines.append(
            "| " + " | ".join(_fmt(int(r["step"]) if c == "step" else r.get(c, "")) for c in cols) + " |"
        )
    if train_rows:
        last = train_rows[-1]
        lines += ["", f"Last training loss {_fmt(last['train_loss'])} at step {int(last['step'])}."]
    return lines + [""]


def model_card(model, plan, source, has_tokenizer: bool) -> str:
    """``README.md`` for ``model`` exported as ``plan`` (an ``export.Export``) from ``source``
    (a ``sources.Source``)."""
    auto = _auto_class(plan.arch)
    lines = _intro(model.spec, plan, source, auto) + _load(plan, auto, has_tokenizer)
    lines += _architecture(model, plan) + _recipe(model.spec)
    cfg, rows = read_run(source.run_dir)
    return "\n".join(lines + _training(model.spec, cfg) + _metrics(cfg, rows))
