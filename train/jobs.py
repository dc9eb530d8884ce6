"""The one job skeleton: what every training job (pre-training, fine-tuning) does around its
own data and model.

A job's life, top to bottom; ``pretrain.loop.train`` and ``finetune.run.finetune_one`` call
these in this order and add only what is theirs (data, model, module, summary fields)::

    quiet_lightning, set_threads        once per process
    finished(run_dir)                   summary.json and model/ there: nothing to do
    check_run_dir(run_dir)              writable, not another run (unless resume), room
                                        -> the checkpoint to resume from, or None
    check_same_spec(run_dir, spec)      a resumed run trains the model it started with
    write_inputs(run_dir, ...)          spec.yaml, config.yaml, tokenizer.json (atomic)
    make_trainer(run_dir, ..., report)  Lightning with the shared settings: step-based,
                                        checkpoints/ (AtomicCheckpointIO), metrics.csv and
                                        the `logger` group's loggers (Report), a progress
                                        bar on a terminal or one plain line per log_every
    fit(trainer, ...)                   trainer.fit under PeakRSS -> seconds, peak bytes
    usage(...), write_summary(...)      wall time, memory, model FLOP/s and MFU into
                                        summary.json (atomic); the loggers closed

A run directory, whichever job wrote it::

    RUN/spec.yaml  config.yaml  tokenizer.json  metrics.csv
        checkpoints/{step=N.ckpt, last.ckpt}    model/    summary.json (last: the run is done)
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
import yaml

from bertsmith import registry
from bertsmith.registry.errors import SpecError
from bertsmith.registry.io import spec_file_text
from bertsmith.registry.jsonfile import read_json
from bertsmith.registry.outputs import atomic_write
from bertsmith.train.callbacks import AtomicCheckpointIO, MetricsCSV, StepProgressBar
from bertsmith.train.loggers import LoggerConfig, make_loggers
from bertsmith.train.utilisation import Utilisation, peak_flops, train_flops_per_token


def quiet_lightning(resumable: bool = False) -> None:
    """No Lightning banner lines around our output; with ``resumable``, also none of its notes
    about a ``checkpoints/`` that is not empty or has moved (resuming, possibly in a moved run
    directory: expected, not news)."""
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")  # Lightning's own deprecation
    if resumable:
        warnings.filterwarnings("ignore", message=".*Checkpoint directory .* exists and is not empty.*")
        warnings.filterwarnings("ignore", message=".*The dirpath has changed from.*")


def set_threads(threads: int | None) -> None:
    if threads:
        torch.set_num_threads(threads)


def device(accelerator: str) -> str:
    """The device a job with ``trainer.accelerator`` runs on, for ``registry.check``."""
    return "cuda" if accelerator == "gpu" or (accelerator == "auto" and torch.cuda.is_available()) else "cpu"


def is_rank_zero() -> bool:
    """The process that writes the run directory's files (the only one without DDP)."""
    return int(os.environ.get("LOCAL_RANK", "0")) == 0


class PeakRSS:
    """The largest resident set size of this process while the block runs, sampled every
    ``interval`` s (jobs of a sweep may share a process, so the process-lifetime peak would
    mislead)."""

    def __init__(self, interval: float = 0.05):
        self.interval = interval

    def __enter__(self):
        self.max_bytes, self._stop = self._rss(), threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self) -> None:
        while not self._stop.wait(self.interval):
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


# --- the run directory ---------------------------------------------------------------------------


def finished(run_dir: Path, resume: bool, prog: str = "bertsmith") -> dict | None:
    """The summary of a run that is already done (``resume=true`` of a finished run, e.g. a
    re-run sweep, skips it), or None."""
    done = run_dir / "summary.json"
    if resume and done.exists() and (run_dir / "model" / "model.safetensors").exists():
        print(f"{prog}: {run_dir} already finished; nothing to resume")
        return read_json(done)
    return None


def refuse_overwrite(run_dir: Path, resume: bool) -> Path:
    """``checkpoints/last.ckpt`` of ``run_dir``; an error if it exists and ``resume`` is false."""
    last = Path(run_dir) / "checkpoints" / "last.ckpt"
    if last.exists() and not resume:
        raise SpecError(
            f"resume: given false, but {str(run_dir)!r} already holds a run "
            "(checkpoints/last.ckpt); allowed: resume=true to continue it, or another hydra.run.dir"
        )
    return last


