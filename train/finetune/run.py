"""One fine-tuning job (or one per finished run of a sweep): data, model, Lightning, summary.

A fine-tuning run directory follows the pre-training conventions: ``spec.yaml`` (with the
task head), ``config.yaml`` (everything resolved, label names included), ``tokenizer.json``,
``checkpoints/`` (``last.ckpt``, written atomically), ``metrics.csv``, and at the end
``model/`` and ``summary.json`` (the final validation scores under ``metrics``).
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from pathlib import Path

import lightning as L
import torch
import yaml
from torch.utils.data import DataLoader

from bertsmith import registry
from bertsmith.registry.errors import SpecError
from bertsmith.registry.io import atomic_write, spec_file_text
from bertsmith.registry.spec import spec_dict
from bertsmith.train.callbacks import AtomicCheckpointIO, StepProgressBar
from bertsmith.train.finetune import data as D
from bertsmith.train.finetune.metrics import majority_accuracy
from bertsmith.train.finetune.module import FinetuneCSV, FinetuneModule, csv_columns
from bertsmith.train.finetune.source import check_length, load_source, resolve, runs_in, with_new_head
from bertsmith.train.pretrain.data import StepSampler
from bertsmith.train.pretrain.loop import PeakRSS, check_run_dir


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


def _device(cfg) -> str:
    acc = cfg.trainer.accelerator
    return "cuda" if acc == "gpu" or (acc == "auto" and torch.cuda.is_available()) else "cpu"


def finetune(cfg, run_dir: Path, resolved: dict, started: float | None = None) -> dict:
    """Fine-tune ``cfg.init_from`` on ``cfg.task``; a sweep directory fine-tunes each of its
    finished runs into ``RUN/finetune/<task>``. Returns the summary (also ``summary.json``)."""
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    if cfg.trainer.threads:
        torch.set_num_threads(cfg.trainer.threads)
    source, kind = resolve(cfg.init_from)
    examples = D.load_examples(cfg.data)
    if kind != "sweep":
        return finetune_one(cfg, source, kind, examples, run_dir, resolved, started)
    results = []
    for run in runs_in(source):
        out = run / "finetune" / cfg.task.name
        if not (run / "model" / "model.safetensors").is_file():
            print(f"bertsmith finetune: {run} has not finished pre-training; skipped")
            continue
        print(f"bertsmith finetune: {run} -> {out}")
        try:
            one = {**resolved, "init_from": str(run)}
            results.append(finetune_one(cfg, run, "run", examples, out, one))
        except (SpecError, FloatingPointError) as e:  # one bad run must not end the others
            lines = getattr(e, "lines", [str(e)])
            out.mkdir(parents=True, exist_ok=True)
            (out / "FAILED").write_text("\n".join(lines) + "\n")
            print(f"  failed: {lines[0]}")
    return {"sweep": str(source), "task": cfg.task.name, "runs": results}


def finetune_one(cfg, source: Path, kind: str, examples, run_dir: Path, resolved: dict, started=None) -> dict:
    started = time.time() if started is None else started
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    task = cfg.task
    loaded, tok, tok_path = load_source(source, kind, cfg.tokenizer)
    check_length(loaded.spec, cfg.data.max_len)
    train_ex, val_ex = examples
    num_labels, names = D.check_labels(train_ex, val_ex, task)
    types = loaded.spec.type_vocab_size >= 2
    enc = dict(task=task, num_labels=num_labels, names=names, max_len=cfg.data.max_len, types=types)
    train_items = D.encode(train_ex, tok, where="the training data", **enc)
    val_items = D.encode(val_ex, tok, where="the validation data", **enc)
    model = with_new_head(loaded, task, num_labels)
    registry.check(model.spec, device=_device(cfg), training=True)
    n_params = sum(p.numel() for p in model.parameters())
    done = run_dir / "summary.json"
    if cfg.resume and done.exists() and (run_dir / "model" / "model.safetensors").exists():
        print(f"bertsmith finetune: {run_dir} already finished; nothing to resume")
        return json.loads(done.read_text())
    ckpt = check_run_dir(run_dir, cfg.resume, n_params)
    if ckpt is not None and registry.load_spec(run_dir / "spec.yaml") != model.spec:
        raise SpecError(
            f"resume: given a model or task that differs from the one in {str(run_dir)!r}/spec.yaml, "
            "allowed: the same init_from and task as the run being resumed"
        )
    resolved = {
        **{k: v for k, v in resolved.items() if k != "hydra"},
        **cfg.model_dump(mode="json"),
        "init_from": resolved.get("init_from", cfg.init_from),
        "labels": {"num_labels": num_labels, "names": names},
        "model": spec_dict(model.spec),
    }
    atomic_write(run_dir / "spec.yaml", lambda p: p.write_text(spec_file_text(model.spec)))
    atomic_write(run_dir / "config.yaml", lambda p: p.write_text(yaml.safe_dump(resolved, sort_keys=False)))
    atomic_write(run_dir / "tokenizer.json", lambda p: tok.save(p))

    t = cfg.trainer
    module = FinetuneModule(model, task, num_labels, names, cfg)
    checkpoint = L.pytorch.callbacks.ModelCheckpoint(
        dirpath=run_dir / "checkpoints",
        filename="step={step}",
        auto_insert_metric_name=False,
        every_n_train_steps=min(t.checkpoint_every, t.max_steps),
        save_last=True,
        save_top_k=1,  # the newest step=N.ckpt besides last.ckpt
    )
    trainer = L.Trainer(
        default_root_dir=run_dir,
        max_steps=t.max_steps,
        precision=t.precision,
        gradient_clip_val=t.clip,
        val_check_interval=t.val_every,
        check_val_every_n_epoch=None,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,
        logger=False,
        accelerator=t.accelerator,
        devices=1,
        callbacks=[
            checkpoint,
            FinetuneCSV(run_dir / "metrics.csv", t.log_every, csv_columns(task, cfg.sift.enabled)),
            *([StepProgressBar(refresh_rate=1)] if t.progress else []),
        ],
        plugins=[AtomicCheckpointIO()],
        enable_progress_bar=t.progress,
        enable_model_summary=False,
        max_epochs=-1,
    )
    pad = tok.pad_id
    dm = _Batches(
        D.StepBatches(train_items, cfg.data.batch_size, cfg.seed, pad),
        D.val_batches(val_items, cfg.data.eval_batch_size, pad),
    )
    start = time.time()
    with PeakRSS() as peak:
        trainer.fit(module, datamodule=dm, ckpt_path=ckpt)
    train_s = time.time() - start
    if trainer.global_step % t.val_every or not module.last_val:
        trainer.validate(module, datamodule=dm, verbose=False)
    model_dir = registry.save(model, run_dir / "model", tokenizer=run_dir / "tokenizer.json")
    summary = {
        "task": task.name,
        "kind": task.kind,
        "metric": task.metric,
        "metrics": {k: round(v, 6) for k, v in module.last_val.items() if k != "loss"},
        "val_loss": round(module.last_val["loss"], 6),
        "train_loss": module.last_train.get("train_loss"),
        "steps": trainer.global_step,
        "n_train": len(train_items),
        "n_val": len(val_items),
        "num_labels": num_labels,
        "labels": names,
        "init_from": str(resolved["init_from"]),
        "sift": cfg.sift.enabled,
        "run_dir": str(run_dir),
        "model_dir": str(model_dir),
        "params": n_params,
        "train_s": round(train_s, 1),
        "wall_s": round(time.time() - started, 1),
        "peak_rss_mb": round(peak.max_bytes / 2**20, 1),
    }
    if task.kind == "classification":
        gold = [x["label"] for x in val_items]
        summary["majority_accuracy"] = round(majority_accuracy([x["label"] for x in train_items], gold), 6)
    atomic_write(done, lambda p: p.write_text(json.dumps(summary, indent=2)))
    _print(summary)
    return summary


def _print(s: dict) -> None:
    scores = ", ".join(f"{k} {v:.3f}" for k, v in s["metrics"].items())
    base = f" (majority class {s['majority_accuracy']:.3f})" if "majority_accuracy" in s else ""
    print(
        f"\nbertsmith finetune: {s['task']} ({s['kind']}), {s['steps']} steps in {s['train_s'] / 60:.1f} min, "
        f"{s['n_train']:,} training / {s['n_val']:,} validation examples\n"
        f"  val {scores}{base}; val loss {s['val_loss']:.4f}\n"
        f"  run:   {s['run_dir']}\n  model: {s['model_dir']}"
    )
