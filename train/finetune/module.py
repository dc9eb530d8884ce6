"""The fine-tuning Lightning module and the columns of its ``metrics.csv``."""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F

from bertsmith.train.finetune import metrics as M
from bertsmith.train.finetune.data import IGNORE
from bertsmith.train.finetune.sift import sift_loss
from bertsmith.train.pretrain.optim import make_optimizer, make_scheduler


class FinetuneModule(L.LightningModule):
    """Cross-entropy (classification, per token for tagging) or squared error (regression),
    plus SiFT's adversarial loss when enabled; validation computes the task's metrics over
    the whole validation set."""

    def __init__(self, model, task, num_labels: int, names, cfg):
        super().__init__()
        self.model, self.task, self.num_labels, self.names, self.cfg = model, task, num_labels, names, cfg
        self.last_train: dict = {}
        self.last_val: dict = {}
        self._preds: list = []
        self._golds: list = []
        self._loss_sum, self._loss_n = 0.0, 0

    def logits(self, batch: dict) -> torch.Tensor:
        return self.model(
            batch["input_ids"], batch["attention_mask"], token_type_ids=batch.get("token_type_ids")
        ).logits

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.task.kind == "regression":
            return F.mse_loss(logits.float().squeeze(-1), labels.float())
        if self.task.kind == "token_classification":
            return F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE)
        return F.cross_entropy(logits.float(), labels)

    def training_step(self, batch: dict, batch_idx: int):
        logits = self.logits(batch)
        loss = self.loss(logits, batch["labels"])
        adv = None
        if self.cfg.sift.enabled:
            mask = batch["attention_mask"].bool() if self.task.kind == "token_classification" else None
            adv = sift_loss(
                lambda: self.logits(batch),
                self.model.encoder.embeddings.tok,
                logits,
                int(batch["attention_mask"].sum()),
                self.task.kind,
                self.cfg.sift,
                mask,
            )
            loss = loss + adv
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite training loss {loss.item()} at step {self.global_step + 1}")
        self.log("train_loss", loss.detach(), prog_bar=True, batch_size=1)
        self.last_train = {"train_loss": float(loss.detach()), "lr": self.optimizers().param_groups[0]["lr"]}
        if adv is not None:
            self.last_train["sift_loss"] = float(adv.detach())
        return loss

    def on_validation_epoch_start(self) -> None:
        self._preds, self._golds, self._loss_sum, self._loss_n = [], [], 0.0, 0

    def validation_step(self, batch: dict, batch_idx: int):
        logits = self.logits(batch)
        labels = batch["labels"]
        n = int((labels != IGNORE).sum()) if self.task.kind == "token_classification" else len(labels)
        self._loss_sum += float(self.loss(logits, labels)) * n
        self._loss_n += n
        if self.task.kind == "regression":
            self._preds += logits.float().squeeze(-1).tolist()
            self._golds += labels.tolist()
        elif self.task.kind == "classification":
            self._preds += logits.argmax(-1).tolist()
            self._golds += labels.tolist()
        else:
            pred = logits.argmax(-1)
            for p, g in zip(pred, labels, strict=True):
                keep = g != IGNORE
                self._preds.append(p[keep].tolist())
                self._golds.append(g[keep].tolist())

    def on_validation_epoch_end(self) -> None:
        if self.task.kind == "regression":
            scores = M.regression_scores(self._preds, self._golds)
        elif self.task.kind == "classification":
            scores = M.classification_scores(self._preds, self._golds, self.num_labels)
        else:
            scores = M.token_scores(self._preds, self._golds, self.names)
        self.last_val = {"loss": self._loss_sum / max(1, self._loss_n), **scores}
        for key, value in self.last_val.items():
            self.log(f"val_{key}", float(value), prog_bar=key == self.task.metric, batch_size=1)

    def configure_optimizers(self):
        opt = make_optimizer(self.model, self.cfg.optim)
        sched = make_scheduler(opt, self.cfg.trainer.max_steps, self.cfg.schedule)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["bertsmith_rng"] = {"torch": torch.get_rng_state()}  # dropout, SiFT noise

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint.get("bertsmith_rng")
        if state is not None:
            torch.set_rng_state(state["torch"])


def csv_columns(task, sift: bool) -> list[str]:
    """The columns of a fine-tuning ``metrics.csv`` (``val_entity_f1`` stays empty unless the
    tags are BIO)."""
    extra = ["sift_loss"] if sift else []
    return ["step", "train_loss", "lr", *extra, "val_loss", *[f"val_{m}" for m in M.METRICS[task.kind]]]
