"""``bertsmith export``: a run or model directory as a reusable recipe or a transformers directory.

    export_recipe(src, out)   spec.yaml -> a standalone recipe YAML (every slot and size
                              stated); composing it gives the same spec
    export_hf(src, out)       a transformers directory: config.json, model.safetensors,
                              tokenizer files, README.md (model card)

``export_hf`` writes the native transformers class when the spec *is* one (``hf_family``):
BERT, RoBERTa, DeBERTa-v2/v3 or ModernBERT. Exactness is decided by the importer itself: the
config we would write is read back with ``train.interop.hf.spec_from_config``, and the spec it gives
must equal ours in everything that decides weights and outputs (name, kernel, init and
dropouts only matter for training; they are noted in the card). Weights go through the
family's ``key_map`` inverted, and must be exactly the keys the transformers class expects
(tied weights left out). Every other composition gets a remote-code export
(``train.interop.remote``): bertsmith's own block sources in one ``modeling_bertsmith.py``.

Before anything is moved into place, the export is loaded back (the transformers class, or
the generated file executed in-process) and compared with our model on a right-padded batch;
a mismatch is a bug and raises. Output appears atomically: everything is written into a
temporary directory next to ``out`` and renamed at the end, so a refused or failed export
leaves nothing behind.
"""

from __future__ import annotations

import copy
import json
import os
import sys
import tempfile
import types
from dataclasses import dataclass, field
from pathlib import Path

import torch

from bertsmith import registry
from bertsmith.registry.core import REGISTRY, SLOT_KEYS
from bertsmith.registry.errors import SpecError
from bertsmith.registry.io import read_tokenizer, spec_to_yaml
from bertsmith.registry.outputs import check_target, new_dir, new_file
from bertsmith.registry.spec import spec_dict
from bertsmith.train.interop import FAMILIES, remote
from bertsmith.train.interop.card import model_card
from bertsmith.train.interop.family import quiet_transformers
from bertsmith.train.interop.hf import spec_from_config
from bertsmith.train.sources import Source, finished_model, model_or_run

TOLERANCE = 1e-4  # export-time self-check, relative to the output scale; tests hold 1e-5 absolute


FLAG = "export --out"  # how the refusals of an existing output name it (registry.io.check_target)


# --- recipe ------------------------------------------------------------------------------------


def recipe_text(spec, origin: str) -> str:
    """A standalone recipe: every slot (``kind`` first) and size stated. Its defaults list
    only names each slot's block, ``_self_`` first, so that command-line slot swaps
    (``model/positional=alibi``) and ``pretrain=bert`` (which swaps the head) apply to it as
    to a family recipe; the values below need nothing from it."""
    groups = []
    for slot, key in SLOT_KEYS.items():
        node = spec
        for part in key.split("."):
            node = getattr(node, part, None)
        if node is not None and node.kind in REGISTRY.entries[slot]:
            groups.append(f"  - {slot}: {node.kind}\n")
    return (
        f"# {spec.name}: exported by `bertsmith export` from {origin}\n"
        "# Every slot and size is stated: use it as `bertsmith train model=<this file>`, with\n"
        "# `bertsmith inspect <this file>`, or copy it into recipes/model/. The defaults list only\n"
        "# names each slot's block; _self_ comes first so that a slot swapped on the command line\n"
        "# (model/positional=alibi) replaces the block stated here.\n"
        "defaults:\n  - _self_\n" + "".join(groups) + "\n" + spec_to_yaml(spec)
    )


def export_recipe(src: str | os.PathLike, out: str | os.PathLike, force: bool = False):
    """Write the spec of ``src`` as a recipe file ``out``; returns the spec. The file is
    composed back before it is moved into place, and must give the identical spec; an
    existing ``out`` is replaced only with ``force``."""
    out = Path(out).expanduser()
    check_target(out, FLAG, force, directory=False)
    if out.suffix not in (".yaml", ".yml"):
        raise SpecError(f"{FLAG}: given {str(out)!r}, allowed: a path ending in .yaml")
    source = model_or_run(src)
    spec = registry.load_spec(source.spec_path)
    text = recipe_text(spec, str(source.path))
    with tempfile.TemporaryDirectory(prefix="bertsmith-export-") as tmp:
        probe = Path(tmp) / out.name
        probe.write_text(text, encoding="utf-8")
        again = registry.compose(str(probe))
    if again != spec:
        raise RuntimeError(f"export: the recipe composes to a different spec than {source.spec_path}")
    new_file(out, lambda p: p.write_text(text, encoding="utf-8"), FLAG, force)
    return spec


# --- is the spec a transformers class? -----------------------------------------------------------


