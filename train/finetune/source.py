"""Where fine-tuning starts: ``init_from`` resolved to an encoder, its tokenizer and a new head.

``init_from`` (resolved by ``train.sources.start_source``) is one of
  - a pre-training run directory (its final ``model/``; results go to ``RUN/finetune/<task>``),
  - a bertsmith model directory (``spec.yaml`` + ``model.safetensors`` + ``tokenizer.json``),
  - a transformers directory ``import-hf`` reads, or a remote-code export (never executed),
  - a sweep directory: every finished run in it is fine-tuned in turn (``train.finetune.run``).
The encoder's weights are loaded; the head is the registry's ``classification`` (regression:
``num_labels=1``) or ``token_classification``, newly initialised by the spec's init scheme.
"""

from __future__ import annotations

from pathlib import Path

from bertsmith import registry
from bertsmith.registry.errors import SpecError
from bertsmith.train.pretrain import init_from
from bertsmith.train.pretrain.tokenizer import load_tokenizer
from bertsmith.train.sources import Source


def tokenizer_path(source: Source, tokenizer: str | None) -> Path:
    """``tokenizer`` if given, else the source's ``tokenizer.json`` (a run: its ``model/``'s)."""
    if tokenizer:
        return Path(tokenizer).expanduser()
    d = source.model_dir or source.path
    if not (d / "tokenizer.json").is_file():
        raise SpecError(
            f"tokenizer: given None and {str(d)!r} holds no tokenizer.json; allowed: tokenizer=PATH "
            "(a tokenizer.json or a directory holding one)"
        )
    return d / "tokenizer.json"


def load_source(source: Source, tokenizer: str | None):
    """(model as stored, tokenizer, tokenizer path) of a resolved source."""
    path = tokenizer_path(source, tokenizer)
    tok = load_tokenizer(path)
    model = init_from.read(source)  # a transformers directory is imported; nothing is executed
    if tok.size > model.spec.vocab_size:
        raise SpecError(
            f"tokenizer: given one with {tok.size} tokens, allowed: at most the model's vocab_size "
            f"{model.spec.vocab_size}"
        )
    return model, tok, path


# what a fine-tuning task needs its head to provide
TASK_NEEDS = {
    "classification": "sequence_labels",
    "regression": "sequence_labels",
    "token_classification": "token_labels",
}


def head_params(task, num_labels: int):
    """The first registered head that provides what ``task`` needs (labels per sequence or per
    token), with the task's settings that head takes."""
    need = TASK_NEEDS[task.kind]
    entry = next(e for e in registry.REGISTRY.entries["head"].values() if need in e.provides)
    settings = {"num_labels": num_labels, "pooling": task.pooling, "dropout": task.dropout}
    return entry.params(**{k: v for k, v in settings.items() if k in entry.params.model_fields})


def with_new_head(loaded, task, num_labels: int):
    """A model of ``loaded``'s spec with a new ``task`` head, the encoder's weights loaded."""
    spec = loaded.spec.model_copy(update={"head": head_params(task, num_labels)})
    model = registry.build(spec)
    model.encoder.load_state_dict(loaded.encoder.state_dict(), strict=True)
    return model


def check_length(spec, max_len: int) -> None:
    entry = registry.REGISTRY.get("positional", spec.positional.kind)
    if "bounded" in entry.provides and max_len > spec.max_seq_len:
        raise SpecError(
            f"data.max_len: given {max_len}, allowed: at most model.max_seq_len={spec.max_seq_len} "
            f"(positional {entry.name!r} has that many positions)"
        )
