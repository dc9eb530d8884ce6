"""``bertsmith import-hf``: a transformers directory as a bertsmith model directory.

``import_hf(hf_dir, out_dir)`` reads a BERT, RoBERTa, ModernBERT or DeBERTa-v2/v3 directory
(base model or masked-LM, ``config.json`` + safetensors or a ``weights_only`` torch file),
writes a bertsmith model directory, and never runs code from the directory (no
``trust_remote_code``; the config class is chosen from ``model_type`` among the ones we know).

What each family's config means and where its weights sit is the family's module
(``FAMILIES``); this one reads the files and loads the weights through the family's key map.
"""

from __future__ import annotations

from pathlib import Path

import torch

from bertsmith.registry import weights
from bertsmith.registry.builder import build_meta
from bertsmith.registry.errors import SpecError, shown
from bertsmith.registry.jsonfile import read_json, regular_file
from bertsmith.registry.spec import parse_spec
from bertsmith.train.interop import FAMILIES
from bertsmith.train.interop.family import quiet_transformers


def _config(hf_dir: Path):
    """(model_type, the transformers config, the raw JSON) of ``hf_dir``; the config class is
    the family's, chosen from ``model_type`` (nothing in the directory is run). The JSON is read
    strictly and every value must have the type of the class's default (an integer where an
    integer belongs: not ``true``, not ``768.0``) before transformers sees it."""
    path = hf_dir / "config.json"
    if not path.exists():
        raise SpecError(
            f"import-hf: given {str(hf_dir)!r}, allowed: a transformers directory with config.json"
        )
    raw = read_json(path)
    family = raw.get("model_type")
    if not isinstance(family, str) or family not in FAMILIES:  # a list is no key
        raise SpecError(f"config.json model_type: given {shown(family)}, allowed: {', '.join(FAMILIES)}")
    config_class = FAMILIES[family].config_class()
    _check_types(raw, config_class().to_dict(), path)
    try:
        with quiet_transformers():  # its warnings would come before the error line
            return family, config_class.from_dict(raw), raw
    except Exception as e:  # transformers' own checks of untrusted data raise many types
        why = " ".join(str(e).split())[:160] or type(e).__name__
        raise SpecError(
            f"config.json: given {str(path)!r}, allowed: a valid {config_class.__name__} ({why})"
        ) from None


_TYPES = (  # (type of the default, what a value must be, its name) — bool before int
    (bool, (bool,), "true or false"),
    (int, (int,), "an integer"),
    (float, (int, float), "a number"),
    (str, (str,), "a string"),
    (dict, (dict,), "an object"),
    (list, (list,), "an array"),
)


def _check_types(raw: dict, defaults: dict, path: Path) -> None:
    """Every value of ``raw`` has the JSON type of the config class's default for its key
    (``null`` allowed for token ids); keys without a default pass to transformers as they are."""
    for key, value in raw.items():
        default = defaults.get(key)
        if default is None or (value is None and key.endswith("token_id")):
            continue
        for kind, allowed, name in _TYPES:
            if isinstance(default, kind):
                if not isinstance(value, allowed) or (kind is not bool and isinstance(value, bool)):
                    raise SpecError(
                        f"config.json {key}: given {shown(value)}, allowed: {name} ({str(path)!r})"
                    )
                break
    arch = raw.get("architectures")
    if arch is not None and not (isinstance(arch, list) and all(isinstance(a, str) for a in arch)):
        raise SpecError(f"config.json architectures: given {shown(arch)}, allowed: a list of class names")


def _head_kind(raw: dict) -> str | None:
    arch = (raw.get("architectures") or [""])[0]
    if arch.endswith("ForMaskedLM"):
        return "mlm"
    if arch.endswith("ForPreTraining"):
        return "nsp"
    return None


def spec_from_config(family: str, cfg, raw: dict, name: str = "imported") -> object:
    """The ``EncoderSpec`` equal to a transformers config."""
    data = FAMILIES[family].spec_data(cfg, name, _head_kind(raw))
    return parse_spec(data, prefix="config.json:")


