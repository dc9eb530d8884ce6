"""``bertsmith import-hf``: a transformers directory as a bertsmith model directory.

``import_hf(hf_dir, out_dir)`` reads a BERT, RoBERTa, ModernBERT or DeBERTa-v2/v3 directory
(base model or masked-LM, ``config.json`` + safetensors or a ``weights_only`` torch file),
writes a bertsmith model directory, and never runs code from the directory (no
``trust_remote_code``; the config class is chosen from ``model_type`` among the ones we know).

What each family's config means and where its weights sit is the family's module
(``FAMILIES``); this one reads the files and loads the weights through the family's key map.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from bertsmith.registry.errors import SpecError
from bertsmith.registry.spec import parse_spec
from bertsmith.train.interop import FAMILIES


def _config(hf_dir: Path):
    """(model_type, the transformers config, the raw JSON) of ``hf_dir``; the config class is
    the family's, chosen from ``model_type`` (nothing in the directory is run)."""
    path = hf_dir / "config.json"
    if not path.is_file():
        raise SpecError(
            f"import-hf: given {str(hf_dir)!r}, allowed: a transformers directory with config.json"
        )
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise SpecError(f"import-hf: given {str(path)!r}, allowed: a JSON config") from None
    family = raw.get("model_type")
    if not isinstance(family, str) or family not in FAMILIES:  # a list is no key
        raise SpecError(f"config.json model_type: given {family!r}, allowed: {', '.join(FAMILIES)}")
    return family, FAMILIES[family].config_class().from_json_file(str(path)), raw


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


def read_weights(hf_dir: Path) -> dict[str, torch.Tensor]:
    """All tensors of a transformers directory: safetensors (single or sharded) or a
    ``pytorch_model.bin`` loaded with ``weights_only=True`` (never unpickles code)."""
    from safetensors.torch import load_file

    files = sorted(hf_dir.glob("*.safetensors"))
    if files:
        out: dict[str, torch.Tensor] = {}
        for f in files:
            out.update(load_file(str(f)))
        return out
    binary = hf_dir / "pytorch_model.bin"
    if binary.is_file():
        try:
            return torch.load(binary, map_location="cpu", weights_only=True)
        except Exception as e:  # an unpicklable (code-carrying) file is refused, not run
            raise SpecError(
                f"import-hf: given {str(binary)!r}, allowed: a weights-only checkpoint ({e.__class__.__name__})"
            ) from None
    raise SpecError(
        f"import-hf: given {str(hf_dir)!r}, allowed: a directory with *.safetensors or pytorch_model.bin"
    )


def _lookup(weights: dict, key: str, family) -> torch.Tensor | None:
    """Find a transformers key whether the checkpoint is a base model or a head model, under
    its name or the family's older one."""
    if "|" in key:  # alternatives, first found wins
        return next((t for alt in key.split("|") if (t := _lookup(weights, alt, family)) is not None), None)
    head_key = key.startswith("@")
    key = key.lstrip("@")
    candidates = [key] if head_key else [key, family.base_prefix + key]
    for k in candidates:
        if k in weights:
            return weights[k]
        older = family.older_name(k)
        if older in weights:
            return weights[older]
    return None


def import_hf(hf_dir: str | Path, out_dir: str | Path | None, name: str | None = None):
    """Convert a transformers directory into a bertsmith model directory (none written when
    ``out_dir`` is None); returns the model."""
    from bertsmith import registry

    hf_dir = Path(hf_dir)
    family, cfg, raw = _config(hf_dir)
    spec = spec_from_config(family, cfg, raw, name=name or hf_dir.name or "imported")
    registry.check(spec, build_meta=False)
    weights = read_weights(hf_dir)
    model = registry.build(spec, init=False)
    state = {}
    missing = []
    for ours, theirs in FAMILIES[family].key_map(spec, legacy=getattr(cfg, "legacy", True)):
        parts = [_lookup(weights, t, FAMILIES[family]) for t in theirs]
        if any(p is None for p in parts):
            missing.append(theirs[0].lstrip("@"))
            continue
        state[ours] = torch.cat(parts, 0) if len(parts) > 1 else parts[0]
    if missing:
        raise SpecError(
            f"import-hf: weights missing from {str(hf_dir)!r}: {', '.join(missing[:4])}"
            f"{' ...' if len(missing) > 4 else ''}"
        )
    result = model.load_state_dict(state, strict=False)
    expected_missing = {"head.decoder.weight"} if spec.head is not None and spec.head.tied else set()
    if set(result.missing_keys) - expected_missing:
        raise SpecError(
            f"import-hf: spec and weights disagree: {sorted(set(result.missing_keys) - expected_missing)[:4]}"
        )
    if out_dir is not None:
        tok = hf_dir / "tokenizer.json"
        registry.save(model, out_dir, tokenizer=tok if tok.is_file() else None)
    return model