def _essence(spec) -> dict:
    """What decides a model's weights and outputs: the spec without its name, kernel, init
    and dropouts, with the attention pattern as the per-layer plan and defaults filled in."""
    data = spec_dict(spec)
    for key in ("name", "kernel", "init", "dropout"):
        data.pop(key)
    plan = registry.layer_plan(spec)
    data["attention"] = ",".join("global" if w is None else f"local{w}" for w in plan)
    p = data["positional"]
    if p["kind"] == "rope":
        p["dim"] = p["dim"] or spec.d_model // spec.n_heads
        p["local_theta"] = p["local_theta"] or p["theta"]
        if all(w is None for w in plan):
            p.pop("local_theta")
    if p["kind"] == "disentangled":
        p.pop("dropout")
        p["pos_att_type"] = sorted(p["pos_att_type"])
        p["max_relative_positions"] = p["max_relative_positions"] or spec.max_seq_len
    if data["head"] is not None:
        data["head"].pop("sparse", None)
    return data


def _short(value) -> str:
    """An entry as its name (``'gelu'``), with its settings when it has any (``relu(power=2)``)."""
    if not isinstance(value, dict) or "kind" not in value:
        return repr(value)
    rest = {k: v for k, v in value.items() if k != "kind"}
    if not rest:
        return repr(value["kind"])
    return f"{value['kind']}({', '.join(f'{k}={v!r}' for k, v in rest.items())})"


def _differences(ours: dict, theirs: dict, who: str) -> list[str]:
    """One line per differing key; a slot of another kind (or absent) is one line."""
    lines = []
    for key in [*ours, *(k for k in theirs if k not in ours)]:
        a, b = ours.get(key), theirs.get(key)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict) and a.get("kind") == b.get("kind"):
            for sub in [*a, *(k for k in b if k not in a)]:
                if a.get(sub) != b.get(sub):
                    lines.append(f"{key}.{sub} is {_short(a.get(sub))}, {who} has {_short(b.get(sub))}")
        else:  # another entry: its name says enough
            name = lambda v: repr(v["kind"]) if isinstance(v, dict) and "kind" in v else _short(v)  # noqa: E731
            lines.append(f"{key} is {name(a)}, {who} has {name(b)}")
    return lines


def family_differences(family: str, spec) -> list[str]:
    """Why ``spec`` is not exactly ``family`` (empty if it is): what the family refuses, and
    how the spec its config reads back as differs from ``spec``."""
    fam = FAMILIES[family]
    who = fam.title
    out = fam.refusals(spec)
    config = fam.hf_config(spec)
    try:
        back = spec_from_config(
            family, fam.config_class().from_dict(copy.deepcopy(config)), config, name=spec.name
        )
    except SpecError as e:
        return out + [line.removeprefix("config.json").lstrip(": ") for line in e.lines]
    except (ValueError, TypeError) as e:  # the config class itself refuses the values
        return out + [f"{who}'s config refuses it ({' '.join(str(e).split())[:200]})"]
    return out + _differences(_essence(spec), _essence(back), who)


def hf_family(spec) -> tuple[str | None, str]:
    """(family, "") when ``spec`` is exactly a transformers architecture (by config and by
    weight layout; the weight check needs the class, see ``native_export``), else
    (None, why): the closest family and how the spec differs from it."""
    best: tuple[str, list[str]] | None = None
    for family in FAMILIES:
        diffs = family_differences(family, spec)
        if not diffs:
            return family, ""
        if best is None or len(diffs) < len(best[1]):
            best = (family, diffs)
    family, diffs = best
    more = f" (+{len(diffs) - 3} more)" if len(diffs) > 3 else ""
    return None, f"closest is {FAMILIES[family].title}: {'; '.join(diffs[:3])}{more}"


# --- what goes into the directory -------------------------------------------------------------


@dataclass
class Export:
    """An export planned in memory: the files, and how to check them once written."""

    kind: str  # "native" | "remote"
    arch: str
    family: str | None
    reason: str
    config: dict
    tensors: dict[str, torch.Tensor]
    modeling: str | None = None
    notes: list[str] = field(default_factory=list)


def _tied_targets(model) -> set[str]:
    getter = getattr(model, "get_expanded_tied_weights_keys", None)
    if getter is not None:
        return set(getter(all_submodels=True))
    return set(getattr(model, "_tied_weights_keys", None) or ())


