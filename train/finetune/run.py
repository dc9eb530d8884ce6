"""One fine-tuning job (or one per finished run of a sweep): data, model, Lightning, summary.

A fine-tuning run directory follows the pre-training conventions: ``spec.yaml`` (with the
task head), ``config.yaml`` (everything resolved, label names included), ``tokenizer.json``,
``checkpoints/`` (``last.ckpt``, written atomically), ``metrics.csv``, and at the end
``model/`` and ``summary.json`` (the final validation scores under ``metrics``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import lightning as L
from torch.utils.data import DataLoader

from bertsmith import registry
from bertsmith.registry.errors import SpecError
from bertsmith.registry.spec import spec_dict
from bertsmith.train import jobs
from bertsmith.train.callbacks import MetricsCSV
from bertsmith.train.finetune import data as D
from bertsmith.train.finetune.config import with_lr
from bertsmith.train.finetune.metrics import baseline, majority_accuracy, no_better
from bertsmith.train.finetune.module import FinetuneModule, csv_columns
from bertsmith.train.finetune.source import check_length, load_source, with_new_head
from bertsmith.train.pretrain.data import StepSampler
from bertsmith.train.sources import Source, identify, runs_in, start_source


class _Batches(L.LightningDataModule):
    def __init__(self, train: D.StepBatches, val: list[dict]):
        super().__init__()
        self.train, self.val = train, val

    def train_dataloader(self):
        sampler = StepSampler()
        sampler.start = self.trainer.global_step  # resume after the restored step
        return DataLoader(self.train, batch_size=None, sampler=sampler)

    def val_dataloader(self):
        return DataLoader(self.val, batch_size=None)


def finetune(cfg, run_dir: Path, resolved: dict, started: float | None = None) -> dict:
    """Fine-tune ``cfg.init_from`` on ``cfg.task``; a sweep directory fine-tunes each of its
    finished runs into ``RUN/finetune/<task>``. Returns the summary (also ``summary.json``)."""
    jobs.quiet_lightning()
    jobs.set_threads(cfg.trainer.threads)
    source = start_source(cfg.init_from)
    examples = D.load_examples(cfg.data)
    if source.kind != "sweep":
        return finetune_one(cfg, source, examples, run_dir, resolved, started)
    results = []
    for run in runs_in(source.path):
        out = run / "finetune" / cfg.task.name
        if not (run / "model" / "model.safetensors").is_file():
            print(f"bertsmith finetune: {run} has not finished pre-training; skipped")
            continue
        print(f"bertsmith finetune: {run} -> {out}")
        try:
            one = {**resolved, "init_from": str(run)}
            results.append(finetune_one(cfg, identify(run), examples, out, one))
        except (SpecError, FloatingPointError) as e:  # one bad run must not end the others
            lines = getattr(e, "lines", [str(e)])
            out.mkdir(parents=True, exist_ok=True)
            (out / "FAILED").write_text("\n".join(lines) + "\n")
            print(f"  failed: {lines[0]}")
    return {"sweep": str(source.path), "task": cfg.task.name, "runs": results}


@dataclass
class _Start:
    """What a fine-tuning job starts from: the model with its new head, the tokenizer, the
    encoded examples and the labels."""

    model: object
    tok: object
    train: list[dict]
    val: list[dict]
    num_labels: int
    names: list[str] | None


def _start(cfg, source: Source, examples) -> _Start:
    loaded, tok, _ = load_source(source, cfg.tokenizer)
    check_length(loaded.spec, cfg.data.max_len)
    train_ex, val_ex = examples
    num_labels, names = D.check_labels(train_ex, val_ex, cfg.task, cfg.data)
    types = loaded.spec.type_vocab_size >= 2
    enc = dict(task=cfg.task, num_labels=num_labels, names=names, max_len=cfg.data.max_len, types=types)
    train_items = D.encode(train_ex, tok, where="the training data", **enc)
    val_items = D.encode(val_ex, tok, where="the validation data", **enc)
    model = with_new_head(loaded, cfg.task, num_labels)
    registry.check(model.spec, device=jobs.device(cfg.trainer.accelerator), training=True)
    return _Start(model, tok, train_items, val_items, num_labels, names)


def finetune_one(cfg, source: Source, examples, run_dir: Path, resolved: dict, started=None) -> dict:
    """One fine-tuning job of ``source`` (not a sweep) in ``run_dir``, in the frame of
    ``train.jobs``; returns the summary (also ``summary.json``)."""
    started = time.time() if started is None else started
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    s = _start(cfg, source, examples)
    cfg = with_lr(cfg, s.model.spec.d_model)  # optim.lr unset: the default for the model's width
    n_params = sum(p.numel() for p in s.model.parameters())
    if (summary := jobs.finished(run_dir, cfg.resume, "bertsmith finetune")) is not None:
        return summary
    ckpt = jobs.check_run_dir(run_dir, cfg.resume)
    if ckpt is not None:
        same = "the same init_from and task"
        jobs.check_same_spec(run_dir, s.model.spec, "a model or task", same, missing_ok=False)
    resolved = {
        **{k: v for k, v in resolved.items() if k not in ("hydra", "tokenizer_file")},
        **cfg.model_dump(mode="json"),
        "init_from": resolved.get("init_from", cfg.init_from),
        "labels": {"num_labels": s.num_labels, "names": s.names},
        "model": spec_dict(s.model.spec),
    }
    jobs.write_inputs(run_dir, s.model.spec, resolved, s.tok)

    t = cfg.trainer
    module = FinetuneModule(s.model, cfg.task, s.num_labels, s.names, cfg)
    trainer = _trainer(run_dir, cfg, jobs.Report(cfg.logger, resolved))
    pad = s.tok.pad_id
    dm = _Batches(
        D.StepBatches(s.train, cfg.data.batch_size, cfg.seed, pad),
        D.val_batches(s.val, cfg.data.eval_batch_size, pad),
    )
    train_s, peak = jobs.fit(trainer, module, dm, ckpt)
    if trainer.global_step % t.val_every or not module.last_val:
        trainer.validate(module, datamodule=dm, verbose=False)
    model_dir = registry.save(s.model, run_dir / "model", tokenizer=run_dir / "tokenizer.json")
    summary = {
        **_scores(cfg.task, s, module, trainer.global_step),
        "init_from": str(resolved["init_from"]),
        "sift": cfg.sift.enabled,
        "run_dir": str(run_dir),
        "model_dir": str(model_dir),
        "params": n_params,
        "train_s": round(train_s, 1),
        **jobs.usage(started, peak),
    }
    if cfg.task.kind == "classification":
        gold = [x["label"] for x in s.val]
        summary["majority_accuracy"] = round(majority_accuracy([x["label"] for x in s.train], gold), 6)
    base = baseline(cfg.task.kind, [x["label"] for x in s.train], [x["label"] for x in s.val])
    summary["baseline"] = {**base, "value": round(base["value"], 6)}
    summary["learned_nothing"] = no_better(module.last_val[base["metric"]], base)
    summary["lr"] = cfg.optim.lr
    summary = jobs.write_summary(run_dir, summary, trainer)  # the loggers closed
    _print(summary)
    return summary


def _trainer(run_dir: Path, cfg, report: jobs.Report | None = None) -> L.Trainer:
    t = cfg.trainer
    columns = csv_columns(cfg.task, cfg.sift.enabled)
    metrics = MetricsCSV(run_dir / "metrics.csv", t.log_every, columns, val=_val_row)
    every = min(t.checkpoint_every, t.max_steps)
    # save_top_k=1: the newest step=N.ckpt besides last.ckpt
    checkpoint = dict(every_n_train_steps=every, save_top_k=1)
    return jobs.make_trainer(run_dir, t, metrics, checkpoint, report=report, devices=1)


def _val_row(trainer, module) -> dict:
    """The whole validation set's scores (``FinetuneModule.last_val``), as ``val_<name>``."""
    return {f"val_{k}": v for k, v in module.last_val.items()}


