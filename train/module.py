"""The Lightning module: MLM (+ NSP) pre-training of any built encoder on packed batches."""

from __future__ import annotations

import time

import lightning as L
import torch
import torch.nn.functional as F

from train.data import IGNORE
from train.optim import lr_factor, make_optimizer


class PretrainModule(L.LightningModule):
    """Loss = cross-entropy on masked tokens (only those go through a sparse head) + NSP."""

    def __init__(self, model: torch.nn.Module, optim_cfg, schedule_cfg, max_steps: int):
        super().__init__()
        self.model = model
        self.optim_cfg, self.schedule_cfg, self.max_steps = optim_cfg, schedule_cfg, max_steps
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
            raise FloatingPointError(f"non-finite training loss {loss.item()} at step {self.global_step + 1}")
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
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: lr_factor(s, self.max_steps, self.schedule_cfg)
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["bertsmith_rng"] = {"torch": torch.get_rng_state()}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint.get("bertsmith_rng")
        if state is not None:
            torch.set_rng_state(state["torch"])
