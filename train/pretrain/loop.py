"""One pre-training job: data, model and Lightning module in the frame of ``train.jobs``
(run directory, resume, trainer, summary); the checks that come before it (``cheap_checks``:
the recipe against the data and the disk) and the numerical faults that end it."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader

from bertsmith import registry
from bertsmith.registry.errors import SpecError
from bertsmith.registry.outputs import atomic_write
from bertsmith.registry.spec import parse_spec, spec_dict
from bertsmith.train import jobs
from bertsmith.train.callbacks import MetricsCSV, read_metrics
from bertsmith.train.pretrain import corpus, init_from, shards
from bertsmith.train.pretrain.data import Data, StreamingBatches, build_data
from bertsmith.train.pretrain.module import (
    NonFiniteError,
    PretrainModule,
    all_finite,
    final_model,
    runnable,
    strategy,
)
from bertsmith.train.pretrain.tokenizer import Tok, file_sha256, load_tokenizer


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


def checkpoint_bytes(n_params: int) -> int:
    """Size of one training checkpoint: fp32 weights and AdamW's two moments (mixed precision
    keeps fp32 master weights too); the rest of a checkpoint is small."""
    return n_params * 4 * 3


def disk_needed(n_params: int, tcfg, written: int = 0) -> tuple[int, int]:
    """(bytes, checkpoints) a run still writes: every ``step=N.ckpt`` not yet on disk, one more
    for ``last.ckpt`` (kept, and rewritten through a temporary file), the final fp32 model and
    64 MiB for metrics, configs and the tokenizer."""
    t = tcfg.trainer
    n = max(0, t.max_steps // t.checkpoint.every_n_steps - written) + 2
    return n * checkpoint_bytes(n_params) + n_params * 4 + 64 * 2**20, n


def _nearest_existing(path: Path) -> Path:
    while not os.path.lexists(path) and path != path.parent:
        path = path.parent
    return path


def check_writable(run_dir: Path, n_params: int, tcfg) -> None:
    """Before anything is written (``bertsmith train`` calls this before Hydra creates the run
    directory): the run directory, or the directory it would be created in, must be a
    writable directory with room for the run's checkpoints."""
    run_dir = Path(run_dir)
    base = _nearest_existing(run_dir.absolute())
    if not base.is_dir():
        raise SpecError(
            f"hydra.run.dir: given {str(run_dir)!r}, allowed: a path of directories ({str(base)!r} is a file)"
        )
    if not os.access(base, os.W_OK | os.X_OK):
        raise SpecError(
            f"hydra.run.dir: given {str(run_dir)!r}, allowed: a writable directory "
            f"(no write permission for {str(base)!r})"
        )
    _check_space(run_dir, base, n_params, tcfg, _written(run_dir, tcfg.resume))


def _written(run_dir: Path, resume: bool) -> int:
    """The ``step=N.ckpt`` checkpoints a resumed run need not write again."""
    return len(list((run_dir / "checkpoints").glob("step=*.ckpt"))) if resume else 0


def _check_space(run_dir: Path, where: Path, n_params: int, tcfg, written: int) -> None:
    need, n = disk_needed(n_params, tcfg, written)
    free = shutil.disk_usage(where).free
    if free < need:
        raise SpecError(
            f"hydra.run.dir: given {str(run_dir)!r} with {free / 2**20:,.0f} MiB free, allowed: at "
            f"least {need / 2**20:,.0f} MiB free ({n} checkpoints of "
            f"{checkpoint_bytes(n_params) / 2**20:,.0f} MiB and the final model; "
            "fewer with a larger trainer.checkpoint.every_n_steps)"
        )


