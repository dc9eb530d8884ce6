"""Experiment loggers: the ``logger`` group of ``bertsmith train`` and ``bertsmith finetune``
(``recipes/logger/``), made of Lightning's own loggers.

    logger=csv                          metrics.csv only (the default)
    logger=tensorboard                  + RUN/tensorboard/ event files
    logger=[csv,tensorboard,mlflow]     several at once (Hydra's list of options)
    logger=wandb                        + RUN/wandb/offline-run-* (offline unless logger.wandb.mode=online)
    logger=mlflow                       + RUN/mlflow.db, a local SQLite store (logger.mlflow.tracking_uri)

``metrics.csv`` is written whatever is chosen, with the same columns (the summary, resume and
``bertsmith compare`` read it). The loggers get the same rows, at the same steps
(``trainer.log_every``, each validation), through ``callbacks.MetricsCSV`` rather than from
Lightning's ``self.log`` (which would log other values at other steps), plus the model FLOP/s
and MFU of each row's tokens/s (``train.utilisation``); the resolved configuration (the spec
under ``model``) once as hyper-parameters; the end-of-run summary at the end.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, model_validator

NAMES = ("csv", "tensorboard", "wandb", "mlflow")
# the Python packages each logger needs (any one of them); ``bertsmith[scale]`` installs them
PACKAGES = {"tensorboard": ("tensorboard", "tensorboardX"), "wandb": ("wandb",), "mlflow": ("mlflow",)}


class _Cfg(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CsvSettings(_Cfg):
    """metrics.csv (always written; choosing it adds nothing else)."""


class TensorBoardSettings(_Cfg):
    dir: str = "tensorboard"  # relative to the run directory, or absolute


class WandbSettings(_Cfg):
    mode: Literal["offline", "online"] = "offline"
    project: str = "bertsmith"
    entity: str | None = None
    name: str | None = None  # None: the run directory's name


class MlflowSettings(_Cfg):
    tracking_uri: str | None = None  # None: sqlite:///RUN/mlflow.db
    experiment: str = "bertsmith"
    run_name: str | None = None  # None: the run directory's name


def installed(package: str) -> bool:
    try:
        return importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):  # sys.modules[package] is None: blocked
        return False


class LoggerConfig(_Cfg):
    """The chosen loggers (a key per chosen one); each one's package must be installed."""

    csv: CsvSettings | None = None
    tensorboard: TensorBoardSettings | None = None
    wandb: WandbSettings | None = None
    mlflow: MlflowSettings | None = None

    @model_validator(mode="after")
    def _installed(self):
        for name in self.chosen():
            needs = PACKAGES.get(name, ())
            if needs and not any(installed(p) for p in needs):
                raise ValueError(
                    f"{name}: given logger={name}, allowed: a logger whose package is installed "
                    f"({' or '.join(needs)} is not; pip install 'bertsmith[scale]'), or logger=csv"
                )
        uri = self.mlflow.tracking_uri if self.mlflow is not None else ""
        if uri is None or (uri or "").startswith("sqlite:"):  # MLflow's SQL store needs both
            if missing := [p for p in ("sqlalchemy", "alembic") if not installed(p)]:
                raise ValueError(
                    f"mlflow: given tracking_uri={uri or 'null (sqlite:///RUN/mlflow.db)'}, allowed: "
                    f"an http(s) tracking server, or install {' and '.join(missing)} for a SQLite "
                    "store (pip install 'bertsmith[scale]')"
                )
        return self

    def chosen(self) -> list[str]:
        return [n for n in NAMES if getattr(self, n) is not None]


def _quiet() -> None:
    """No INFO lines from MLflow's store set-up and Lightning's "Experiment ... not found"
    (MLflow sets its loggers' level when imported: imported first)."""
    import mlflow  # noqa: F401

    for name in ("mlflow", "alembic", "lightning.pytorch.loggers.mlflow"):
        logging.getLogger(name).setLevel(logging.ERROR)


def make_loggers(cfg: LoggerConfig, run_dir: Path) -> list:
    """Lightning loggers for ``cfg`` writing under ``run_dir`` (none for ``csv``: metrics.csv
    is ``MetricsCSV``'s)."""
    from lightning.pytorch import loggers as pl_loggers

    run_dir = Path(run_dir).absolute()
    out = []
    if cfg.tensorboard is not None:
        where = run_dir / cfg.tensorboard.dir
        out.append(
            pl_loggers.TensorBoardLogger(save_dir=str(where), name="", version="", default_hp_metric=False)
        )
    if cfg.mlflow is not None:
        _quiet()
        m = cfg.mlflow
        uri = m.tracking_uri or f"sqlite:///{run_dir / 'mlflow.db'}"
        art = None if m.tracking_uri else (run_dir / "mlartifacts").as_uri()
        out.append(
            pl_loggers.MLFlowLogger(
                experiment_name=m.experiment,
                run_name=m.run_name or run_dir.name,
                tracking_uri=uri,
                artifact_location=art,
            )
        )
    if cfg.wandb is not None:
        import wandb

        w = cfg.wandb
        out.append(
            pl_loggers.WandbLogger(
                save_dir=str(run_dir),
                offline=w.mode == "offline",
                project=w.project,
                entity=w.entity,
                name=w.name or run_dir.name,
                settings=wandb.Settings(silent=True, console="off"),
            )
        )
    return out


def numbers(summary: dict, prefix: str = "summary/") -> dict:
    """The numeric (not bool) top-level and ``metrics`` fields of a summary, for the loggers."""
    flat = {**summary, **{f"metrics/{k}": v for k, v in (summary.get("metrics") or {}).items()}}
    return {
        f"{prefix}{k}": float(v)
        for k, v in flat.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool)
    }


def finish(loggers: list, summary: dict | None, step: int, status: str = "success") -> None:
    """The summary's numbers logged at ``step`` (if any); each logger finalised; a wandb run
    finished (it would otherwise stay open until the process exits)."""
    for lg in loggers:
        if summary is not None:
            lg.log_metrics(numbers(summary), step=step)
        lg.finalize(status)
        if type(lg).__name__ == "WandbLogger" and lg._experiment is not None:
            lg._experiment.finish(exit_code=0 if status == "success" else 1)
