"""What bertsmith knows of one transformers family, in one object.

Each family module (``bert.py``, ``roberta.py``, ``deberta.py``, ``modernbert.py``) defines a
``Family`` subclass and one instance of it, listed in ``FAMILIES`` (``train/interop/__init__.py``).
Import, export, the model card and the bench loop over that table, so a new family is one
file plus one line there. A family says, both ways::

    config.json  --spec_data-->  spec fields         (import; export reads its config back)
    spec         --config----->  config.json keys    (export)
    our weights  <--key_map--->  transformers keys   (import; export inverts it)
"""

from __future__ import annotations

from contextlib import contextmanager

from bertsmith.registry.core import REGISTRY
from bertsmith.registry.errors import SpecError

# transformers activation name -> ours (every family reads transformers' ACT2FN names)
ACT = {
    "gelu": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "relu": "relu",
    "silu": "silu",
    "swish": "silu",
}
# ours -> the transformers name that ``ACT`` maps back to it
HF_ACT = {"gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh", "relu": "relu", "silu": "silu"}


def activation(name: str, key: str) -> str:
    """Our activation for transformers' ``name`` read from config key ``key``."""
    if name not in ACT:
        raise SpecError(f"config.json {key}: given {name!r}, allowed: {', '.join(ACT)}")
    return ACT[name]


def hf_act(params) -> str:
    """The transformers name for an activation entry with its default settings (anything else,
    e.g. relu with power 3, has no name there: gelu is written and the round trip shows the
    difference)."""
    if params is None:
        return "gelu"
    dump = params.model_dump() if hasattr(params, "model_dump") else {"kind": params}
    plain = REGISTRY.get("activation", dump["kind"]).params().model_dump()
    return HF_ACT.get(dump["kind"], "gelu") if dump == plain else "gelu"


def sizes(cfg, name: str) -> dict:
    """The spec's name and sizes, from any of the families' configs."""
    return dict(
        name=name,
        vocab_size=cfg.vocab_size,
        d_model=cfg.hidden_size,
        n_layers=cfg.num_hidden_layers,
        n_heads=cfg.num_attention_heads,
        d_ff=cfg.intermediate_size,
    )


def bench_shape(width: int, d_ff: int, layers: int, heads: int, **extra) -> dict:
    """Config kwargs of one ``bertsmith bench`` size."""
    return dict(
        hidden_size=width,
        intermediate_size=d_ff,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        **extra,
    )


class Keys:
    """A key map being built: (our key, transformers keys) pairs. Several transformers keys
    are concatenated along dim 0 into one of ours::

        encoder.layers.0.attn.qkv.weight [3D, D] = cat(query.weight, key.weight, value.weight)

    Keys are relative to the base model; head keys to the masked-LM model (prefix ``@``).
    ``a|b`` names alternatives: the first found is read, every one the class has is written.
    """

    def __init__(self, spec):
        self.spec = spec
        self.pairs: list[tuple[str, list[str]]] = []

    def add(self, ours: str, *theirs: str) -> None:
        self.pairs.append((ours, list(theirs)))

    def linear(self, ours: str, theirs: list[str], bias: bool) -> None:
        self.add(f"{ours}.weight", *(f"{t}.weight" for t in theirs))
        if bias:
            self.add(f"{ours}.bias", *(f"{t}.bias" for t in theirs))

    def norm(self, ours: str, theirs: str) -> None:
        for k in ["weight"] + (["bias"] if self.spec.bias.norm else []):
            self.add(f"{ours}.{k}", f"{theirs}.{k}")

    def head_transform(self, dense: str, norm: str) -> None:
        """The MLM head's dense + norm, under the head model's names."""
        self.linear("head.dense", [f"@{dense}"], self.spec.bias.head)
        self.norm("head.norm", f"@{norm}")


