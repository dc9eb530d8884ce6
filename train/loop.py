"""One training job: data, model, Lightning trainer, run directory, summary."""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
import warnings
from pathlib import Path

import lightning as L
import torch
import yaml
from torch.utils.data import DataLoader

import registry
from registry.errors import SpecError
from registry.io import atomic_write
from registry.spec import parse_spec, spec_dict
from train import corpus, init_from
from train.callbacks import AtomicCheckpointIO, MetricsCSV, StepProgressBar, read_metrics
from train.data import Data, StreamingBatches, build_data
from train.module import PretrainModule
from train.tokenizer import load_tokenizer


class PretrainDataModule(L.LightningDataModule):
    """Hands Lightning the step-indexed batches, resuming after the restored step."""

    def __init__(self, data: Data, accumulate: int):
        super().__init__()
        self.data, self.accumulate = data, accumulate

    def train_dataloader(self):
        t = self.trainer
        start = t.global_step * self.accumulate  # micro-batches this rank already consumed
        if isinstance(self.data.train, StreamingBatches):
            ds = self.data.train
            ds.start, ds.rank, ds.world = start, t.global_rank, t.world_size
            return DataLoader(ds, batch_size=None)
        sampler = self.data.sampler
        sampler.rank, sampler.world, sampler.start = t.global_rank, t.world_size, start
        return DataLoader(self.data.train, batch_size=None, sampler=sampler)

    def val_dataloader(self):
        return DataLoader(self.data.val, batch_size=None)


class PeakRSS:
    """The largest resident set size of this process while the block runs, sampled every
    50 ms (jobs of a sweep may share a process, so the process-lifetime peak would mislead)."""

    def __enter__(self):
        self.max_bytes, self._stop = self._rss(), threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self) -> None:
        while not self._stop.wait(0.05):
            self.max_bytes = max(self.max_bytes, self._rss())

    @staticmethod
    def _rss() -> int:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:  # not Linux: fall back to the process-lifetime peak
            import resource

            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.max_bytes = max(self.max_bytes, self._rss())


def check_run_dir(run_dir: Path, resume: bool, params: int) -> Path | None:
    """Fail early on an unwritable or full disk; refuse to overwrite an existing run.
    Returns the checkpoint to resume from, if any."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise SpecError(
            f"hydra.run.dir: given {str(run_dir)!r}, allowed: a writable directory ({e.strerror or e})"
        ) from None
    need = params * 4 * 4 + 64 * 2**20  # weights + two Adam moments + slack, one checkpoint
    free = shutil.disk_usage(run_dir).free
    if free < need:
        raise SpecError(
            f"hydra.run.dir: given {str(run_dir)!r} with {free / 2**20:.0f} MiB free, "
            f"allowed: at least {need / 2**20:.0f} MiB free for checkpoints"
        )
    last = run_dir / "checkpoints" / "last.ckpt"
    if last.exists() and not resume:
        raise SpecError(
            f"resume: given false, but {str(run_dir)!r} already holds a run "
            "(checkpoints/last.ckpt); allowed: resume=true to continue it, or another hydra.run.dir"
        )
    return last if resume and last.exists() else None


def cheap_checks(spec, tcfg) -> None:
    """What can be checked before any data is read or anything is written."""
    if tcfg.init_from:  # the model directory's spec replaces the recipe's
        spec = init_from.spec_of(tcfg)
    entry = registry.REGISTRY.get("positional", spec.positional.kind)
    if "bounded" in entry.provides and tcfg.data.seq_len > spec.max_seq_len:
        raise SpecError(
            f"data.seq_len: given {tcfg.data.seq_len}, allowed: at most model.max_seq_len="
            f"{spec.max_seq_len} (positional {entry.name!r} has that many positions)"
        )
    if tcfg.objective.nsp and (spec.head is None or spec.head.kind != "nsp"):
        raise SpecError("objective.nsp: given true, allowed: false unless the head is nsp (model/head=nsp)")
    if tcfg.objective.nsp and spec.type_vocab_size < 2:
        raise SpecError(
            f"model.type_vocab_size: given {spec.type_vocab_size}, allowed: at least 2 for NSP segments"
        )
    if tcfg.data.source == "files":
        corpus.file_paths(tcfg.data.path)
    if tcfg.tokenizer.kind == "file":
        load_tokenizer(tcfg.tokenizer.path)
    registry.check(spec, device=_device(tcfg), training=True)


def fit_spec_to_data(spec, data: Data):
    """The model's vocabulary follows the tokenizer."""
    return parse_spec(
        {**spec.model_dump(), "vocab_size": data.tok.padded_size, "pad_token_id": data.tok.pad_id}
    )