def estimate_params(spec, tcfg) -> int:
    """Parameters of the model ``train`` will build, counted on the meta device (no memory);
    the vocabulary follows the tokenizer, as ``fit_spec_to_data`` will make it."""
    if tcfg.tokenizer.kind != "file" and not tcfg.init_from:
        vocab = -(-tcfg.tokenizer.vocab_size // 64) * 64
        spec = spec.model_copy(update={"vocab_size": max(vocab, spec.pad_token_id + 1)})
    with torch.device("meta"):
        return sum(p.numel() for p in registry.build(spec, init=False).parameters())


def planned_run_dir(cfg) -> Path | None:
    """The run directory a composed ``train`` config (with its ``hydra`` node, which is
    removed) will use, or None if it cannot be told before Hydra starts."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf, open_dict
    from omegaconf.errors import OmegaConfBaseException

    if "hydra" not in cfg:
        return None
    try:
        HydraConfig.instance().set_config(cfg)  # ${hydra:runtime.choices.model} reads it
        run_dir = OmegaConf.select(cfg, "hydra.run.dir")
    except (OmegaConfBaseException, ValueError):
        run_dir = None
    with open_dict(cfg):
        cfg.pop("hydra")
    return Path(str(run_dir)) if run_dir else None


def cheap_checks(spec, tcfg, run_dir: Path | None = None) -> None:
    """What can be checked before any data is read or anything is written; with ``run_dir``,
    also that it can be written and has room for the run's checkpoints."""
    if tcfg.init_from:  # the model directory's spec replaces the recipe's
        spec = init_from.spec_of(tcfg)
    entry = registry.REGISTRY.get("positional", spec.positional.kind)
    if "bounded" in entry.provides and tcfg.data.seq_len > spec.max_seq_len:
        raise SpecError(
            f"data.seq_len: given {tcfg.data.seq_len}, allowed: at most model.max_seq_len="
            f"{spec.max_seq_len} (positional {entry.name!r} has that many positions)"
        )
    heads = registry.REGISTRY.entries["head"]
    if tcfg.objective.nsp and (spec.head is None or "next_sentence" not in heads[spec.head.kind].provides):
        able = "|".join(e.name for e in heads.values() if "next_sentence" in e.provides)
        raise SpecError(
            f"objective.nsp: given true, allowed: false unless the head provides next_sentence (model/head={able})"
        )
    if tcfg.objective.nsp and spec.type_vocab_size < 2:
        raise SpecError(
            f"model.type_vocab_size: given {spec.type_vocab_size}, allowed: at least 2 for NSP segments"
        )
    if tcfg.data.source == "shards":  # the manifest, the shard files, tokenizer and seq_len
        shards.check(tcfg)
    if tcfg.data.source == "files":
        corpus.file_paths(tcfg.data.path)
    if tcfg.tokenizer.kind == "file":
        load_tokenizer(tcfg.tokenizer.path)
    registry.check(spec, device=jobs.device(tcfg.trainer.accelerator), training=True)
    if run_dir is not None:
        jobs.refuse_overwrite(run_dir, tcfg.resume)
        check_writable(run_dir, estimate_params(spec, tcfg), tcfg)


def fit_spec_to_data(spec, data: Data):
    """The model's vocabulary follows the tokenizer."""
    return parse_spec(
        {**spec.model_dump(), "vocab_size": data.tok.padded_size, "pad_token_id": data.tok.pad_id}
    )


COLUMNS = [
    "step",
    "train_loss",
    "lr",
    "tokens_per_s",
    "val_loss",
    "val_mlm_acc",
    "val_nsp_acc",
]  # metrics.csv


def train(spec, tcfg, run_dir: Path, resolved: dict, started: float | None = None) -> dict:
    """Run one pre-training job in ``run_dir``; returns the summary (also ``summary.json``).
    The frame (run directory, resume, Lightning, summary.json) is ``train.jobs``'s."""
    started = time.time() if started is None else started
    jobs.quiet_lightning(resumable=True)
    jobs.set_threads(tcfg.trainer.threads)
    cheap_checks(spec, tcfg)
    L.seed_everything(tcfg.seed, workers=True, verbose=False)
    spec, tcfg, resolved, data, model = _build(spec, tcfg, resolved)
    n_params = sum(p.numel() for p in model.parameters())
    if (summary := jobs.finished(run_dir, tcfg.resume)) is not None:  # a re-run sweep skips it
        return summary
    ckpt = _resume_point(run_dir, tcfg, spec, data.tok, n_params)
    if jobs.is_rank_zero():
        resolved = {
            "model": spec_dict(spec),
            **tcfg.model_dump(mode="json"),
            **{k: v for k, v in resolved.items() if k not in ("model", "hydra", *tcfg.model_fields)},
        }
        jobs.write_inputs(run_dir, spec, resolved, data.tok)

    t = tcfg.trainer
    module = PretrainModule(runnable(model, t), tcfg.optim, tcfg.schedule, t.max_steps, t.skip_nonfinite)
    use = jobs.utilisation(spec, tcfg.data.seq_len, tcfg.objective.mask_ratio, t)  # MFU: train.utilisation
    trainer = _trainer(run_dir, t, jobs.Report(tcfg.logger, resolved, use))
    dm = PretrainDataModule(data, t.accumulate)
    train_s, peak = _fit(trainer, module, dm, ckpt, run_dir, t.skip_nonfinite)
    if trainer.global_step % t.val_every:
        trainer.validate(module, datamodule=dm, verbose=False)
    final = final_model(trainer, module)  # every rank: FSDP gathers the shards
    if final is None:
        return {}
    model_dir = registry.save(final, run_dir / "model", tokenizer=run_dir / "tokenizer.json")
    summary = summarize(run_dir, model_dir, data, train_s)
    summary = {**summary, "params": n_params, **jobs.usage(started, peak, cuda=True)}
    return jobs.write_summary(run_dir, summary, trainer)  # + model FLOP/s and MFU; loggers closed


def _build(spec, tcfg, resolved: dict):
    """(spec, tcfg, resolved, data, model): ``init_from``'s model, spec and tokenizer, or a
    new model of ``spec`` whose vocabulary follows the tokenizer."""
    initial = None
    if tcfg.init_from:  # weights, spec and tokenizer from a model directory
        initial, tcfg = init_from.load(tcfg)
        resolved = {**resolved, "tokenizer": tcfg.tokenizer.model_dump()}
    if tcfg.data.source == "shards":  # the shards' tokenizer unless tokenizer=file is given
        tcfg, resolved = shards.with_shard_tokenizer(tcfg, resolved)
        data = shards.build_data(tcfg, tcfg.seed)
    else:
        data = build_data(tcfg, tcfg.seed)
    spec = fit_spec_to_data(spec, data) if initial is None else init_from.fit(initial, data)
    registry.check(spec, device=jobs.device(tcfg.trainer.accelerator), training=True)
    model = registry.build(spec) if initial is None else initial
    return spec, tcfg, resolved, data, model


def _resume_point(run_dir: Path, tcfg, spec, tok: Tok, n_params: int) -> Path | None:
    """The run directory checked (``jobs.check_run_dir``, with room for this run's
    checkpoints); the checkpoint to resume from, after the tokenizer and the spec it was
    trained with are found to be the same."""

    def room() -> None:
        _check_space(run_dir, run_dir, n_params, tcfg, _written(run_dir, tcfg.resume))

    ckpt = jobs.check_run_dir(run_dir, tcfg.resume, room)
    if tcfg.resume and ckpt is None:
        print(f"bertsmith: resume=true but {run_dir} has no checkpoint yet; starting fresh")
    if ckpt is not None:
        check_same_tokenizer(run_dir, tok)  # first: the tokenizer sizes the model's vocabulary
        jobs.check_same_spec(run_dir, spec, "a model", "the same recipe and overrides")
        check_same_split(run_dir, tcfg)
    return ckpt


SPLIT_KEYS = ("devices", "num_nodes", "accumulate")  # how a step's rows are dealt to processes


def check_same_split(run_dir: Path, tcfg) -> None:
    """A resumed run deals each step's rows to its processes as the interrupted one did: rank r
    of w takes micro-batches r, r+w, ... of the step. With another number of processes (or
    ``trainer.accumulate``) the same step would hand out other rows, so it is refused in one
    line rather than silently repeating or skipping rows."""
    from bertsmith.registry.yamlfile import read_yaml

    path = run_dir / "config.yaml"
    old = (read_yaml(path, "config.yaml") or {}).get("trainer", {}) if path.exists() else {}
    if not isinstance(old, dict):
        return
    defaults = {"devices": 1, "num_nodes": 1, "accumulate": 1}
    was = {k: old.get(k, defaults[k]) for k in SPLIT_KEYS}
    now = {k: getattr(tcfg.trainer, k) for k in SPLIT_KEYS}
    if was != now:
        given = ", ".join(f"trainer.{k}={now[k]}" for k in SPLIT_KEYS if now[k] != was[k])
        allowed = ", ".join(f"trainer.{k}={was[k]}" for k in SPLIT_KEYS if now[k] != was[k])
        raise SpecError(
            f"resume: given {given}, allowed: {allowed} as in {str(path)!r} (the rows of each step are "
            "dealt to the processes by rank; another split would repeat or skip rows)"
        )


def _trainer(run_dir: Path, t, report: jobs.Report | None = None) -> L.Trainer:
    checkpoint = dict(
        every_n_train_steps=t.checkpoint.every_n_steps,
        save_top_k=-1,
        # a resumed run rewrites the step=N.ckpt an interrupted or diverged run left past its
        # restored step, and last.ckpt even in a moved run dir (Lightning would write
        # step=N-v1.ckpt and last-v1.ckpt beside them, and resume=true would find the old last)
        enable_version_counter=False,
    )
    metrics = MetricsCSV(run_dir / "metrics.csv", t.log_every, COLUMNS, t.accumulate)
    return jobs.make_trainer(
        run_dir,
        t,
        metrics,
        checkpoint,
        t.accumulate,
        report=report,
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy=strategy(t),
    )


def _fit(trainer: L.Trainer, module, dm, ckpt: Path | None, run_dir: Path, skip: int) -> tuple[float, int]:
    """``jobs.fit``; a numerical fault, or final weights that are not finite, is one line."""
    try:
        fitted = jobs.fit(trainer, module, dm, ckpt)
        if not all_finite(p.detach() for p in _unwrapped(module).parameters()):  # the last update overflowed
            raise NonFiniteError("weights", trainer.global_step, module.skipped)
    except NonFiniteError as e:
        raise SpecError(nonfinite_line(e, run_dir, skip)) from None
    return fitted


def _unwrapped(module: PretrainModule):
    """The model as built (``torch.compile`` wraps it)."""
    return getattr(module.model, "_orig_mod", module.model)


def check_same_tokenizer(run_dir: Path, tok: Tok) -> None:
    """A resumed run goes on with the tokenizer it was trained with (its ``tokenizer.json``,
    compared by ``tokenizer_sha256``): another one would renumber the tokens under the weights."""
    old = file_sha256(run_dir / "tokenizer.json")
    if old is not None and old != tok.sha256:
        raise SpecError(
            f"resume: given a tokenizer (sha256 {tok.sha256[:12]}) that differs from the one "
            f"{str(run_dir)!r} was trained with (tokenizer.json, sha256 {old[:12]}), allowed: the same "
            "corpus and tokenizer settings as the run being resumed, or "
            f"tokenizer=file tokenizer.path={run_dir / 'tokenizer.json'}"
        )


def keep_last_good(run_dir: Path, good_step: int) -> int | None:
    """Make ``checkpoints/last.ckpt`` the newest checkpoint of a step at most ``good_step``
    (see ``NonFiniteError``), so that ``resume=true`` starts from weights that can go on;
    remove it if there is none. ``step=N.ckpt`` files stay as they are. Returns the step."""
    ckpts = run_dir / "checkpoints"
    steps = sorted(int(p.stem[5:]) for p in ckpts.glob("step=*.ckpt") if p.stem[5:].isdigit())
    good = [s for s in steps if s <= good_step]
    last = ckpts / "last.ckpt"
    if not last.exists():
        return None
    if good and good[-1] != steps[-1]:
        atomic_write(last, lambda p: shutil.copyfile(ckpts / f"step={good[-1]}.ckpt", p))
    elif not good:
        last.unlink()
    return good[-1] if good else None


def nonfinite_line(e: NonFiniteError, run_dir: Path, allowed: int) -> str:
    """The one line a numerical fault ends a run with: what, which step, what is kept."""
    step = keep_last_good(run_dir, e.good_step) if jobs.is_rank_zero() else None
    last = run_dir / "checkpoints" / "last.ckpt"
    kept = (
        f"last good checkpoint: {last} (step {step}); resume=true with a lower optim.lr continues from it"
        if step is not None
        else f"no checkpoint from before step {e.good_step + 1} to keep (resume=true starts over)"
    )
    skipped = f" after skipping {e.skipped} bad batches" if e.skipped else ""
    hint = "" if allowed else "; or set trainer.skip_nonfinite=N to skip up to N bad batches"
    return f"non-finite {e.what} at step {e.step}{skipped}; {kept}{hint}"


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
        "tokenizer_sha256": data.tok.sha256,
    }
    if "val_nsp_acc" in last_val:
        summary["val_nsp_acc"] = last_val["val_nsp_acc"]
    val_loss = summary["val_loss"]
    summary["learned_nothing"] = val_loss is not None and not val_loss < summary["unigram_val_loss"]
    eff = summary["packing_efficiency"]
    print(
        f"\nbertsmith: {summary['steps']} steps in {train_s / 60:.1f} min"
        f" ({summary['tokens_per_s'] or 0:,.0f} tokens/s"
        f"{f', packing efficiency {eff:.1%}' if eff else ''})\n"
        f"  val MLM loss {summary['val_loss']:.3f} (unigram baseline {summary['unigram_val_loss']:.3f}),"
        f" val MLM accuracy {summary['val_mlm_acc']:.3f}, last train loss {summary['train_loss']:.3f}\n"
        f"  run:   {run_dir}\n  model: {model_dir}\n"
        f"  tokenizer: {data.tok.size:,} tokens, sha256 {summary['tokenizer_sha256'][:12]}"
    )
    if summary["learned_nothing"]:
        print(
            f"  val MLM loss {summary['val_loss']:.3f} is not below the unigram baseline "
            f"{summary['unigram_val_loss']:.3f}: the model learned nothing beyond token frequencies; "
            "try more trainer.max_steps or another optim.lr"
        )
    return summary
