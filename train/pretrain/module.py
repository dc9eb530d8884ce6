"""The Lightning module: MLM (+ NSP) pre-training of any built encoder on packed batches.

Numerical faults: a step whose loss or gradients hold inf or nan is never applied. With
``trainer.skip_nonfinite=N`` up to N such steps are skipped (no optimizer update; the step
number, schedule and data order move on as if the step had happened); the next one, or the
first with the default 0, raises ``NonFiniteError`` naming the step. A checkpoint is never
written from non-finite weights, so the last checkpoint on disk is always a good one, and
``resume=true`` with a lower ``optim.lr`` continues from it at that rate.
"""

from __future__ import annotations

import sys
import time

import lightning as L
import torch
import torch.nn.functional as F

from bertsmith.registry.weights import check_checkpoint
from bertsmith.train.pretrain.data import IGNORE
from bertsmith.train.pretrain.optim import make_optimizer, make_scheduler


class NonFiniteError(FloatingPointError):
    """The loss, the gradients or the weights of step ``step`` (1-based, as in metrics.csv)
    are not finite, and no skip is left.

    ``good_step``: the newest step whose weights are worth resuming. A bad loss or gradient
    at step N comes from the weights step N-1 left, so those are not (resuming them would meet
    the same batch and fail again); they came from the finite step N-1 of the weights of step
    N-2. Non-finite weights after step N came from the finite step N of those of N-1."""

    def __init__(self, what: str, step: int, skipped: int = 0):
        self.what, self.step, self.skipped = what, step, skipped
        self.good_step = step - 1 if what == "weights" else step - 2
        super().__init__(f"non-finite {what} at step {step}")


def all_finite(tensors) -> bool:
    """Whether every tensor is free of inf and nan (one device sync, not one per tensor)."""
    flags = [torch.isfinite(t).all() for t in tensors]
    return bool(torch.stack(flags).all()) if flags else True


def runnable(model: torch.nn.Module, t) -> torch.nn.Module:
    """The model as trainer settings ``t`` run it, computing the same values: activation
    checkpointing per encoder layer (``t.activation_checkpointing``), ``torch.compile``
    (``t.compile``; ``dynamic``: packed streams change length every batch)."""
    model.encoder.checkpointing = t.activation_checkpointing
    return torch.compile(model, dynamic=True) if t.compile else model


def strategy(t):
    """Lightning's strategy for trainer settings ``t``: ``fsdp`` shards parameters, gradients
    and optimizer state over the devices, each encoder layer its own unit (Lightning's
    ``FSDPStrategy``; full state dicts in checkpoints, so resuming and ``model/`` do not
    depend on the device count); ``auto`` with several devices is ``ddp_spawn`` (Lightning's
    ``ddp`` re-runs argv, which Hydra multirun breaks); the rest are Lightning's names."""
    if t.strategy == "fsdp":
        from lightning.pytorch.strategies import FSDPStrategy

        from bertsmith.blocks.encoder import EncoderLayer

        return FSDPStrategy(auto_wrap_policy={EncoderLayer}, state_dict_type="full")
    if t.strategy == "auto" and t.devices * t.num_nodes > 1:
        return "ddp_spawn"
    return t.strategy


def final_model(trainer: L.Trainer, module) -> torch.nn.Module | None:
    """The trained model on rank 0 (None elsewhere), unwrapped from ``torch.compile`` and,
    under FSDP, gathered whole (a collective: every rank calls this)."""
    from lightning.pytorch.strategies import FSDPStrategy

    model = getattr(module.model, "_orig_mod", module.model)
    if isinstance(trainer.strategy, FSDPStrategy):
        from bertsmith import registry

        state = trainer.strategy.lightning_module_state_dict()
        if not trainer.is_global_zero:
            return None
        model = registry.build(model.spec, init=False)
        model.load_state_dict({k.removeprefix("model."): v for k, v in state.items()})
    return model if trainer.is_global_zero else None