class Weights:
    """The tensors of a transformers directory, by name: safetensors (single or sharded; only
    headers are read until ``get``) or a ``pytorch_model.bin`` loaded with ``weights_only=True``
    (never unpickles code)."""

    def __init__(self, hf_dir: Path):
        self.files = sorted(hf_dir.glob("*.safetensors"))
        self.loaded: dict[str, torch.Tensor] = {}
        self.where: dict[str, Path] = {}
        self.header: dict[str, tuple[str, tuple[int, ...]]] = {}
        for f in self.files:
            for k, v in weights.header(f).items():
                self.header[k], self.where[k] = v, f
        if self.files:
            return
        binary = hf_dir / "pytorch_model.bin"
        if not binary.exists():
            raise SpecError(
                f"import-hf: given {str(hf_dir)!r}, allowed: a directory with *.safetensors or pytorch_model.bin"
            )
        regular_file(binary, "pytorch_model.bin")
        try:
            self.loaded = torch.load(binary, map_location="cpu", weights_only=True)
        except Exception as e:  # an unpicklable (code-carrying) or damaged file is refused, not run
            raise SpecError(
                f"import-hf: given {str(binary)!r}, allowed: a weights-only checkpoint ({e.__class__.__name__})"
            ) from None
        if not isinstance(self.loaded, dict) or not all(
            isinstance(t, torch.Tensor) for t in self.loaded.values()
        ):
            raise SpecError(
                f"import-hf: given {str(binary)!r}, allowed: a checkpoint holding a dict of tensors"
            )
        self.header = weights.described(self.loaded.items())

    def get(self, name: str) -> torch.Tensor:
        if name not in self.loaded:
            from safetensors import safe_open

            with safe_open(str(self.where[name]), framework="pt") as f:
                self.loaded[name] = f.get_tensor(name)
        return self.loaded[name]


def _lookup(found: dict, key: str, family) -> str | None:
    """The name under which a transformers key is stored, whether the checkpoint is a base
    model or a head model, under its name or the family's older one."""
    if "|" in key:  # alternatives, first found wins
        return next((k for alt in key.split("|") if (k := _lookup(found, alt, family)) is not None), None)
    head_key = key.startswith("@")
    key = key.lstrip("@")
    candidates = [key] if head_key else [key, family.base_prefix + key]
    for k in candidates:
        if k in found:
            return k
        older = family.older_name(k)
        if older in found:
            return older
    return None


def _joined(parts: list[tuple[str, tuple[int, ...]]]) -> tuple[str, tuple]:
    """(dtype, shape) of parts concatenated along dim 0 (a fused q/k/v); parts of different
    widths or dtypes give a shape or dtype that fits nothing, shown in the error."""
    dtypes = {d for d, _ in parts}
    shapes = [s for _, s in parts]
    dtype = dtypes.pop() if len(dtypes) == 1 else "mixed"
    if len(shapes) == 1:
        return dtype, shapes[0]
    if any(len(s) == 0 for s in shapes) or len({s[1:] for s in shapes}) != 1:
        return dtype, tuple(shapes)
    return dtype, (sum(s[0] for s in shapes), *shapes[0][1:])


FLAG = "import-hf --out"  # how a refused output names itself (registry.outputs.check_target)


def _load(hf_dir: Path, family: str, spec, legacy: bool):
    """The model ``spec`` describes with the directory's weights, their names, shapes and dtypes
    checked against the spec on the meta device, and the model's size against free memory,
    before any tensor is read or the model allocated; non-finite weights are refused."""
    from bertsmith import registry

    found = Weights(hf_dir)
    plan, missing = {}, []
    for ours, theirs in FAMILIES[family].key_map(spec, legacy=legacy):
        names = [_lookup(found.header, t, FAMILIES[family]) for t in theirs]
        if any(n is None for n in names):
            missing.append(theirs[0].lstrip("@"))
        else:
            plan[ours] = names
    if missing:
        raise SpecError(
            f"import-hf: weights missing from {str(hf_dir)!r}: {', '.join(missing[:4])}"
            f"{' ...' if len(missing) > 4 else ''}"
        )
    given = f"import-hf: given {str(hf_dir)!r}"
    shapes = {ours: _joined([found.header[n] for n in names]) for ours, names in plan.items()}
    weights.check_fit(shapes, build_meta(spec), given)
    model = registry.build(spec, init=False)
    state = {}
    for ours, names in plan.items():
        parts = [found.get(n) for n in names]
        weights.check_finite(zip(names, parts, strict=True), given)
        state[ours] = torch.cat(parts, 0) if len(parts) > 1 else parts[0]
    model.load_state_dict(state, strict=False)  # check_fit found every tensor (tied ones once)
    return model


def import_hf(hf_dir: str | Path, out_dir: str | Path | None, name: str | None = None, force: bool = False):
    """Convert a transformers directory into a bertsmith model directory (none written when
    ``out_dir`` is None); returns the model. ``out_dir`` is checked before anything is read: an
    existing non-empty one is refused unless ``force``, and it appears whole or not at all."""
    from bertsmith import registry
    from bertsmith.registry.outputs import check_target, new_dir

    if out_dir is not None:
        check_target(Path(out_dir), FLAG, force)
    hf_dir = Path(hf_dir)
    family, cfg, raw = _config(hf_dir)
    spec = spec_from_config(family, cfg, raw, name=name or hf_dir.name or "imported")
    registry.check(spec, build_meta=False)
    model = _load(hf_dir, family, spec, legacy=getattr(cfg, "legacy", True))
    if out_dir is not None:
        tok = hf_dir / "tokenizer.json"  # a link or a special file is refused, not copied
        with new_dir(out_dir, FLAG, force) as tmp:
            registry.save(model, tmp, tokenizer=tok if tok.exists() or tok.is_symlink() else None)
    return model