def check_run_dir(run_dir: Path, resume: bool, room: Callable[[], None] | None = None) -> Path | None:
    """Fail early on an unwritable directory (and, with ``room``, a full disk: it raises);
    refuse to overwrite an existing run. Returns the checkpoint to resume from, if any."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise SpecError(
            f"hydra.run.dir: given {str(run_dir)!r}, allowed: a writable directory ({e.strerror or e})"
        ) from None
    last = refuse_overwrite(run_dir, resume)
    if room is not None:
        room()
    if resume:  # a kill during a write leaves its temporary file; the renamed-to file is intact
        for tmp in (run_dir / "checkpoints").glob(".*.tmp"):
            tmp.unlink(missing_ok=True)
    return last if resume and last.exists() else None


def check_same_spec(run_dir: Path, spec, what: str, same: str, missing_ok: bool = True) -> None:
    """A resumed run trains the model its ``spec.yaml`` records (``missing_ok``: a run
    directory without one takes ``spec``)."""
    path = run_dir / "spec.yaml"
    old = registry.load_spec(path) if path.exists() or not missing_ok else spec
    if old != spec:
        raise SpecError(
            f"resume: given {what} that differs from the one in {str(run_dir)!r}/spec.yaml, "
            f"allowed: {same} as the run being resumed"
        )


def write_inputs(run_dir: Path, spec, resolved: dict, tok) -> None:
    """What the run was started with: ``spec.yaml``, ``config.yaml`` (every setting, defaults
    included, so the run can be read without this version's code), ``tokenizer.json``."""
    atomic_write(run_dir / "spec.yaml", lambda p: p.write_text(spec_file_text(spec)))
    atomic_write(run_dir / "config.yaml", lambda p: p.write_text(yaml.safe_dump(resolved, sort_keys=False)))
    atomic_write(run_dir / "tokenizer.json", lambda p: tok.save(p))


# --- Lightning ------------------------------------------------------------------------------------


@dataclass
class Report:
    """Where a job's metrics go besides metrics.csv: the ``logger`` group's loggers, with the
    resolved configuration (the spec under ``model``) as hyper-parameters, and the
    ``utilisation`` that turns tokens/s into model FLOP/s and MFU (None: no such figures)."""

    loggers: LoggerConfig
    hparams: dict
    utilisation: Utilisation | None = None


def utilisation(spec, seq_len: int, predicted: float, t) -> Utilisation:
    """Model FLOPs per trained token of ``spec`` at ``seq_len`` (a sparse head decodes the
    ``predicted`` fraction) and the peak to divide by (``trainer.peak_flops``, a known GPU's,
    or a GEMM rate measured here): see ``train.utilisation``."""
    flops = train_flops_per_token(spec, seq_len, predicted)["train"]
    peak, source = peak_flops(getattr(t, "peak_flops", None), device(t.accelerator), str(t.precision))
    return Utilisation(flops, peak, source)


def make_trainer(
    run_dir: Path,
    t,
    metrics: L.Callback,
    checkpoint: dict,
    accumulate: int = 1,
    report: Report | None = None,
    **placement,
) -> L.Trainer:
    """A step-based Lightning trainer writing into ``run_dir``: ``t`` holds ``max_steps``,
    ``precision``, ``clip``, ``val_every``, ``accelerator`` and ``progress``; ``checkpoint``
    the job's own ``ModelCheckpoint`` settings (how often, how many kept); ``placement``
    ``devices`` and ``strategy`` where the job has them. Checkpoints go to ``checkpoints/``
    through ``AtomicCheckpointIO``; ``metrics`` writes ``metrics.csv`` and hands the same rows
    to ``report``'s loggers (rank 0 only). ``t.progress``: a progress bar when stdout is a
    terminal, else one plain line per ``t.log_every`` (a log file, a SLURM job)."""
    bar = bool(t.progress) and sys.stdout.isatty()
    if isinstance(metrics, MetricsCSV):
        loggers = make_loggers(report.loggers, run_dir) if report is not None and is_rank_zero() else []
        metrics.attach(
            loggers,
            report.hparams if report is not None else None,
            report.utilisation if report is not None else None,
            plain=bool(t.progress) and not bar,
        )
    saver = L.pytorch.callbacks.ModelCheckpoint(
        dirpath=run_dir / "checkpoints",
        filename="step={step}",
        auto_insert_metric_name=False,
        save_last=True,
        **checkpoint,
    )
    return L.Trainer(
        default_root_dir=run_dir,
        max_steps=t.max_steps,
        precision=t.precision,
        accumulate_grad_batches=accumulate,
        gradient_clip_val=t.clip,
        val_check_interval=t.val_every * accumulate,
        check_val_every_n_epoch=None,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,
        logger=False,
        accelerator=t.accelerator,
        callbacks=[saver, metrics, *([StepProgressBar(refresh_rate=1)] if bar else [])],
        plugins=[AtomicCheckpointIO()],
        enable_progress_bar=bar,
        enable_model_summary=False,
        max_epochs=-1,
        **placement,
    )


def fit(trainer: L.Trainer, module, datamodule, ckpt: Path | None) -> tuple[float, int]:
    """``trainer.fit`` from ``ckpt`` (None: from the start); (seconds, peak RSS bytes)."""
    start = time.time()
    with PeakRSS() as peak:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt)
    return time.time() - start, peak.max_bytes


# --- the end ---------------------------------------------------------------------------------------


def usage(started: float, peak_bytes: int, cuda: bool = False) -> dict:
    """The summary's wall time and memory (``cuda``: the peak CUDA allocation too, if any)."""
    out = {"wall_s": round(time.time() - started, 1), "peak_rss_mb": round(peak_bytes / 2**20, 1)}
    if cuda and torch.cuda.is_available():
        out["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return out


def write_summary(run_dir: Path, summary: dict, trainer: L.Trainer | None = None) -> dict:
    """``summary.json``, written last: its presence (with ``model/``) means the run is done.
    With ``trainer``: its model FLOP/s and MFU added (and printed), the summary logged to its
    loggers and the loggers closed. Returns the summary written."""
    metrics = next((c for c in trainer.callbacks if isinstance(c, MetricsCSV)), None) if trainer else None
    if metrics is not None:
        summary = metrics.finish(summary, trainer.global_step)
    atomic_write(run_dir / "summary.json", lambda p: p.write_text(json.dumps(summary, indent=2)))
    return summary
