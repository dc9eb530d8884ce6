"""Run-directory plumbing for Lightning: metrics.csv, atomic checkpoints."""

from __future__ import annotations

import csv
import os
import pickle
import re
from pathlib import Path

import lightning as L
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import TQDMProgressBar

from bertsmith.registry.errors import SpecError

COLUMNS = ["step", "train_loss", "lr", "tokens_per_s", "val_loss", "val_mlm_acc", "val_nsp_acc"]


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
    """``metrics.csv``: a row every ``log_every`` steps (step, train_loss, lr, tokens_per_s)
    and a row at each validation (val_loss, val_mlm_acc[, val_nsp_acc]). On resume, rows
    past the restored step (written after the checkpoint by the interrupted run) are dropped."""

    def __init__(self, path: Path, log_every: int, accumulate: int):
        self.path, self.log_every, self.accumulate = Path(path), log_every, accumulate

    def _write(self, row: dict) -> None:
        new = not self.path.exists()
        with self.path.open("a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=COLUMNS)
            if new:
                w.writeheader()
            w.writerow({k: row.get(k, "") for k in COLUMNS})

    def on_train_start(self, trainer, pl_module) -> None:
        if trainer.is_global_zero and self.path.exists():
            with self.path.open(newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= trainer.global_step]
            tmp = self.path.with_suffix(".tmp")
            with tmp.open("w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=COLUMNS)
                w.writeheader()
                w.writerows(rows)
            os.replace(tmp, self.path)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if (batch_idx + 1) % self.accumulate or not trainer.is_global_zero:
            return
        step = trainer.global_step
        if step % self.log_every == 0 or step in (1, trainer.max_steps):
            values = {k: f"{v:.6g}" for k, v in pl_module.last_train.items() if v is not None}
            self._write({"step": step, **values})

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        m = trainer.callback_metrics
        row = {"step": trainer.global_step}
        for key in ("val_loss", "val_mlm_acc", "val_nsp_acc"):
            if key in m:
                row[key] = f"{float(m[key]):.6g}"
        self._write(row)


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
