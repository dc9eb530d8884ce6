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

from bertsmith.registry.errors import SpecError
from bertsmith.registry.spec import parse_spec, spec_dict
from bertsmith.registry.yamlfile import strict_load


def atomic_write(path: Path, write) -> None:
    """Call ``write(tmp_path)`` then rename the result onto ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; the result should look like any file
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def spec_to_yaml(spec) -> str:
    return yaml.safe_dump(spec_dict(spec), sort_keys=False)


def spec_file_text(spec) -> str:
    """``spec.yaml``: the spec, plus ``plugins:`` (spec key -> module) when a block comes from
    a plugin, so whoever loads the model knows what to install."""
    from bertsmith.registry.plugins import plugin_sources

    data = spec_dict(spec)
    if sources := plugin_sources(spec):
        data["plugins"] = sources
    return yaml.safe_dump(data, sort_keys=False)


def save(model: nn.Module, directory: str | os.PathLike, tokenizer: str | os.PathLike | None = None) -> Path:
    """Write ``model`` (built by ``registry.builder``) to ``directory``."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "spec.yaml", lambda p: p.write_text(spec_file_text(model.spec)))
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
        data = strict_load(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, RecursionError):
        raise SpecError(f"spec: given {str(path)!r}, allowed: a valid YAML spec") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        why = (getattr(e, "problem", None) or "parse error") + (f" at line {mark.line + 1}" if mark else "")
        raise SpecError(f"spec: given {str(path)!r}, allowed: a valid YAML spec ({why})") from None
    from bertsmith.registry.ladder import check
    from bertsmith.registry.plugins import load_plugins, missing_plugin_lines

    load_plugins()
    recorded = data.pop("plugins", None) if isinstance(data, dict) else None
    if lines := missing_plugin_lines(data, recorded, prefix="spec."):
        raise SpecError(lines)
    spec = parse_spec(data, prefix="spec.")
    check(spec, build_meta=False)
    return spec


def load(directory: str | os.PathLike) -> nn.Module:
    """Build the model described by ``directory/spec.yaml`` and load its weights."""
    from bertsmith.registry.builder import build

    d = Path(directory)
    spec = load_spec(d / "spec.yaml")
    weights = d / "model.safetensors"
    if not weights.is_file():
        raise SpecError(f"model: given {str(d)!r}, allowed: a model directory with model.safetensors")
    model = build(spec, init=False)
    _check_fit(model, weights)
    load_model(model, str(weights), strict=True)
    return model


def _check_fit(model: nn.Module, weights: Path) -> None:
    """Refuse, in one line, weights whose names or shapes differ from the spec's model."""
    from safetensors import safe_open

    with safe_open(str(weights), framework="pt") as f:
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    state = model.state_dict()
    expected = {k: tuple(v.shape) for k, v in state.items()}
    aliases: dict[int, list[str]] = {}  # tied weights are stored once, under one of their names
    for k, v in state.items():
        aliases.setdefault(v.data_ptr(), []).append(k)
    bad = [k for k in shapes if k in expected and shapes[k] != expected[k]]
    unexpected = [k for k in shapes if k not in expected]
    missing = [k for k in expected if not any(a in shapes for a in aliases[state[k].data_ptr()])]
    if bad or unexpected or missing:
        what = [f"{k} is {shapes[k]}, spec wants {expected[k]}" for k in bad[:2]]
        what += [f"unexpected {k}" for k in unexpected[:2]] + [f"missing {k}" for k in missing[:2]]
        raise SpecError(f"model.safetensors: given weights that do not fit spec.yaml ({'; '.join(what)})")