def hf_weights(family: str, spec, state: dict, expected: set[str]) -> dict[str, torch.Tensor]:
    """Our weights under transformers' names: ``key_map`` inverted. A key built from several
    of theirs is split along dim 0; ``@`` keys are relative to the head model; of
    alternatives ``a|b`` every one the class expects is written (else the first)."""
    prefix = FAMILIES[family].base_prefix if spec.head is not None else ""
    out: dict[str, torch.Tensor] = {}
    for ours, theirs in FAMILIES[family].key_map(spec, legacy=True):
        tensor = state[ours]
        if tensor.shape[0] % len(theirs):
            raise RuntimeError(f"export: {ours} {tuple(tensor.shape)} does not split into {len(theirs)}")
        parts = tensor.chunk(len(theirs), 0) if len(theirs) > 1 else (tensor,)
        for name, part in zip(theirs, parts, strict=True):
            keys = [k[1:] if k.startswith("@") else prefix + k for k in name.split("|")]
            for key in [k for k in keys if k in expected] or keys[:1]:
                out[key] = part.detach().clone().contiguous()
    return out


def native_export(family: str, model, specials: dict[str, int]) -> Export | str:
    """The native files for ``model`` as ``family``, or why the weights do not fit the class."""
    import transformers

    spec, fam = model.spec, FAMILIES[family]
    config = fam.hf_config(spec, specials)
    arch = config["architectures"][0]
    try:
        with torch.device("meta"):
            skeleton = getattr(transformers, arch)(fam.config_class().from_dict(copy.deepcopy(config)))
    except Exception as e:  # transformers cannot build it, so it is not this class
        return f"transformers could not build {arch} ({' '.join(str(e).split())[:200]})"
    expected = set(skeleton.state_dict()) - _tied_targets(skeleton)
    tensors = hf_weights(family, spec, model.state_dict(), expected)
    missing, extra = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
    if missing or extra:

        def some(keys: list[str]) -> str:
            return ", ".join(keys[:3]) + (" ..." if len(keys) > 3 else "")

        what = [f"{arch} has {some(missing)}, which this model lacks"] if missing else []
        what += [f"this model has {some(extra)}, which {arch} has no place for"] if extra else []
        return "; ".join(what)
    back = spec_from_config(
        family, fam.config_class().from_dict(copy.deepcopy(config)), config, name=spec.name
    )
    notes = fam.notes(arch, _training_notes(spec, back, fam.title))
    return Export("native", arch, family, "", config, tensors, notes=notes)


def _training_notes(spec, back, who: str) -> list[str]:
    """What the transformers config holds differently from the spec without changing outputs."""
    notes = []
    for part in ("dropout", "init"):
        ours, theirs = spec_dict(spec)[part], spec_dict(back)[part]
        if ours != theirs:
            notes.append(
                f"{part}: the spec has {json.dumps(ours)}; {who}'s config holds {json.dumps(theirs)} "
                "(training only: outputs in eval mode are the same)."
            )
    if spec.kernel.kind != "sdpa":
        notes.append(f"kernel: transformers runs its own attention, not bertsmith's {spec.kernel.kind!r}.")
    return notes


def remote_export(model, reason: str) -> Export:
    """Config, weights and modeling file of a remote-code export (``SpecError`` naming the
    slot that cannot be copied)."""
    spec = model.spec
    source = remote.modeling_source(spec)
    arch, auto_map = remote.classes(spec)
    head = spec.head
    config = {
        "architectures": [arch],
        "auto_map": auto_map,
        "model_type": "bertsmith",
        "bertsmith_spec": spec_dict(spec),
        "vocab_size": spec.vocab_size,
        "hidden_size": spec.d_model,
        "num_hidden_layers": spec.n_layers,
        "num_attention_heads": spec.n_heads,
        "intermediate_size": spec.d_ff,
        "max_position_embeddings": spec.max_seq_len,
        "initializer_range": spec.init.std,
        "pad_token_id": spec.pad_token_id,
        "tie_word_embeddings": bool(getattr(head, "tied", False)),
        "dtype": "float32",
    }
    if head is not None and head.kind == "classification":
        config["num_labels"] = head.num_labels
        config["id2label"] = {str(i): f"LABEL_{i}" for i in range(head.num_labels)}
        config["label2id"] = {f"LABEL_{i}": i for i in range(head.num_labels)}
    tensors = {}
    for key, tensor in model.state_dict().items():
        if key == "head.decoder.weight" and getattr(head, "tied", False):
            continue  # tied to the token embedding: stored once, as transformers expects
        name = f"bertsmith.{key}" if head is not None and key.startswith("encoder.") else key
        tensors[name] = tensor.detach().clone().contiguous()
    return Export("remote", arch, None, reason, config, tensors, modeling=source)


