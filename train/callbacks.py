"""The jobs' Lightning callbacks and plugin (``train.jobs`` puts them together): metrics.csv
(and the same rows to the experiment loggers, or as plain lines when stdout is not a
terminal), atomic checkpoints, a progress bar over steps."""

from __future__ import annotations

import csv
import os
import pickle
import re
import time
from pathlib import Path

import lightning as L
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import TQDMProgressBar

from bertsmith.registry.errors import SpecError


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written to a temporary file and renamed, so a kill mid-write leaves the
    previous checkpoint intact; loaded with ``weights_only=True`` (no unpickling of code).

    A write that fails (disk full, quota, permissions) is one error line naming the file;
    the previous checkpoint stays where it was. A SIGKILL can leave the temporary file
    (``.NAME.PID.tmp``) behind: ``resume=true`` removes it."""

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            torch.save(checkpoint, tmp)
            os.replace(tmp, path)
        except (OSError, RuntimeError) as e:
            # torch's zip writer reports a full disk as RuntimeError("... file write failed")
            if isinstance(e, RuntimeError) and "writ" not in str(e):
                raise
            why = e.strerror if isinstance(e, OSError) and e.strerror else " ".join(str(e).split())[-120:]
            raise SpecError(
                f"checkpoint: could not write {str(path)!r} ({why}); the previous checkpoint is "
                "kept; allowed: a run directory with free space and write permission"
            ) from None
        finally:
            tmp.unlink(missing_ok=True)

    def load_checkpoint(self, path, map_location=None, weights_only=None):
        try:
            return torch.load(path, map_location=map_location or "cpu", weights_only=True)
        except pickle.UnpicklingError as e:  # weights_only refuses anything but tensors and plain data
            found = re.search(r"(?:unsupported|Unsupported global:) (GLOBAL \S+)", str(e))
            raise SpecError(
                f"checkpoint: given {str(path)!r}{' holding ' + found[1] if found else ''}, allowed: "
                "tensors and plain data only (checkpoints are loaded with weights_only=True; "
                "nothing in them is run)"
            ) from None
        except RuntimeError as e:
            if "zip archive" not in str(e) and "PytorchStreamReader" not in str(e):
                raise
            raise SpecError(
                f"checkpoint: given {str(path)!r}, allowed: a complete checkpoint (this one is "
                "truncated or damaged)"
            ) from None


class MetricsCSV(L.Callback):
    """``metrics.csv`` with ``columns``: a row every ``log_every`` optimizer steps (and at
    steps 1 and ``max_steps``) from the module's ``last_train``, and a row at each validation
    from ``val(trainer, module)`` (default: the ``val_*`` values the module logged). On
    resume, rows past the restored step (written after the checkpoint by the interrupted run)
    are dropped. Only the global rank 0 writes.

    ``attach`` (``jobs.make_trainer``) adds where else each row goes: Lightning ``loggers``
    (the row's values, plus ``utilisation``'s model FLOP/s and MFU of its tokens/s; ``hparams``
    once at the start), and ``plain``: one line per row on stdout (no progress bar)."""

    def __init__(self, path: Path, log_every: int, columns: list[str], accumulate: int = 1, val=None):
        self.path, self.log_every, self.columns = Path(path), log_every, columns
        self.accumulate, self.val = accumulate, val or _logged_val
        self.loggers: list = []
        self.hparams: dict | None = None
        self.utilisation = None
        self.plain = False
        self._started = time.time()

    def attach(self, loggers: list, hparams: dict | None, utilisation=None, plain: bool = False) -> None:
        self.loggers, self.hparams, self.utilisation, self.plain = list(loggers), hparams, utilisation, plain

    def _write(self, row: dict, max_steps: int | None = None) -> None:
        new = not self.path.exists()
        with self.path.open("a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self.columns)
            if new:
                w.writeheader()
            w.writerow({k: row.get(k, "") for k in self.columns})
        values = {k: float(row[k]) for k in self.columns if k != "step" and row.get(k, "") != ""}
        if self.utilisation is not None and "tokens_per_s" in values:
            values.update(self.utilisation.of(values["tokens_per_s"]))
        for lg in self.loggers:
            lg.log_metrics(values, step=row["step"])
        if self.plain:
            print(plain_line(row["step"], max_steps, values, time.time() - self._started), flush=True)

    def on_exception(self, trainer, pl_module, exception) -> None:
        if trainer.is_global_zero:
            from bertsmith.train.loggers import finish

            finish(self.loggers, None, trainer.global_step, "failed")

    def finish(self, summary: dict, step: int) -> dict:
        """The end of the run: ``summary`` with the utilisation fields added (and their line
        printed), logged to the loggers, which are then closed."""
        from bertsmith.train.loggers import finish

        if self.utilisation is not None and summary.get("tokens_per_s"):
            summary = {**summary, **self.utilisation.summary(summary["tokens_per_s"])}
            print(self.utilisation.line(summary["tokens_per_s"]))
        finish(self.loggers, summary, step)
        return summary

    def on_train_start(self, trainer, pl_module) -> None:
        self._started = time.time()
        if trainer.is_global_zero and self.hparams is not None:
            for lg in self.loggers:
                lg.log_hyperparams(self.hparams)
        if trainer.is_global_zero and self.path.exists():
            with self.path.open(newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= trainer.global_step]
            tmp = self.path.with_suffix(".tmp")
            with tmp.open("w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=self.columns)
                w.writeheader()
                w.writerows(rows)
            os.replace(tmp, self.path)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if (batch_idx + 1) % self.accumulate or not trainer.is_global_zero:
            return
        step = trainer.global_step
        if step % self.log_every == 0 or step in (1, trainer.max_steps):
            values = {k: f"{v:.6g}" for k, v in pl_module.last_train.items() if v is not None}
            self._write({"step": step, **values}, trainer.max_steps)

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        row = {k: f"{float(v):.6g}" for k, v in self.val(trainer, pl_module).items() if k in self.columns}
        self._write({"step": trainer.global_step, **row}, trainer.max_steps)


# how the plain lines name a metrics.csv column (the others as they are)
_SHORT = {"train_loss": "loss", "tokens_per_s": "tokens/s", "model_flops_per_s": "FLOP/s"}


def plain_line(step: int, max_steps: int | None, values: dict, elapsed: float) -> str:
    """A metrics row as one line, for a log file: ``step 20/800 loss 6.12 lr 0.001 tokens/s
    2,345 FLOP/s 28.1G MFU 4.2% 0:41``."""
    parts = [f"step {step}/{max_steps}" if max_steps else f"step {step}"]
    for k, v in values.items():
        if k == "tokens_per_s":
            parts.append(f"tokens/s {v:,.0f}")
        elif k == "model_flops_per_s":
            from bertsmith.train.utilisation import si

            parts.append(f"FLOP/s {si(v).strip()}")
        elif k == "mfu":
            parts.append(f"MFU {v:.2%}")
        else:
            parts.append(f"{_SHORT.get(k, k)} {v:.4g}")
    m, s = divmod(int(elapsed), 60)
    parts.append(f"{m // 60}:{m % 60:02d}:{s:02d}")
    return " ".join(parts)


def _logged_val(trainer, pl_module) -> dict:
    """The ``val_*`` values the module logged (reduced over ranks where it asked for that)."""
    return {k: v for k, v in trainer.callback_metrics.items() if k.startswith("val_")}


def read_metrics(path: Path) -> list[dict]:
    """metrics.csv rows with numbers parsed (empty cells dropped)."""
    if not Path(path).exists():
        return []
    with Path(path).open(newline="") as f:
        return [
            {k: (int(v) if k == "step" else float(v)) for k, v in r.items() if v not in ("", None)}
            for r in csv.DictReader(f)
        ]


class StepProgressBar(TQDMProgressBar):
    """A progress bar over optimizer steps (the run is step-based, not epoch-based)."""

    def on_train_epoch_start(self, trainer, *_) -> None:
        super().on_train_epoch_start(trainer)
        bar = self.train_progress_bar
        bar.reset(total=trainer.max_steps)
        bar.n = trainer.global_step
        bar.set_description("train")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        bar = self.train_progress_bar
        if trainer.global_step != bar.n and trainer.global_step % self.refresh_rate == 0:
            bar.n = trainer.global_step
            bar.set_postfix(self.get_metrics(trainer, pl_module))
            bar.refresh()

    def get_metrics(self, trainer, pl_module) -> dict:
        m = super().get_metrics(trainer, pl_module)
        m.pop("v_num", None)
        if "tok/s" in m:
            m["tok/s"] = f"{float(m['tok/s']):,.0f}"
        return m