class PretrainModule(L.LightningModule):
    """Loss = cross-entropy on masked tokens (only those go through a sparse head) + NSP."""

    def __init__(
        self, model: torch.nn.Module, optim_cfg, schedule_cfg, max_steps: int, skip_nonfinite: int = 0
    ):
        super().__init__()
        self.model = model
        self.optim_cfg, self.schedule_cfg, self.max_steps = optim_cfg, schedule_cfg, max_steps
        self.skip_nonfinite, self.skipped = skip_nonfinite, 0
        self._bad_loss: str | None = None  # the non-finite loss seen in this optimizer step
        self._t0: float | None = None
        self._tokens, self._paused = 0, 0.0
        self.last_train: dict = {}

    def forward(self, batch: dict):
        predict = batch["labels"] != IGNORE
        out = self.model(
            batch["input_ids"],
            cu_seqlens=batch["cu_seqlens"],
            max_seqlen=int(batch["max_seqlen"]),
            token_type_ids=batch.get("token_type_ids"),
            predict=predict,
        )
        logits = out.logits
        if logits.shape[0] != int(predict.sum()):  # a dense head decoded every token
            logits = logits[predict]
        labels = batch["labels"][predict]
        loss = F.cross_entropy(logits.float(), labels)
        metrics = {
            "mlm_loss": loss.detach(),
            "mlm_acc": (logits.argmax(-1) == labels).float().mean() if labels.numel() else loss.new_zeros(()),
        }
        if "nsp_labels" in batch and out.nsp_logits is not None:
            nsp = F.cross_entropy(out.nsp_logits.float(), batch["nsp_labels"])
            loss = loss + nsp
            metrics["nsp_acc"] = (out.nsp_logits.argmax(-1) == batch["nsp_labels"]).float().mean()
        return loss, metrics

    def training_step(self, batch: dict, batch_idx: int):
        loss, metrics = self(batch)
        if not torch.isfinite(loss):
            # decided in on_before_optimizer_step, after the backward pass: under DDP every
            # rank must reach the gradient all-reduce, and all then see the same gradients
            self._bad_loss = f"loss ({loss.item()})"
        tps = self._throughput(int(batch["input_ids"].numel()))
        self.log("train_loss", loss.detach(), prog_bar=True, batch_size=1)
        if tps:
            self.log("tok/s", tps, prog_bar=True, batch_size=1)
        self.last_train = {
            "train_loss": float(loss.detach()),
            "tokens_per_s": tps,
            "lr": self.optimizers().param_groups[0]["lr"],
        }
        return loss

    def _throughput(self, n_tokens: int) -> float | None:
        """Tokens per second of training since the first step, validation time excluded
        (the first step's tokens only start the clock)."""
        now = time.perf_counter()
        if self._t0 is None:
            self._t0, self._tokens, self._paused = now, 0, 0.0
            return None
        self._tokens += n_tokens
        return self._tokens / max(1e-9, now - self._t0 - self._paused)

    def on_validation_epoch_start(self) -> None:
        self._val_start = time.perf_counter()

    def on_validation_epoch_end(self) -> None:
        if self._t0 is not None:
            self._paused += time.perf_counter() - self._val_start

    def validation_step(self, batch: dict, batch_idx: int):
        loss, metrics = self(batch)
        n = int((batch["labels"] != IGNORE).sum())
        self.log("val_loss", metrics["mlm_loss"], batch_size=max(1, n), sync_dist=True)
        self.log("val_mlm_acc", metrics["mlm_acc"], batch_size=max(1, n), sync_dist=True)
        if "nsp_acc" in metrics:
            self.log("val_nsp_acc", metrics["nsp_acc"], batch_size=len(batch["nsp_labels"]), sync_dist=True)

    def configure_optimizers(self):
        opt = make_optimizer(self.model, self.optim_cfg)
        sched = make_scheduler(opt, self.max_steps, self.schedule_cfg)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_before_optimizer_step(self, optimizer) -> None:
        """Skip (drop every gradient, so the optimizer leaves weights and moments alone) or
        stop on a step with a non-finite loss or gradient. Under 16-mixed the grad scaler
        owns inf gradients: they are part of loss scaling, not a fault."""
        bad, self._bad_loss = self._bad_loss, None
        if bad is None and self.trainer.precision != "16-mixed":
            grads = [p.grad for p in self.model.parameters() if p.grad is not None]
            if not all_finite(grads):
                bad = "gradient"
        if bad is None:
            return
        step = self.global_step + 1
        if self.skipped >= self.skip_nonfinite:
            raise NonFiniteError(bad, step, self.skipped)
        self.skipped += 1
        for p in self.model.parameters():
            p.grad = None
        if self.trainer.is_global_zero:
            print(
                f"bertsmith: step {step}: non-finite {bad}; batch skipped "
                f"({self.skipped} of trainer.skip_nonfinite={self.skip_nonfinite})",
                file=sys.stderr,
            )

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # raised before the file is opened, so the previous checkpoint stays the last one
        if not all_finite(p.detach() for p in self.model.parameters()):
            raise NonFiniteError("weights", self.global_step, self.skipped)
        checkpoint["bertsmith_rng"] = {"torch": torch.get_rng_state()}
        checkpoint["bertsmith_skipped"] = self.skipped

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        check_checkpoint(checkpoint, self, getattr(self.trainer, "ckpt_path", None) or "last.ckpt")
        state = checkpoint.get("bertsmith_rng")
        if state is not None:
            torch.set_rng_state(state["torch"])
        self.skipped = checkpoint.get("bertsmith_skipped", 0)
        self._resume_with_configured_lr(checkpoint)

    def _resume_with_configured_lr(self, checkpoint: dict) -> None:
        """A resumed run keeps the optimizer's moments and the schedule's position but uses
        the configured ``optim.lr`` (Lightning would restore the saved one): the way out of a
        diverged run is to resume its last good checkpoint with a lower rate. Untouched when
        the rate is unchanged, so a plain resume stays exact."""
        lr = self.optim_cfg.lr
        for opt in checkpoint.get("optimizer_states", []):
            for group in opt.get("param_groups", []):
                initial = group.get("initial_lr")
                if initial and initial != lr:
                    group["lr"], group["initial_lr"] = lr * group["lr"] / initial, lr
        for sched in checkpoint.get("lr_schedulers", []):
            if "base_lrs" in sched and any(b != lr for b in sched["base_lrs"]):
                sched["base_lrs"] = [lr] * len(sched["base_lrs"])