def read_remote_export(directory: str | os.PathLike):
    """The bertsmith model in a remote-code export (``init_from`` accepts them). Nothing from
    the directory is executed: the spec in ``config.json`` is validated like any recipe and
    the weights come through safetensors."""
    from bertsmith.registry.io import load_checked
    from bertsmith.registry.jsonfile import read_json

    d = Path(directory)
    data = read_json(d / "config.json").get("bertsmith_spec")
    if not isinstance(data, dict):
        raise SpecError(f"init_from: given {str(d)!r}, allowed: a bertsmith remote-code export")
    spec = registry.parse_spec(data, prefix="config.json bertsmith_spec.")
    registry.check(spec, build_meta=False)
    path = d / "model.safetensors"
    return load_checked(
        spec, path, f"model.safetensors: given {str(path)!r}", rename=lambda k: k.removeprefix("bertsmith.")
    )


def plan_hf(model, force_remote: bool = False, specials: dict[str, int] | None = None) -> Export:
    """Native class when the spec is one and its weights fit, else remote code."""
    family, reason = (None, "") if force_remote else hf_family(model.spec)
    if family is not None:
        native = native_export(family, model, specials or {})
        if isinstance(native, Export):
            return native
        reason = f"{FAMILIES[family].title}'s weights do not fit: {native}"
    return remote_export(model, reason)


# --- tokenizer ---------------------------------------------------------------------------------

SPECIAL_TOKENS = {  # role -> the names bertsmith's tokenizers (and BERT's, RoBERTa's) use
    "cls": ("[CLS]", "<s>", "<cls>"),
    "sep": ("[SEP]", "</s>", "<sep>"),
    "pad": ("[PAD]", "<pad>"),
    "unk": ("[UNK]", "<unk>"),
    "mask": ("[MASK]", "<mask>"),
}


def tokenizer_specials(model_dir: Path | None) -> tuple[dict[str, str], dict[str, int]] | None:
    """The special tokens of ``model_dir/tokenizer.json`` as (role -> token, role -> id), or
    None without a tokenizer. Roles the vocabulary has no token for are left out."""
    path = None if model_dir is None else model_dir / "tokenizer.json"
    if path is None or not (path.exists() or path.is_symlink()):
        return None
    vocab = read_tokenizer(path)[1].get_vocab()  # a regular file that parses, links followed
    tokens = {r: next((t for t in names if t in vocab), None) for r, names in SPECIAL_TOKENS.items()}
    tokens = {r: t for r, t in tokens.items() if t is not None}
    return tokens, {r: vocab[t] for r, t in tokens.items()}


def check_pad(spec, ids: dict[str, int]) -> None:
    """The tokenizer's pad id (``tokenizer_specials``' ids) is the spec's, or one line."""
    if "pad" in ids and ids["pad"] != spec.pad_token_id:
        raise SpecError(
            f"tokenizer.json: pad token id {ids['pad']}, but the spec's pad_token_id is "
            f"{spec.pad_token_id}; allowed: the same id"
        )


def tokenizer_config(spec, tokens: dict[str, str]) -> dict:
    """``tokenizer_config.json``: the generic fast tokenizer over ``tokenizer.json``, with the
    special tokens named so ``AutoTokenizer`` (and the fill-mask pipeline) find them."""
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **{f"{role}_token": token for role, token in tokens.items()},
        "model_max_length": spec.max_seq_len,
        "padding_side": "right",
        "model_input_names": [
            "input_ids",
            *(["token_type_ids"] if spec.type_vocab_size else []),
            "attention_mask",
        ],
        "clean_up_tokenization_spaces": False,
    }
    if tokens.get("cls") == "<s>":
        config.update(bos_token=tokens["cls"], eos_token=tokens["sep"])
    return config


# --- writing and checking ---------------------------------------------------------------------


def _probe(spec) -> tuple[torch.Tensor, torch.Tensor]:
    """A right-padded batch of two sequences that never uses the pad id inside a sequence,
    long enough to reach past local windows and DeBERTa's log buckets."""
    far = [w for w in registry.layer_plan(spec) if w] + [getattr(spec.positional, "position_buckets", 0) // 2]
    L = min(spec.max_seq_len, 16 + max(far))
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, spec.vocab_size - 1, (2, L), generator=g)
    ids = ids + (ids >= spec.pad_token_id).long()
    mask = torch.ones_like(ids)
    mask[1, max(1, L - 5) :] = 0
    return ids.masked_fill(mask == 0, spec.pad_token_id), mask