def _scores(task, s: _Start, module, steps: int) -> dict:
    """The summary's first fields: the task, the final validation scores, the data's size."""
    return {
        "task": task.name,
        "kind": task.kind,
        "metric": task.metric,
        "metrics": {k: round(v, 6) for k, v in module.last_val.items() if k != "loss"},
        "val_loss": round(module.last_val["loss"], 6),
        "train_loss": module.last_train.get("train_loss"),
        "steps": steps,
        "n_train": len(s.train),
        "n_val": len(s.val),
        "num_labels": s.num_labels,
        "labels": s.names,
    }


def _print(s: dict) -> None:
    scores = ", ".join(f"{k} {v:.3f}" for k, v in s["metrics"].items())
    base = f" (majority class {s['majority_accuracy']:.3f})" if "majority_accuracy" in s else ""
    print(
        f"\nbertsmith finetune: {s['task']} ({s['kind']}), {s['steps']} steps in {s['train_s'] / 60:.1f} min, "
        f"{s['n_train']:,} training / {s['n_val']:,} validation examples\n"
        f"  val {scores}{base}; val loss {s['val_loss']:.4f}\n"
        f"  run:   {s['run_dir']}\n  model: {s['model_dir']}"
    )
    if s.get("learned_nothing"):
        print(learned_nothing_line(s))


def learned_nothing_line(s: dict) -> str:
    """The end-of-run line of a fine-tune that ended no better than its baseline."""
    b = s["baseline"]
    score = s["metrics"][b["metric"]]
    return (
        f"  {b['metric']} {score:.3f} is no better than {b['name']} ({b['value']:.3f}): the model "
        f"learned nothing; try a higher optim.lr (e.g. {5 * s['lr']:.0e}, this run's was {s['lr']:.0e}) "
        "or more trainer.max_steps"
    )
