"""``bertsmith train init_from=DIR``: start a run from a trained, imported or exported model.

``DIR`` is a bertsmith model directory (a run's ``model/``, an ``import-hf`` output), a
transformers directory of a family ``import-hf`` reads, or a remote-code export of
``bertsmith export``. It decides the architecture: its spec replaces the recipe's model, and
its weights replace the initialisation. Its ``tokenizer.json``, when there is one, is used as
``tokenizer=file`` would use it; otherwise the configured tokenizer must fit the model's
vocabulary (at most ``vocab_size`` tokens, the same pad id). A model without a head gets a
freshly initialised one for the objective (``mlm``, or ``nsp`` with ``objective.nsp``).
Nothing from ``DIR`` is executed (transformers directories are imported, not loaded).

``init_spec`` changes the spec it loads where the weights keep their shapes — the next phase
of a run: ``max_seq_len`` and RoPE's ``theta`` for context extension (``pretrain=modernbert-
extend``), dropouts, the kernel. A change that would reshape a weight (learned positions with
a new ``max_seq_len``, another ``d_model``) is refused in one line before anything is written.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from bertsmith import registry
from bertsmith.registry.builder import build_meta
from bertsmith.registry.errors import SpecError
from bertsmith.registry.jsonfile import read_json
from bertsmith.train import sources
from bertsmith.train.pretrain.config import TokenizerConfig


def pretraining_head(nsp: bool):
    """The first registered head that provides what the objective needs (``masked_lm``, and
    ``next_sentence`` for next-sentence prediction)."""
    need = {"masked_lm", "next_sentence"} if nsp else {"masked_lm"}
    return next(e for e in registry.REGISTRY.entries["head"].values() if need <= e.provides)


def _with_head(spec, tcfg):
    """The spec with a head the pre-training objective can use."""
    if spec.head is None:
        return spec.model_copy(update={"head": pretraining_head(tcfg.objective.nsp).params()})
    if "masked_lm" not in registry.REGISTRY.get("head", spec.head.kind).provides:
        able = [e.name for e in registry.REGISTRY.entries["head"].values() if "masked_lm" in e.provides]
        raise SpecError(
            f"init_from: given a model with a {spec.head.kind!r} head, allowed: a model with an MLM "
            f"head ({', '.join(able)}) or none"
        )
    return spec


def _merged(base: dict, changes: dict) -> dict:
    out = dict(base)
    for k, v in changes.items():
        out[k] = _merged(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return out


def _shapes(spec) -> dict:
    return {k: tuple(v.shape) for k, v in build_meta(spec).state_dict().items()}


def changed(spec, changes: dict):
    """``spec`` with ``init_spec``'s ``changes`` merged in; refused when a weight would change
    shape (the loaded weights would not fit)."""
    if not changes:
        return spec
    from bertsmith.registry.spec import spec_dict

    new = registry.parse_spec(_merged(spec_dict(spec), changes), prefix="init_spec.")
    old_shapes, new_shapes = _shapes(spec), _shapes(new)
    for key in sorted(old_shapes.keys() | new_shapes.keys()):
        if old_shapes.get(key) != new_shapes.get(key):
            raise SpecError(
                f"init_spec: given {changes}, allowed: changes that keep every weight's shape "
                f"({key}: {old_shapes.get(key)} -> {new_shapes.get(key)})"
            )
    return new


def spec_of(tcfg):
    """The spec a run with ``init_from`` trains (cheap: reads the spec or config only)."""
    source = sources.model_source(tcfg.init_from)
    d = source.path
    if source.kind == "bertsmith":
        spec = registry.load_spec(source.spec_path)
    elif source.kind == "remote":
        data = read_json(d / "config.json").get("bertsmith_spec")
        if not isinstance(data, dict):
            raise SpecError(f"init_from: given {str(d)!r}, allowed: a bertsmith remote-code export")
        spec = registry.parse_spec(data, prefix="config.json bertsmith_spec.")
    else:
        from bertsmith.train.interop.hf import _config, spec_from_config

        spec = spec_from_config(*_config(d), name=d.name or "imported")
    return _with_head(changed(spec, tcfg.init_spec), tcfg)


def read(source: sources.Source):
    """The model a resolved source holds, as stored (a run: its final ``model/``); a
    transformers directory is imported into a temporary directory, nothing in it executed."""
    d = source.path
    if source.model_dir is not None:
        return registry.load(source.model_dir)
    if source.kind == "remote":
        from bertsmith.train.interop.export import read_remote_export

        return read_remote_export(d)
    from bertsmith.train.interop.hf import import_hf

    with tempfile.TemporaryDirectory(prefix="bertsmith-init-") as tmp:
        return import_hf(d, Path(tmp) / "model", name=d.name or "imported")


def load(tcfg):
    """(model with the directory's weights, ``tcfg`` using the directory's tokenizer if any)."""
    source = sources.model_source(tcfg.init_from)
    d = source.path
    loaded = read(source)
    spec = _with_head(changed(loaded.spec, tcfg.init_spec), tcfg)
    model = loaded
    if spec != loaded.spec:  # a new head or init_spec: build the new spec, then load the weights
        model = registry.build(spec)
        result = model.load_state_dict(loaded.state_dict(), strict=False)
        if result.unexpected_keys or any(not k.startswith("head.") for k in result.missing_keys):
            raise SpecError(f"init_from: {str(d)!r} does not fit its own spec with a new head ({result})")
        if spec.head != loaded.spec.head:
            print(f"bertsmith: {d} has no head; starting a new {spec.head.kind} head")
        if tcfg.init_spec:
            print(f"bertsmith: {d}'s spec changed by init_spec {tcfg.init_spec}; its weights loaded")
    if (d / "tokenizer.json").is_file():
        tcfg = tcfg.model_copy(
            update={"tokenizer": TokenizerConfig(kind="file", path=str(d / "tokenizer.json"))}
        )
    return model, tcfg


def fit(model, data):
    """The model's spec, once the tokenizer is known to fit it (no resizing: the weights are
    the directory's)."""
    spec, tok = model.spec, data.tok
    if tok.size > spec.vocab_size:
        raise SpecError(
            f"init_from: the tokenizer has {tok.size} tokens, the model's vocab_size is "
            f"{spec.vocab_size}; allowed: a tokenizer that fits (a tokenizer.json in the model "
            "directory, or tokenizer=file tokenizer.path=...)"
        )
    if tok.pad_id != spec.pad_token_id:
        raise SpecError(
            f"init_from: the tokenizer's pad id is {tok.pad_id}, the model's pad_token_id is "
            f"{spec.pad_token_id}; allowed: the same id"
        )
    return spec