def _load_remote_module(directory: Path) -> types.ModuleType:
    """Execute the generated modeling file in-process (as transformers would import it)."""
    name = f"bertsmith_export_check_{os.getpid()}_{id(directory)}"
    module = types.ModuleType(name)
    module.__file__ = str(directory / remote.FILE)
    sys.modules[name] = module  # dataclasses resolve annotations through sys.modules
    try:
        code = compile((directory / remote.FILE).read_text(encoding="utf-8"), module.__file__, "exec")
        exec(code, module.__dict__)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def check_export(directory: Path, plan: Export, model) -> dict[str, float]:
    """Load the written export and compare its outputs with ``model``'s on a padded batch.
    Returns the max abs differences at real tokens; raises on any missing or unexpected
    weight or a difference beyond ``TOLERANCE`` (a bug in the export)."""
    import transformers

    module = None
    if plan.kind == "native":
        cls = getattr(transformers, plan.arch)
    else:
        module = _load_remote_module(directory)
        cls = getattr(module, plan.arch)
    try:
        with quiet_transformers():
            theirs, info = cls.from_pretrained(str(directory), output_loading_info=True)
        theirs.eval()
        bad = {k: sorted(v) for k, v in info.items() if k in ("missing_keys", "unexpected_keys") and v}
        if bad:
            raise RuntimeError(f"export: {plan.arch} loads with {bad}")
        ids, mask = _probe(model.spec)
        with torch.no_grad():
            ours = model(ids, mask)
            out = theirs(input_ids=ids, attention_mask=mask)
            if plan.kind == "native":
                base = getattr(theirs, theirs.base_model_prefix, theirs)
                hidden = base(input_ids=ids, attention_mask=mask).last_hidden_state
                logits = getattr(out, "prediction_logits", None)
                logits = getattr(out, "logits", None) if logits is None else logits
                nsp = getattr(out, "seq_relationship_logits", None)
            else:
                hidden, logits, nsp = (
                    out.last_hidden_state,
                    getattr(out, "logits", None),
                    getattr(out, "nsp_logits", None),
                )
        real = mask.bool()
        pairs = {"last_hidden_state": (ours.last_hidden_state[real], hidden[real])}
        if ours.logits is not None:
            per_token = ours.logits.dim() == 3
            pairs["logits"] = (ours.logits[real], logits[real]) if per_token else (ours.logits, logits)
        if ours.nsp_logits is not None:
            pairs["nsp_logits"] = (ours.nsp_logits, nsp)
        diffs = {}
        for key, (a, b) in pairs.items():
            if b is None or a.shape != b.shape:
                raise RuntimeError(f"export: {plan.arch} gives no {key} of shape {tuple(a.shape)}")
            diffs[key] = (a.double() - b.double()).abs().max().item()
            if diffs[key] > TOLERANCE * max(1.0, a.abs().max().item()):
                raise RuntimeError(
                    f"export: {plan.arch}'s {key} differs from bertsmith's by {diffs[key]:.3g}"
                )
        return diffs
    finally:
        if module is not None:
            sys.modules.pop(module.__name__, None)


def write_files(directory: Path, plan: Export, model, source: Source, tokens: dict[str, str] | None) -> None:
    from safetensors.torch import save_file

    (directory / "config.json").write_text(json.dumps(plan.config, indent=2, sort_keys=True) + "\n")
    save_file(plan.tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
    if plan.modeling is not None:
        (directory / remote.FILE).write_text(plan.modeling, encoding="utf-8")
    if tokens is not None:
        (directory / "tokenizer.json").write_bytes(read_tokenizer(source.model_dir / "tokenizer.json")[0])
        config = tokenizer_config(model.spec, tokens)
        (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (directory / "README.md").write_text(
        model_card(model, plan, source, tokens is not None), encoding="utf-8"
    )


def export_hf(
    src: str | os.PathLike,
    out: str | os.PathLike,
    remote_code: bool = False,
    check: bool = True,
    force: bool = False,
) -> tuple[Export, dict[str, float]]:
    """Write ``src``'s model as a transformers directory ``out`` (see the module doc); an
    existing non-empty ``out`` is replaced only with ``force``, once the new one is complete.
    Returns the plan and the max output differences measured when loading it back."""
    out = Path(out).expanduser()
    check_target(out, FLAG, force)
    source = finished_model(src)
    model = registry.load(source.model_dir).eval()
    specials = tokenizer_specials(source.model_dir)
    tokens, ids = specials if specials is not None else ({}, {})
    check_pad(model.spec, ids)
    plan = plan_hf(model, force_remote=remote_code, specials=ids)  # SpecError here writes nothing
    with new_dir(out, FLAG, force) as tmp:
        write_files(tmp, plan, model, source, tokens if specials is not None else None)
        diffs = check_export(tmp, plan, model) if check else {}
    return plan, diffs
