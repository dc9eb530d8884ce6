"""Model directories: ``spec.yaml`` + ``model.safetensors`` (+ ``tokenizer.json``).

Writes are atomic (temporary file, then rename), so an interrupted save never leaves a
half-written file where a good one was. Loading never unpickles: weights come through
safetensors and ``spec.yaml`` is validated like any recipe.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import yaml
from safetensors.torch import load_model, save_model
from torch import nn

from registry.errors import SpecError
from registry.spec import parse_spec, spec_dict


def atomic_write(path: Path, write) -> None:
    """Call ``write(tmp_path)`` then rename the result onto ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def spec_to_yaml(spec) -> str:
    return yaml.safe_dump(spec_dict(spec), sort_keys=False)


def save(model: nn.Module, directory: str | os.PathLike, tokenizer: str | os.PathLike | None = None) -> Path:
    """Write ``model`` (built by ``registry.builder``) to ``directory``."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "spec.yaml", lambda p: p.write_text(spec_to_yaml(model.spec)))
    atomic_write(out / "model.safetensors", lambda p: save_model(model, str(p)))
    if tokenizer is not None:
        atomic_write(out / "tokenizer.json", lambda p: shutil.copyfile(tokenizer, p))
    return out


def load_spec(path: str | os.PathLike):
    """Read and validate a ``spec.yaml`` (a tampered file is refused like a bad recipe)."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"spec: given {str(path)!r}, allowed: an existing spec.yaml")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError):
        raise SpecError(f"spec: given {str(path)!r}, allowed: a valid YAML spec") from None
    from registry.ladder import check

    spec = parse_spec(data, prefix="spec.")
    check(spec, build_meta=False)
    return spec


def load(directory: str | os.PathLike) -> nn.Module:
    """Build the model described by ``directory/spec.yaml`` and load its weights."""
    from registry.builder import build

    d = Path(directory)
    spec = load_spec(d / "spec.yaml")
    weights = d / "model.safetensors"
    if not weights.is_file():
        raise SpecError(f"model: given {str(d)!r}, allowed: a model directory with model.safetensors")
    model = build(spec, init=False)
    missing, unexpected = load_model(model, str(weights), strict=False)
    if missing or unexpected:
        raise SpecError(
            f"model.safetensors: given weights that do not fit spec.yaml "
            f"(missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})"
        )
    return model
