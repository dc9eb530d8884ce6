"""Typed training configuration: the non-model groups of ``recipes/train.yaml``.

The model group becomes an ``EncoderSpec`` (``registry``); everything else is checked here
with the same one-line errors (key, given, allowed, nearest match).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from bertsmith.registry.errors import SpecError, nearest, shown
from bertsmith.train.loggers import LoggerConfig


class _Cfg(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(_Cfg):
    """Where text comes from and how it becomes batches (see ``train.pretrain.corpus``)."""

    source: Literal["stdlib", "files", "hf", "shards"] = "stdlib"  # shards: `bertsmith data prepare`
    path: str | None = None
    name: str | None = None
    split: str = "train"
    text_column: str = "text"
    streaming: bool = False
    errors: Literal["strict", "replace"] = "strict"
    val_fraction: float = Field(0.05, gt=0, lt=1)
    max_val_docs: int = Field(256, ge=1)
    max_docs: int | None = Field(None, ge=1)
    tokenizer_docs: int = Field(50000, ge=1)
    seq_len: int = Field(128, ge=8)
    batch_size: int = Field(16, ge=1, description="packed rows of seq_len tokens per micro-batch")


class TokenizerConfig(_Cfg):
    kind: Literal["bpe", "wordpiece", "file"] = "bpe"
    vocab_size: int = Field(8192, ge=64)
    min_frequency: int = Field(2, ge=1)
    lowercase: bool = True
    path: str | None = None

    @model_validator(mode="after")
    def _path(self):
        if self.kind == "file" and not self.path:
            raise ValueError("path: given None, allowed: a tokenizer.json or directory (kind=file)")
        return self


class ObjectiveConfig(_Cfg):
    """MLM with 80/10/10 replacement; dynamic (RoBERTa) or static (BERT) masks; optional NSP."""

    mask_ratio: float = Field(0.15, gt=0, lt=1)
    eval_mask_ratio: float = Field(0.15, gt=0, lt=1)
    mask_token: float = Field(0.8, ge=0, le=1)
    random_token: float = Field(0.1, ge=0, le=1)
    masking: Literal["dynamic", "static"] = "dynamic"
    nsp: bool = False

    @model_validator(mode="after")
    def _split(self):
        if self.mask_token + self.random_token > 1:
            raise ValueError(
                f"random_token: given {self.random_token}, allowed: at most "
                f"1 - mask_token = {1 - self.mask_token:g}"
            )
        return self


class OptimConfig(_Cfg):
    kind: Literal["adamw", "stableadamw"] = "adamw"
    lr: float = Field(1e-3, gt=0)
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = Field(1e-6, gt=0)
    weight_decay: float = Field(0.01, ge=0)


class ScheduleConfig(_Cfg):
    """Warmup (a fraction of max_steps if < 1, else steps), then the shape; ``wsd`` holds the
    peak and decays over the last ``decay`` fraction with ``decay_shape``."""

    kind: Literal["constant", "linear", "cosine", "wsd"] = "linear"
    warmup: float = Field(0.06, ge=0)
    decay: float = Field(0.2, gt=0, le=1)
    decay_shape: Literal["1-sqrt", "linear"] = "1-sqrt"
    min_ratio: float = Field(0.0, ge=0, le=1)
    batch_warmup_steps: int = Field(0, ge=0)
    batch_warmup_start: float = Field(0.25, gt=0, le=1)


class CheckpointConfig(_Cfg):
    every_n_steps: int = Field(100, ge=1)


class TrainerConfig(_Cfg):
    """Lightning settings. ``skip_nonfinite`` is the numerical guard: how many steps with an
    inf/nan loss or gradient are skipped (no update) before the run stops (``train.module``)."""

    max_steps: int = Field(300, ge=1)
    precision: Literal["32-true", "bf16-mixed", "16-mixed"] = "32-true"
    accumulate: int = Field(1, ge=1)
    clip: float | None = Field(1.0, gt=0)
    val_every: int = Field(50, ge=1)
    log_every: int = Field(10, ge=1)
    compile: bool = False
    accelerator: Literal["auto", "cpu", "gpu"] = "auto"
    devices: int = Field(1, ge=1)
    strategy: Literal["auto", "ddp", "ddp_spawn", "fsdp"] = "auto"  # fsdp: per-layer sharding
    num_nodes: int = Field(1, ge=1, description="machines; devices per machine is trainer.devices")
    activation_checkpointing: bool = False  # recompute each layer's activations in the backward pass
    threads: int | None = Field(None, ge=1)
    progress: bool = True  # a progress bar on a terminal, else one plain line per log_every
    peak_flops: float | None = Field(
        None,
        gt=0,
        description="the device's peak FLOP/s for MFU; None: a known GPU's, or a measured GEMM rate",
    )
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    skip_nonfinite: int = Field(
        0,
        ge=0,
        description="batches whose loss or gradients are inf/nan that may be skipped (no optimizer "
        "update) before the run stops; 0 stops at the first",
    )


class TrainConfig(_Cfg):
    data: DataConfig = Field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig)
    objective: ObjectiveConfig = Field(default_factory=ObjectiveConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    trainer: TrainerConfig = Field(default_factory=TrainerConfig)
    seed: int = 0
    resume: bool = False
    init_from: str | None = None  # a model directory to start from (train.pretrain.init_from)
    init_spec: dict = Field(default_factory=dict)  # changes to init_from's spec (same weight shapes)
    finetune: str | None = None  # `bertsmith finetune` overrides run on the final model
    logger: LoggerConfig = Field(default_factory=LoggerConfig)  # train.loggers

    @model_validator(mode="after")
    def _init_spec(self):
        if self.init_spec and not self.init_from:
            raise ValueError(
                "init_from: given None, allowed: the model directory whose spec init_spec changes "
                "(the previous phase's run)"
            )
        return self


GROUPS = {
    "data": DataConfig,
    "tokenizer": TokenizerConfig,
    "objective": ObjectiveConfig,
    "optim": OptimConfig,
    "schedule": ScheduleConfig,
    "trainer": TrainerConfig,
}


def _fields(model: type[BaseModel], loc: tuple) -> list[str]:
    """The keys allowed where ``loc`` points inside ``model``."""
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        ann = getattr(field, "annotation", None)
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return []
        model = ann
    return list(model.model_fields)


def validate_config(model: type[BaseModel], data: dict):
    """``model`` validated from ``data``, or ``SpecError`` with one line per problem naming
    the key, what was given and what is allowed (shared by ``train`` and ``finetune``)."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        lines = []
        for err in e.errors():
            loc = tuple(str(x) for x in err["loc"])
            key = ".".join(loc)
            if err["type"] == "extra_forbidden":
                allowed = _fields(model, loc)
                lines.append(f"{key}: unknown key; allowed: {', '.join(allowed)}{nearest(loc[-1], allowed)}")
                continue
            if err["type"] == "missing":
                lines.append(f"{key}: missing; give {key}=...")
                continue
            msg = err["msg"]
            for lead in ("Input should be ", "Value error, "):
                msg = msg.removeprefix(lead)
            if ": given " in msg:  # our validators name the sub-key themselves
                lines.append(f"{key + '.' if key else ''}{msg}")
            else:
                lines.append(f"{key}: given {shown(err.get('input'))}, allowed: {msg}")
        raise SpecError(dict.fromkeys(lines)) from None


def parse_train_config(data: dict) -> TrainConfig:
    """Validate the training groups; ``SpecError`` with one line per problem."""
    return validate_config(TrainConfig, data)