def _device(tcfg) -> str:
    acc = tcfg.trainer.accelerator
    return "cuda" if acc == "gpu" or (acc == "auto" and torch.cuda.is_available()) else "cpu"


def train(spec, tcfg, run_dir: Path, resolved: dict, started: float | None = None) -> dict:
    """Run one pre-training job in ``run_dir``; returns the summary (also ``summary.json``)."""
    started = time.time() if started is None else started
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)  # no banner lines around our output
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")  # Lightning's own deprecation
    if tcfg.trainer.threads:
        torch.set_num_threads(tcfg.trainer.threads)
    cheap_checks(spec, tcfg)
    L.seed_everything(tcfg.seed, workers=True, verbose=False)
    initial = None
    if tcfg.init_from:  # weights, spec and tokenizer from a model directory
        initial, tcfg = init_from.load(tcfg)
        resolved = {**resolved, "tokenizer": tcfg.tokenizer.model_dump()}
    data = build_data(tcfg, tcfg.seed)
    spec = fit_spec_to_data(spec, data) if initial is None else init_from.fit(initial, data)
    registry.check(spec, device=_device(tcfg), training=True)
    model = registry.build(spec) if initial is None else initial
    n_params = sum(p.numel() for p in model.parameters())
    done = run_dir / "summary.json"
    if tcfg.resume and done.exists() and (run_dir / "model" / "model.safetensors").exists():
        print(f"bertsmith: {run_dir} already finished; nothing to resume")  # a re-run sweep skips it
        return json.loads(done.read_text())
    ckpt = check_run_dir(run_dir, tcfg.resume, n_params)
    if tcfg.resume and ckpt is None:
        print(f"bertsmith: resume=true but {run_dir} has no checkpoint yet; starting fresh")
    if ckpt is not None:
        old = registry.load_spec(run_dir / "spec.yaml") if (run_dir / "spec.yaml").exists() else spec
        if old != spec:
            raise SpecError(
                f"resume: given a model that differs from the one in {str(run_dir)!r}/spec.yaml, "
                "allowed: the same recipe and overrides as the run being resumed"
            )

    is_zero = int(os.environ.get("LOCAL_RANK", "0")) == 0
    if is_zero:
        # every setting, defaults included, so the run can be read without this version's code
        resolved = {
            "model": spec_dict(spec),
            **tcfg.model_dump(mode="json"),
            **{k: v for k, v in resolved.items() if k not in ("model", "hydra", *tcfg.model_fields)},
        }
        atomic_write(run_dir / "spec.yaml", lambda p: p.write_text(registry.io.spec_to_yaml(spec)))
        atomic_write(
            run_dir / "config.yaml", lambda p: p.write_text(yaml.safe_dump(resolved, sort_keys=False))
        )
        atomic_write(run_dir / "tokenizer.json", lambda p: data.tok.save(p))

    t = tcfg.trainer
    module = PretrainModule(model, tcfg.optim, tcfg.schedule, t.max_steps)
    if t.compile:
        module.model = torch.compile(module.model, dynamic=True)
    checkpoint = L.pytorch.callbacks.ModelCheckpoint(
        dirpath=run_dir / "checkpoints",
        filename="step={step}",
        auto_insert_metric_name=False,
        every_n_train_steps=t.checkpoint.every_n_steps,
        save_last=True,
        save_top_k=-1,
    )
    strategy = t.strategy
    if strategy == "auto" and t.devices > 1:
        strategy = "ddp_spawn"  # Lightning's "ddp" relaunches argv, which Hydra multirun breaks
    trainer = L.Trainer(
        default_root_dir=run_dir,
        max_steps=t.max_steps,
        precision=t.precision,
        accumulate_grad_batches=t.accumulate,
        gradient_clip_val=t.clip,
        val_check_interval=t.val_every * t.accumulate,
        check_val_every_n_epoch=None,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,
        logger=False,
        accelerator=t.accelerator,
        devices=t.devices,
        strategy=strategy,
        callbacks=[
            checkpoint,
            MetricsCSV(run_dir / "metrics.csv", t.log_every, t.accumulate),
            *([StepProgressBar(refresh_rate=1)] if t.progress else []),
        ],
        plugins=[AtomicCheckpointIO()],
        enable_progress_bar=t.progress,
        enable_model_summary=False,
        max_epochs=-1,
    )
    dm = PretrainDataModule(data, t.accumulate)
    start = time.time()
    with PeakRSS() as peak:
        trainer.fit(module, datamodule=dm, ckpt_path=ckpt)
    train_s = time.time() - start
    if trainer.global_step % t.val_every:
        trainer.validate(module, datamodule=dm, verbose=False)
    if not trainer.is_global_zero:
        return {}
    model_dir = registry.save(
        getattr(module.model, "_orig_mod", module.model),
        run_dir / "model",
        tokenizer=run_dir / "tokenizer.json",
    )
    summary = summarize(run_dir, model_dir, data, train_s)
    summary["params"] = n_params
    summary["wall_s"] = round(time.time() - started, 1)
    summary["peak_rss_mb"] = round(peak.max_bytes / 2**20, 1)
    if torch.cuda.is_available():
        summary["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    atomic_write(done, lambda p: p.write_text(json.dumps(summary, indent=2)))
    return summary


def summarize(run_dir: Path, model_dir: Path, data: Data, train_s: float) -> dict:
    rows = read_metrics(run_dir / "metrics.csv")
    train_rows = [r for r in rows if "train_loss" in r]
    val_rows = [r for r in rows if "val_loss" in r]
    last_val = val_rows[-1] if val_rows else {}
    summary = {
        "run_dir": str(run_dir),
        "model_dir": str(model_dir),
        "steps": train_rows[-1]["step"] if train_rows else 0,
        "train_loss": train_rows[-1]["train_loss"] if train_rows else None,
        "val_loss": last_val.get("val_loss"),
        "val_mlm_acc": last_val.get("val_mlm_acc"),
        "unigram_val_loss": round(data.stats["unigram_val_loss"], 4),
        "tokens_per_s": next((r["tokens_per_s"] for r in reversed(train_rows) if "tokens_per_s" in r), None),
        "packing_efficiency": data.stats.get("packing_efficiency"),
        "train_s": round(train_s, 1),
    }
    if "val_nsp_acc" in last_val:
        summary["val_nsp_acc"] = last_val["val_nsp_acc"]
    eff = summary["packing_efficiency"]
    print(
        f"\nbertsmith: {summary['steps']} steps in {train_s / 60:.1f} min"
        f" ({summary['tokens_per_s'] or 0:,.0f} tokens/s"
        f"{f', packing efficiency {eff:.1%}' if eff else ''})\n"
        f"  val MLM loss {summary['val_loss']:.3f} (unigram baseline {summary['unigram_val_loss']:.3f}),"
        f" val MLM accuracy {summary['val_mlm_acc']:.3f}, last train loss {summary['train_loss']:.3f}\n"
        f"  run:   {run_dir}\n  model: {model_dir}"
    )
    return summary
