"""Where fine-tuning starts: ``init_from`` resolved to an encoder, its tokenizer and a new head.

``init_from`` is one of
  - a pre-training run directory (its final ``model/``; results go to ``RUN/finetune/<task>``),
  - a bertsmith model directory (``spec.yaml`` + ``model.safetensors`` + ``tokenizer.json``),
  - a transformers directory ``import-hf`` reads, or a remote-code export (never executed),
  - a sweep directory: every finished run in it is fine-tuned in turn (``train.finetune.run``).
The encoder's weights are loaded; the head is the registry's ``classification`` (regression:
``num_labels=1``) or ``token_classification``, newly initialised by the spec's init scheme.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from bertsmith import registry
from bertsmith.registry.errors import SpecError
from bertsmith.train.pretrain import init_from as pretrain_init
from bertsmith.train.pretrain.tokenizer import load_tokenizer


def is_run(d: Path) -> bool:
    """A pre-training run directory (finished or not)."""
    return (d / "spec.yaml").is_file() and ((d / "config.yaml").is_file() or (d / "checkpoints").is_dir())


def runs_in(d: Path) -> list[Path]:
    """The runs of a sweep directory (Hydra job dirs), not counting fine-tuning dirs inside runs."""
    from bertsmith.train.tools.compare import find_runs

    return [r for r in find_runs(d) if is_run(r)]


def resolve(init_from: str) -> tuple[Path, str]:
    """(directory, ``bertsmith`` | ``run`` | ``remote`` | ``transformers`` | ``sweep``)."""
    d = Path(init_from).expanduser().resolve()
    if (d / "spec.yaml").is_file() and (d / "model.safetensors").is_file():
        return d, "bertsmith"
    if (d / "model" / "model.safetensors").is_file() and is_run(d):
        return d, "run"
    if is_run(d):
        raise SpecError(
            f"init_from: given {init_from!r}, a pre-training run that has not finished (no model/); "
            f"allowed: a finished run (continue it with: bertsmith train resume=true hydra.run.dir={d})"
        )
    if (d / "config.json").is_file():
        return pretrain_init._source(SimpleNamespace(init_from=str(d)))
    if d.is_dir() and runs_in(d):
        return d, "sweep"
    raise SpecError(
        f"init_from: given {init_from!r}, allowed: a pre-training run directory, a model directory "
        "(spec.yaml, model.safetensors), a transformers directory (config.json) or a sweep directory"
    )


def tokenizer_path(d: Path, kind: str, tokenizer: str | None) -> Path:
    """``tokenizer`` if given, else the source's ``tokenizer.json``."""
    if tokenizer:
        return Path(tokenizer).expanduser()
    d = d / "model" if kind == "run" else d
    if not (d / "tokenizer.json").is_file():
        raise SpecError(
            f"tokenizer: given None and {str(d)!r} holds no tokenizer.json; allowed: tokenizer=PATH "
            "(a tokenizer.json or a directory holding one)"
        )
    return d / "tokenizer.json"


def load_source(d: Path, kind: str, tokenizer: str | None):
    """(model as stored, tokenizer, tokenizer path) of a resolved source."""
    path = tokenizer_path(d, kind, tokenizer)
    tok = load_tokenizer(path)
    if kind in ("run", "bertsmith"):
        model = registry.load(d / "model" if kind == "run" else d)
    else:  # imported into a temporary directory; nothing in it is executed
        model = pretrain_init._read(d, kind)
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
