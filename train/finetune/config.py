"""Typed configuration of ``bertsmith finetune`` (``recipes/finetune.yaml`` + ``recipes/task/``).

The optimiser and schedule are the pre-training ones (``train.config``); everything else is
checked here with the same one-line errors (key, given, allowed, nearest match).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from bertsmith.registry.errors import nearest
from bertsmith.train.finetune.metrics import METRICS
from bertsmith.train.loggers import LoggerConfig
from bertsmith.train.pretrain.config import OptimConfig, ScheduleConfig, validate_config


class _Cfg(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TaskConfig(_Cfg):
    """What is predicted and how it is scored. ``name`` names the results
    (``finetune/<name>/`` in a pre-training run, ``finetune:<name>/<metric>`` in compare)."""

    name: str = Field("task", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    kind: Literal["classification", "regression", "token_classification"] = "classification"
    num_labels: int | None = Field(None, ge=1, description="None: from the training labels")
    labels: list[str] | None = Field(None, description="label names in id order")
    metric: str = "accuracy"
    pooling: Literal["cls", "mean"] = "cls"
    dropout: float = Field(0.1, ge=0, lt=1)

    @model_validator(mode="after")
    def _check(self):
        allowed = METRICS[self.kind]
        if self.metric not in (*allowed, "loss"):
            raise ValueError(
                f"metric: given {self.metric!r}, allowed for {self.kind}: {', '.join(allowed)}, loss"
                f"{nearest(self.metric, allowed)}"
            )
        if self.kind == "regression" and self.num_labels not in (None, 1):
            raise ValueError(f"num_labels: given {self.num_labels}, allowed: 1 for regression")
        if self.labels is not None and self.num_labels not in (None, len(self.labels)):
            raise ValueError(
                f"num_labels: given {self.num_labels}, allowed: {len(self.labels)} (the number of task.labels)"
            )
        return self


class FinetuneDataConfig(_Cfg):
    """Examples from local files (``.csv``, ``.tsv``, ``.jsonl``, ``.parquet``) or a ``datasets``
    dataset; without a validation file or split, ``val_fraction`` of the training examples
    is held out (chosen with ``split_seed``, so the split does not move with ``seed``)."""

    source: Literal["files", "hf"] = "files"
    train: str | None = None
    validation: str | None = None
    name: str | None = None
    config: str | None = None
    train_split: str = "train"
    validation_split: str | None = "validation"
    text_column: str = "text"
    text_pair_column: str | None = None
    label_column: str = "label"
    val_fraction: float = Field(0.1, gt=0, lt=1)
    split_seed: int = 0
    max_train: int | None = Field(None, ge=1)
    max_val: int | None = Field(None, ge=1)
    max_len: int = Field(128, ge=4)
    batch_size: int = Field(32, ge=1)
    eval_batch_size: int = Field(64, ge=1)

    @model_validator(mode="after")
    def _where(self):
        if self.source == "files" and not self.train:
            raise ValueError(
                "train: given None, allowed: a .csv/.tsv/.jsonl/.parquet file (data.source=files)"
            )
        if self.source == "hf" and not self.name:
            raise ValueError("name: given None, allowed: a dataset name or local path (data.source=hf)")
        return self


class SiftConfig(_Cfg):
    """Scale-invariant fine-tuning (He et al. 2021, DeBERTa, arXiv:2006.03654 §3.3):
    ``init`` the std of the random start, ``step`` the power-iteration step size (both in
    units of the normalised embedding), ``weight`` of the adversarial loss."""

    enabled: bool = False
    init: float = Field(1e-2, gt=0)
    step: float = Field(1e-4, gt=0)
    weight: float = Field(1.0, gt=0)


class FinetuneOptimConfig(OptimConfig):
    """The pre-training optimiser settings, with ``lr`` left to the model's width by default."""

    lr: float | None = Field(None, gt=0, description="None: default_lr(d_model)")


LR_REFERENCE = (256, 5e-4)  # (d_model, peak rate) of the rule below
LR_BOUNDS = (1e-5, 1e-3)


def default_lr(d_model: int) -> float:
    """The default peak fine-tuning rate for a model ``d_model`` wide: ``5e-4·(256/d_model)²``,
    kept within [1e-5, 1e-3] — 5e-4 for the 256-wide recipes, 5.6e-5 at 768 (base) and
    3.1e-5 at 1024 (large). An empirical fit, not a scaling law: 5e-4 is what a 100-step
    ``modernbert-tiny`` run needs to learn a negation task (1e-4 ends at chance), and the
    base / large values fall in the ranges BERT (Devlin et al. 2019: 2e-5 to 5e-5) and
    ModernBERT fine-tune with; ``optim.lr=`` overrides it."""
    d, lr = LR_REFERENCE
    return min(LR_BOUNDS[1], max(LR_BOUNDS[0], lr * (d / d_model) ** 2))


class FinetuneTrainerConfig(_Cfg):
    max_steps: int = Field(300, ge=1)
    val_every: int = Field(100, ge=1)
    log_every: int = Field(10, ge=1)
    precision: Literal["32-true", "bf16-mixed", "16-mixed"] = "32-true"
    clip: float | None = Field(1.0, gt=0)
    accelerator: Literal["auto", "cpu", "gpu"] = "auto"
    threads: int | None = Field(None, ge=1)
    progress: bool = True  # a progress bar on a terminal, else one plain line per log_every
    checkpoint_every: int = Field(1000, ge=1, description="steps between checkpoints (and at the end)")


class FinetuneConfig(_Cfg):
    init_from: str = Field(description="a pre-training run, a model directory or a transformers directory")
    tokenizer: str | None = None  # a tokenizer.json, when the model directory has none
    task: TaskConfig = Field(default_factory=TaskConfig)
    data: FinetuneDataConfig
    sift: SiftConfig = Field(default_factory=SiftConfig)
    optim: FinetuneOptimConfig = Field(default_factory=FinetuneOptimConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    trainer: FinetuneTrainerConfig = Field(default_factory=FinetuneTrainerConfig)
    logger: LoggerConfig = Field(default_factory=LoggerConfig)  # train.loggers
    seed: int = 0
    resume: bool = False


def with_lr(cfg: FinetuneConfig, d_model: int) -> FinetuneConfig:
    """``cfg`` with ``optim.lr`` filled in (``default_lr``) when it was left unset."""
    if cfg.optim.lr is not None:
        return cfg
    return cfg.model_copy(update={"optim": cfg.optim.model_copy(update={"lr": default_lr(d_model)})})


def parse_finetune_config(data: dict) -> FinetuneConfig:
    """Validate a composed ``finetune`` config; ``SpecError`` with one line per problem."""
    return validate_config(FinetuneConfig, data)
