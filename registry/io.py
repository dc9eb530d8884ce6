"""Model directories: ``spec.yaml`` + ``model.safetensors`` (+ ``tokenizer.json``).

Writes are atomic (temporary file, then rename), so an interrupted save never leaves a
half-written file where a good one was. Loading never unpickles: weights come through
safetensors and ``spec.yaml`` is validated like any recipe.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import yaml
from safetensors.torch import save_model
from torch import nn

from bertsmith.registry import weights
from bertsmith.registry.errors import SpecError
from bertsmith.registry.jsonfile import regular_file
from bertsmith.registry.outputs import atomic_write
from bertsmith.registry.spec import parse_spec, spec_dict
from bertsmith.registry.yamlfile import read_yaml

# --- tokenizer files ------------------------------------------------------------------------------

TOKENIZER_MAX_BYTES = 2**30  # the largest tokenizer.json read (real ones are a few MiB)


def read_tokenizer(path: str | os.PathLike, key: str = "tokenizer.json"):
    """``(bytes, tokenizers.Tokenizer)`` of the tokenizer file at ``path``, checked first: a
    symbolic link is followed (and named in the error), only a regular file of at most
    ``TOKENIZER_MAX_BYTES`` is opened (a FIFO or device cannot hang the read), and it must parse
    as a tokenizer. Any failure is one ``SpecError`` line naming ``key`` and the file."""
    from tokenizers import Tokenizer

    p = Path(path)
    where = repr(str(p)) + (f" (a link to {os.path.realpath(p)!r})" if p.is_symlink() else "")
    try:
        regular_file(p, key, TOKENIZER_MAX_BYTES)
        fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK)  # swapped for a FIFO since stat: no hang
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise SpecError(f"{key}: given {where}, allowed: a regular file")
            data = f.read(TOKENIZER_MAX_BYTES + 1)
    except OSError as e:
        raise SpecError(
            f"{key}: given {where}, allowed: a readable tokenizer file ({e.strerror or e})"
        ) from None
    except SpecError as e:  # name the link's target too
        raise SpecError(e.lines[0].replace(repr(str(p)), where, 1)) from None
    if len(data) > TOKENIZER_MAX_BYTES:
        raise SpecError(f"{key}: given {where}, allowed: at most {TOKENIZER_MAX_BYTES:,} bytes")
    try:
        tokenizer = Tokenizer.from_str(data.decode("utf-8"))
    except Exception as e:  # tokenizers raises plain Exception on malformed files
        why = "not UTF-8" if isinstance(e, UnicodeDecodeError) else " ".join(str(e).split())[:100]
        raise SpecError(f"{key}: given {where}, allowed: a valid tokenizer.json ({why})") from None
    return data, tokenizer


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
    # checked (read_tokenizer: a link to an unrelated file, a FIFO, ... refused) before any write
    tok = None if tokenizer is None else read_tokenizer(tokenizer)[0]
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "spec.yaml", lambda p: p.write_text(spec_file_text(model.spec)))
    atomic_write(out / "model.safetensors", lambda p: save_model(model, str(p)))
    if tok is not None:
        atomic_write(out / "tokenizer.json", lambda p: p.write_bytes(tok))
    return out


def load_checked(spec, path: str | os.PathLike, given: str, rename=None) -> nn.Module:
    """The model ``spec`` describes with the weights of the safetensors file ``path`` (names
    passed through ``rename``). The header is checked against the spec on the meta device and
    the model's size against free memory before anything is allocated; non-finite weights are
    refused (``registry.weights``). Error lines start with ``given``."""
    from safetensors.torch import load_file

    from bertsmith.registry.builder import build, build_meta

    rename = rename or (lambda k: k)
    weights.check_fit({rename(k): v for k, v in weights.header(path).items()}, build_meta(spec), given)
    model = build(spec, init=False)
    state = {rename(k): v for k, v in load_file(str(path)).items()}
    weights.check_finite(state.items(), given)
    model.load_state_dict(state, strict=False)  # check_fit found every tensor (tied ones once)
    return model


def load_spec(path: str | os.PathLike):
    """Read and validate a ``spec.yaml`` (a tampered file is refused like a bad recipe)."""
    data = read_yaml(path, "spec")
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
    """Build the model described by ``directory/spec.yaml`` and load its weights. The weights'
    header is checked against the spec on the meta device, and the model's size against the
    free memory, before anything is allocated; non-finite weights are refused."""
    d = Path(directory)
    spec = load_spec(d / "spec.yaml")
    path = d / "model.safetensors"
    if not path.exists():
        raise SpecError(f"model: given {str(d)!r}, allowed: a model directory with model.safetensors")
    return load_checked(spec, path, f"model.safetensors: given {str(path)!r}")
