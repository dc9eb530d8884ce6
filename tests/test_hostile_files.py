"""Hostile and broken files (issue 15): every file bertsmith reads is parsed with bounded work
and checked before anything is allocated. Each case: one error line, exit 2, within seconds,
nothing changed on disk."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from helpers import TINY_BERT
from safetensors.torch import save_file

from bertsmith import registry
from bertsmith.registry.errors import SpecError


def snapshot(d: Path) -> dict[str, str]:
    return {
        str(p.relative_to(d)): (hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir")
        for p in sorted(d.rglob("*"))
        if not p.is_fifo()
    }


def refused(capfd, *args: str) -> str:
    """The one error line of ``bertsmith *args``, which must exit 2 within seconds."""
    from bertsmith.train.cli import main

    start = time.monotonic()
    rc = main(list(args))
    out, err = capfd.readouterr()
    assert rc == 2, (rc, out, err)
    assert "Traceback" not in err and out == ""
    (line,) = err.splitlines()
    assert time.monotonic() - start < 30
    return line


@pytest.fixture(scope="module")
def hf_bert(tmp_path_factory) -> Path:
    from transformers import BertConfig, BertForMaskedLM

    d = tmp_path_factory.mktemp("hf") / "bert"
    torch.manual_seed(0)
    BertForMaskedLM(BertConfig(**TINY_BERT)).save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("model") / "m"
    registry.save(registry.build(registry.compose("bert-tiny", ["model.n_layers=1"])), d)
    return d


@pytest.fixture
def hf_copy(hf_bert, tmp_path) -> Path:
    d = tmp_path / "hf"
    shutil.copytree(hf_bert, d)
    return d


def _edit_config(d: Path, **changes) -> None:
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(changes)
    (d / "config.json").write_text(json.dumps(cfg))


# --- config.json: strict JSON, strict types ---------------------------------------------------


@pytest.mark.parametrize(
    "text, says",
    [
        ("[1, 2]", "holding a JSON array, allowed: a JSON object"),
        ('{"model_type": "bert", "model_type": "bert"}', "duplicate key 'model_type'"),
        ('{"model_type": "bert", "hidden_size": NaN}', "NaN is not a JSON number"),
        ('{"model_type": "bert", "x": ' + "[" * 100_000 + "]" * 100_000 + "}", "nested more than 32"),
        ('{"model_type": "bert",\n "hidden_size": }', "Expecting value at line 2 column 17"),
        ("\xff\xfe", "not UTF-8"),
    ],
    ids=["not-an-object", "duplicate-key", "nan", "deep", "syntax-line", "binary"],
)
def test_config_json_is_strict_json(hf_copy, tmp_path, capfd, text, says):
    path = hf_copy / "config.json"
    path.write_bytes(text.encode("utf-8", "surrogateescape") if text != "\xff\xfe" else b"\xff\xfe{}")
    before = snapshot(hf_copy)
    line = refused(capfd, "import-hf", str(hf_copy), "--out", str(tmp_path / "out"))
    assert line.startswith(f"error: config.json: given {str(path)!r}") and says in line, line
    assert snapshot(hf_copy) == before and not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "key, value, allowed",
    [
        ("hidden_size", True, "an integer"),
        ("hidden_size", 32.0, "an integer"),
        ("num_hidden_layers", "2", "an integer"),
        ("layer_norm_eps", False, "a number"),
        ("hidden_act", 3, "a string"),
        ("architectures", [3], "a list of class names"),
    ],
)
def test_config_json_values_have_the_types_of_the_config_class(hf_copy, tmp_path, capfd, key, value, allowed):
    _edit_config(hf_copy, **{key: value})
    line = refused(capfd, "import-hf", str(hf_copy), "--out", str(tmp_path / "out"))
    assert line.startswith(f"error: config.json {key}: given {value!r}, allowed: {allowed}"), line


@pytest.mark.parametrize("kind", ["directory", "fifo"])
def test_special_files_are_not_opened(hf_copy, tmp_path, capfd, kind):
    for name in ("config.json", "model.safetensors"):
        d = tmp_path / f"{kind}-{name}"
        shutil.copytree(hf_copy, d)
        (d / name).unlink()
        if kind == "directory":
            (d / name).mkdir()
        else:
            os.mkfifo(d / name)  # opening it for reading would block forever
        line = refused(capfd, "import-hf", str(d), "--out", str(tmp_path / "out"))
        assert f"{name}: given {str(d / name)!r}, allowed: a regular file, not" in line, line


# --- safetensors: header validated, shapes checked before allocation ---------------------------


def _damaged(data: bytes, how: str) -> bytes:
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8 : 8 + n])
    if how == "empty":
        return b""
    if how == "truncated":
        return data[: len(data) // 2]
    if how == "huge-header-length":
        return struct.pack("<Q", 2**40) + data[8:]
    name = next(k for k in header if k != "__metadata__")
    if how == "lying-shape":
        header[name]["shape"] = [10**6, 10**6]
    elif how == "offsets-past-end":
        header[name]["data_offsets"] = [0, 2**40]
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data[8 + n :]


HOW = ["empty", "truncated", "huge-header-length", "lying-shape", "offsets-past-end"]


@pytest.mark.parametrize("how", HOW)
def test_damaged_safetensors_is_one_line_for_import(hf_copy, tmp_path, capfd, how):
    path = hf_copy / "model.safetensors"
    path.write_bytes(_damaged(path.read_bytes(), how))
    before = snapshot(hf_copy)
    line = refused(capfd, "import-hf", str(hf_copy), "--out", str(tmp_path / "out"))
    assert line.startswith(f"error: model.safetensors: given {str(path)!r}, allowed: a safetensors file ("), (
        line
    )
    assert snapshot(hf_copy) == before and not (tmp_path / "out").exists()


@pytest.mark.parametrize("how", HOW)
def test_damaged_safetensors_is_one_line_for_load(model_dir, tmp_path, capfd, how):
    d = tmp_path / "m"
    shutil.copytree(model_dir, d)
    path = d / "model.safetensors"
    path.write_bytes(_damaged(path.read_bytes(), how))
    with pytest.raises(SpecError, match=r"^model.safetensors: given .*, allowed: a safetensors file \("):
        registry.load(d)
    line = refused(capfd, "export", str(d), "--to", "hf", "--out", str(tmp_path / "out"))
    assert "allowed: a safetensors file (" in line, line


def test_weights_of_the_wrong_shape_or_dtype_are_named(hf_copy, model_dir, tmp_path, capfd):
    from safetensors.torch import load_file

    path = hf_copy / "model.safetensors"
    state = load_file(path)
    state["bert.embeddings.word_embeddings.weight"] = torch.zeros(5, 32)
    save_file(state, path)
    line = refused(capfd, "import-hf", str(hf_copy), "--out", str(tmp_path / "out"))
    assert (
        "allowed: weights that fit the spec (encoder.embeddings.tok.weight is (5, 32), spec wants (89, 32))"
        in line
    )

    d = tmp_path / "m"
    shutil.copytree(model_dir, d)
    state = load_file(d / "model.safetensors")
    key = next(iter(state))
    state[key] = torch.zeros(state[key].shape, dtype=torch.int64)
    save_file(state, d / "model.safetensors")
    with pytest.raises(SpecError, match=f"{key} is I64, allowed: a float type"):
        registry.load(d)


def test_non_finite_weights_are_refused_naming_the_tensor(hf_copy, model_dir, tmp_path, capfd):
    from safetensors.torch import load_file

    path = hf_copy / "model.safetensors"
    state = load_file(path)
    state["bert.encoder.layer.1.output.dense.bias"][3] = float("nan")
    save_file(state, path)
    line = refused(capfd, "import-hf", str(hf_copy), "--out", str(tmp_path / "out"))
    assert line.endswith(
        "where bert.encoder.layer.1.output.dense.bias holds inf or nan, allowed: finite weights"
    )

    d = tmp_path / "m"
    shutil.copytree(model_dir, d)
    state = load_file(d / "model.safetensors")
    key = (
        "encoder.layers.0.mlp.fc_out.weight"
        if "encoder.layers.0.mlp.fc_out.weight" in state
        else next(iter(state))
    )
    state[key].view(-1)[0] = float("inf")
    save_file(state, d / "model.safetensors")
    with pytest.raises(SpecError, match=f"where {key} holds inf or nan"):
        registry.load(d)


# --- a config at the size limits with tiny weights: refused before any allocation ---------------

_UNDER_LIMIT = textwrap.dedent(
    """
    import resource, sys
    limit = 3 * 2**30
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    from bertsmith.train.cli import main
    sys.exit(main(sys.argv[1:]))
    """
)


@pytest.mark.parametrize(
    "layers, says",
    [(1024, "weights missing from"), (2, "allowed: weights that fit the spec (")],
)
def test_size_limit_config_with_tiny_weights_under_3gb(hf_copy, tmp_path, layers, says):
    _edit_config(
        hf_copy,
        hidden_size=65536,
        num_attention_heads=512,
        num_hidden_layers=layers,
        intermediate_size=2**20,
        vocab_size=2**22,
    )
    before = snapshot(hf_copy)
    start = time.monotonic()
    ran = subprocess.run(
        [sys.executable, "-c", _UNDER_LIMIT, "import-hf", str(hf_copy), "--out", str(tmp_path / "out")],
        env={**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ran.returncode == 2, ran.stderr[-2000:]
    (line,) = ran.stderr.splitlines()
    assert says in line, line
    assert time.monotonic() - start < 120
    assert snapshot(hf_copy) == before and not (tmp_path / "out").exists()


def test_size_limit_spec_yaml_is_refused_before_building(model_dir, tmp_path, capfd):
    d = tmp_path / "m"
    shutil.copytree(model_dir, d)
    text = (d / "spec.yaml").read_text()
    (d / "spec.yaml").write_text(
        text.replace("n_layers: 1\n", "n_layers: 1024\n").replace("d_ff: 1024", "d_ff: 1048576")
    )
    assert (d / "spec.yaml").read_text() != text
    with pytest.raises(SpecError, match="allowed: weights that fit the spec"):
        registry.load(d)  # the header is compared with the spec on the meta device
    with pytest.raises(SpecError, match=r"^model: building .* needs \d+\.\d GiB for its weights alone"):
        registry.build(
            registry.load_spec(d / "spec.yaml").model_copy(
                update={"vocab_size": 2**22, "d_model": 65536, "n_heads": 256}
            )
        )


@pytest.mark.parametrize("value", ["true", "128.0", "'128'"])
def test_block_params_in_spec_yaml_are_strict(model_dir, tmp_path, value):
    d = tmp_path / "m"
    shutil.copytree(model_dir, d)
    text = (d / "spec.yaml").read_text()
    assert "attention:\n  kind: global\n" in text
    (d / "spec.yaml").write_text(
        text.replace("attention:\n  kind: global\n", f"attention:\n  kind: local\n  window: {value}\n")
    )
    with pytest.raises(SpecError, match=r"^spec.attention.window: given .*, allowed: a valid integer$"):
        registry.load(d)


def test_resume_from_a_checkpoint_of_another_model_is_one_line(tmp_path, cache):
    from helpers import TINY_TRAIN, bertsmith

    run = tmp_path / "run"
    args = ["train", "model=bert-tiny", "model.n_layers=1", *TINY_TRAIN, f"hydra.run.dir={run}"]
    first = bertsmith(*args, "trainer.max_steps=2", cache=cache)
    assert first.returncode == 0, first.stderr[-2000:]
    ckpt = run / "checkpoints" / "last.ckpt"
    state = torch.load(ckpt, weights_only=True)
    key = next(k for k in state["state_dict"] if k.endswith("qkv.weight"))
    state["state_dict"][key] = state["state_dict"][key][:-3]  # another model's layer
    torch.save(state, ckpt)
    shutil.rmtree(run / "model")  # as if the run had been stopped before its end
    (run / "summary.json").unlink()
    before = snapshot(run)
    again = bertsmith(*args, "trainer.max_steps=2", "resume=true", cache=cache)
    assert again.returncode == 2, again.stderr[-2000:]
    assert "Traceback" not in again.stderr
    (line,) = again.stderr.splitlines()
    assert line.startswith(
        f"error: checkpoint: given {str(ckpt)!r}, allowed: weights that fit the spec ({key} is "
    )
    kept = lambda snap: {k: v for k, v in snap.items() if k.startswith(("checkpoints", "metrics"))}  # noqa: E731
    assert kept(snapshot(run)) == kept(before)  # (config.yaml and .hydra/ record the new call)


HOSTILE_FILES = ["tests/test_hostile_files.py", "tests/test_overwrite.py", "tests/test_finetune_inputs.py"]


def test_readme_count_is_the_collected_count():
    """README's "(N tests)" after the hostile-file test files is what pytest collects in them."""
    from helpers import ROOT

    ran = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "--collect-only",
            "-q",
            "-p",
            "no:xdist",
            "-p",
            "no:cacheprovider",
            *HOSTILE_FILES,
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    counts = dict(line.rsplit(": ", 1) for line in ran.stdout.splitlines() if line.startswith("tests/"))
    assert set(counts) == set(HOSTILE_FILES), ran.stdout[-2000:]
    readme = " ".join((ROOT / "README.md").read_text().split())
    said = re.search(r"`tests/test_finetune_inputs.py` \((\d+) tests\)", readme)
    assert said, "README no longer states the hostile-file test count"
    assert int(said[1]) == sum(int(n) for n in counts.values())