class Family:
    """One transformers family. A subclass sets the names and fills in ``spec_data``,
    ``config`` and ``key_map``; the rest has defaults most families keep."""

    model_type: str  # config.json's model_type
    title: str  # how messages and the model card name the family
    class_prefix: str  # transformers' {prefix}Config, {prefix}Model, {prefix}ForMaskedLM
    base_prefix: str  # the base model's weights inside a head model ("bert.")
    pretraining_class: str | None = None  # the class holding MLM + NSP heads, if any
    older_names: tuple[tuple[str, str], ...] = ()  # (name, older name) in weight keys
    bench_shapes: dict[str, dict] | None = None  # ``bertsmith bench`` sizes (config kwargs)
    bench_long = False  # whether the bench's 4096-token case applies

    def config_class(self):
        import transformers

        return getattr(transformers, f"{self.class_prefix}Config")

    def architecture(self, spec) -> str:
        """The class for ``spec``: ``*ForMaskedLM`` with an MLM head, the pre-training class
        with MLM + NSP heads, ``*Model`` otherwise (a head that no class of the family carries
        then shows up as a difference)."""
        head = spec.head.kind if spec.head is not None else None
        if head == "mlm":
            return f"{self.class_prefix}ForMaskedLM"
        if head == "nsp" and self.pretraining_class:
            return self.pretraining_class
        return f"{self.class_prefix}Model"

    def spec_data(self, cfg, name: str, head: str | None) -> dict:
        """The spec fields a transformers config of this family means (``SpecError`` lines
        for what no spec can say); ``head`` is the head kind its architecture carries."""
        raise NotImplementedError

    def config(self, spec, specials: dict[str, int]) -> dict:
        """The family's own config keys for ``spec`` (``hf_config`` adds the common ones)."""
        raise NotImplementedError

    def legacy_config(self, spec) -> dict:
        """Keys older transformers versions read, written beside the current ones."""
        return {}

    def key_map(self, spec, legacy: bool = True) -> list[tuple[str, list[str]]]:
        """(our key, transformers keys) for every weight (see ``Keys``)."""
        raise NotImplementedError

    def refusals(self, spec) -> list[str]:
        """What the family cannot hold that its config, read back, would not show."""
        return []

    def notes(self, arch: str, training: list[str]) -> list[str]:
        """The model card's notes on an export as ``arch``; ``training`` are the notes on
        what only training sees (dropout, init, kernel)."""
        return training

    def bench_config(self, shape: dict, window: int):
        """The transformers config ``bertsmith bench`` builds at ``shape``."""
        raise NotImplementedError

    def hf_config(self, spec, specials: dict[str, int] | None = None) -> dict:
        """The transformers ``config.json`` for ``spec`` (complete, not a diff from the class
        defaults). Where the spec has something the family cannot say, the family's own value
        is written: ``export.family_differences`` finds the difference when it reads it back."""
        head = spec.head
        tied = bool(head.tied) if head is not None and hasattr(head, "tied") else True
        common = dict(
            architectures=[self.architecture(spec)],
            vocab_size=spec.vocab_size,
            hidden_size=spec.d_model,
            num_hidden_layers=spec.n_layers,
            num_attention_heads=spec.n_heads,
            intermediate_size=spec.d_ff,
            initializer_range=spec.init.std,
            pad_token_id=spec.pad_token_id,
            tie_word_embeddings=tied,
            dtype="float32",
        )
        config = self.config_class()(**common, **self.config(spec, specials or {})).to_dict()
        config["architectures"] = common["architectures"]
        config.update(self.legacy_config(spec))
        return config

    def token_ids(self, spec, specials: dict[str, int], **roles: str) -> dict:
        """``<name>_token_id`` from the tokenizer's special tokens (role -> id); without a
        tokenizer, the class default when it lies inside the vocabulary, else None."""
        defaults = self.config_class()()
        out = {}
        for name, role in roles.items():
            key, default = f"{name}_token_id", getattr(defaults, f"{name}_token_id", None)
            fits = isinstance(default, int) and default < spec.vocab_size
            out[key] = specials[role] if role in specials else default if fits else None
        return out

    def older_name(self, key: str) -> str:
        """``key`` as older checkpoints of the family spell it."""
        for name, older in self.older_names:
            key = key.replace(name, older)
        return key


@contextmanager
def quiet_transformers():
    """transformers' messages and progress bars off (while a config is read or an export checked)."""
    from transformers.utils import logging as hf_logging

    level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()
