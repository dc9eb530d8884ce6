"""The ``bertsmith`` commands: blocks, inspect (counts, FLOPs, plan, fit notes), --help."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction
from pathlib import Path

import pytest
from helpers import run_main

from bertsmith import (
    blocks,  # noqa: F401  (fills REGISTRY, which this module reads at import)
    registry,
)
from bertsmith.registry import REGISTRY
from bertsmith.registry.spec import spec_dict
from bertsmith.train.cli import parser
from bertsmith.train.commands.model import _plain

SCRIPT = Path(sys.executable).with_name("bertsmith")
ENTRIES = [(e.slot, e.name) for e in REGISTRY]


def _subcommands() -> list[str]:
    (sub,) = [a for a in parser()._actions if a.dest == "command"]
    names = list(sub.choices)
    if importlib.util.find_spec("bertsmith.train.pretrain.app") is not None:
        names.append("train")  # dispatched to the Hydra app before argparse
    return names


COMMANDS = _subcommands()

NOTES_RECIPE = """\
defaults:
  - positional: rope
  - _self_
name: odd-sizes
vocab_size: 1024
d_model: 96
n_layers: 2
n_heads: 2
d_ff: 256
"""

INVOCATIONS = {
    "blocks": ["blocks"],
    "blocks-json": ["blocks", "--json"],
    "inspect-modernbert": ["inspect", "modernbert-base", "--json"],
    "inspect-modernbert-300": ["inspect", "modernbert-base", "--seq-len", "300", "--json"],
    "inspect-notes": ["inspect", "{tmp}/odd.yaml"],
    "help": ["--help"],
    **{f"help-{c}": [c, "--help"] for c in COMMANDS},
}


SUBPROCESS = {"help"}  # through the real console script; the rest in-process (same output)


def _run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    (cwd / "odd.yaml").write_text(NOTES_RECIPE)
    argv = [a.replace("{tmp}", str(cwd)) for a in argv]
    return subprocess.run([str(SCRIPT), *argv], cwd=cwd, capture_output=True, text=True, timeout=300)


def _run_here(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """The same, with ``main(argv)`` in this process (``helpers.run_main``)."""
    (cwd / "odd.yaml").write_text(NOTES_RECIPE)
    argv = [a.replace("{tmp}", str(cwd)) for a in argv]
    r = run_main(*argv)
    return subprocess.CompletedProcess(argv, r.returncode, r.stdout, r.stderr)


@pytest.fixture(scope="module")
def cli(tmp_path_factory):
    """Every invocation this module needs: the console script's started up front (in
    parallel with the rest), the others run in this process."""
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        futures = {
            k: pool.submit(_run, argv, tmp_path_factory.mktemp(k))
            for k, argv in INVOCATIONS.items()
            if k in SUBPROCESS
        }
        here = {
            k: _run_here(argv, tmp_path_factory.mktemp(k))
            for k, argv in INVOCATIONS.items()
            if k not in SUBPROCESS
        }

        def get(key: str) -> subprocess.CompletedProcess:
            p = futures[key].result() if key in futures else here[key]
            assert "Traceback" not in p.stdout + p.stderr
            assert p.returncode == 0, p.stderr
            return p

        yield get


# --- blocks ----------------------------------------------------------------------------------


def _parse_blocks(text: str) -> dict[tuple[str, str], dict[str, str]]:
    """The text listing as {(slot, name): {"doc": ..., "params": ..., "needs": ...}}."""
    rows: dict[tuple[str, str], dict[str, str]] = {}
    slot = current = None
    for line in text.splitlines():
        if not line.strip():
            continue
        if line.startswith("keys "):  # the spec's keys outside the blocks close the listing
            break
        if not line.startswith(" "):
            slot = line.strip()
            continue
        body = line[2:]
        if body.startswith(" "):  # continuation: params / needs
            field, _, value = body.strip().partition(": ")
            rows[current][field] = value
        else:
            name, _, doc = body.partition(" ")
            current = (slot, name)
            rows[current] = {"doc": doc.strip()}
    return rows


def test_blocks_lists_every_entry_with_params_and_doc(cli):
    rows = _parse_blocks(cli("blocks").stdout)
    assert list(rows) == ENTRIES
    for (slot, name), row in rows.items():
        entry = REGISTRY.get(slot, name)
        assert row["doc"] == entry.doc
        defaults = {k: _plain(v) for k, v in entry.defaults().items()}
        if defaults:
            assert row["params"] == ", ".join(f"{k}={v!r}" for k, v in defaults.items())
        else:
            assert "params" not in row
        assert ("needs" in row) == bool(entry.requires)
        assert ("from" in row) == (entry.source != "bertsmith")
        for param in defaults:  # each param's meaning on its own line
            assert row[param].strip(), (slot, name, param)
    assert "theta=10000.0" in rows[("positional", "rope")]["params"]
    assert rows[("attention", "local")]["params"] == "window=128"
    assert rows[("attention", "alternating")]["params"] == "window=128, global_every=3"
    assert rows[("positional", "alibi")]["needs"] == "kernel with alibi or bias"


def test_blocks_json_has_one_row_per_entry(cli):
    rows = json.loads(cli("blocks-json").stdout)
    assert [(r["slot"], r["name"]) for r in rows] == ENTRIES
    for r in rows:
        entry = REGISTRY.get(r["slot"], r["name"])
        # through JSON as plain data (a tuple default reads back as a list)
        assert {k: v["default"] for k, v in r["params"].items()} == json.loads(
            json.dumps({k: _plain(v) for k, v in entry.defaults().items()})
        )
        assert r["doc"] == entry.doc
        assert r["source"] == entry.source
        assert all(p["doc"] for p in r["params"].values())
        assert r["provides"] == sorted(entry.provides)
        assert [q["slot"] for q in r["requires"]] == [q.slot for q in entry.requires]
    by = {(r["slot"], r["name"]): r for r in rows}
    theta = by[("positional", "rope")]["params"]["theta"]
    assert {k: theta[k] for k in ("default", "type")} == {"default": 10000.0, "type": "float"}
    assert by[("attention", "local")]["params"]["window"]["default"] == 128
    assert by[("norm", "layernorm")]["params"]["skip_first"]["default"] is False


def test_blocks_lists_the_spec_keys_with_their_meaning(cli):
    text = cli("blocks").stdout
    keys = text[text.index("\nkeys ") :].splitlines()[2:]
    listed = {line.split()[0]: line.split(None, 1)[1] for line in keys if line.strip()}
    for key in ("d_model", "d_ff", "n_heads", "bias.qkv", "dropout.attention", "mlp.activation", "placement"):
        assert listed.get(key), key


@pytest.mark.parametrize("slot, name", ENTRIES, ids=[f"{s}={n}" for s, n in ENTRIES])
def test_every_entry_has_a_one_sentence_doc(slot, name):
    """``blocks`` shows the docstring's first line: it must be a whole sentence."""
    doc = REGISTRY.get(slot, name).doc
    assert doc and "\n" not in doc
    assert doc.endswith((".", ".)")), f"{slot}/{name}: first docstring line is cut mid-sentence: {doc!r}"


# --- inspect ---------------------------------------------------------------------------------

# ModernBERT-base, written out here so the expected numbers do not come from the library.
MB = dict(D=768, F=1152, V=50368, layers=22, window=128, global_every=3)


def keys_seen(L: int, window: int | None) -> Fraction:
    """Average over query positions of the keys a query sees (window w: ±w//2, inclusive)."""
    if window is None:
        return Fraction(L)
    h = window // 2
    return Fraction(sum(min(i, h) + min(L - 1 - i, h) + 1 for i in range(L)), L)


def modernbert_base_flops(L: int) -> tuple[int, Fraction]:
    """(linear, attention) forward FLOPs per token of ModernBERT-base's layers."""
    D, F = MB["D"], MB["F"]
    macs = D * 3 * D + D * D + D * 2 * F + F * D  # Wqkv, Wo, GLU Wi (2F rows), MLP Wo
    linear = 2 * macs * MB["layers"]
    windows = [None if i % MB["global_every"] == 0 else MB["window"] for i in range(MB["layers"])]
    attention = sum(4 * D * keys_seen(L, w) for w in windows)
    return linear, attention


def _check_modernbert_report(report: dict, L: int) -> None:
    assert report["spec"] == spec_dict(registry.compose("modernbert-base"))
    p = report["params"]
    assert p["total"] == 149_014_272
    assert p["embedding"] == MB["V"] * MB["D"] + MB["D"]  # tokens + embedding norm (no bias)
    assert p["non_embedding"] == p["total"] - p["embedding"]
    assert report["plan"] == [
        {"layer": i, "attention": "global", "window": None}
        if i % 3 == 0
        else {"layer": i, "attention": "local", "window": 128}
        for i in range(22)
    ]
    f = report["flops_per_token"]
    linear, attention = modernbert_base_flops(L)
    assert f["seq_len"] == L
    assert f["linear"] == linear
    assert abs(f["attention"] - attention) <= 1
    assert abs(f["encoder"] - (linear + attention)) <= 1
    assert f["head"] == 2 * (MB["D"] * MB["D"] + MB["D"] * MB["V"])  # MLM dense + decoder
    assert report["notes"] == []  # every size a multiple of 64


def test_inspect_modernbert_base_json(cli):
    report = json.loads(cli("inspect-modernbert").stdout)
    _check_modernbert_report(report, 8192)  # default: max_seq_len


def test_inspect_flops_at_a_given_seq_len(cli):
    report = json.loads(cli("inspect-modernbert-300").stdout)
    _check_modernbert_report(report, 300)
    # by hand: 129 keys each, less 1..64 missing at either edge
    assert keys_seen(300, 128) == Fraction(300 * 129 - 2 * (64 * 65 // 2), 300)


@pytest.mark.parametrize("L", [1, 2, 63, 64, 65, 129, 200, 1000])
def test_flops_against_independent_count(L):
    """The same formula in-process over lengths around the window's edges."""
    c = registry.cost(registry.compose("modernbert-base"), seq_len=L)["flops_per_token"]
    linear, attention = modernbert_base_flops(L)
    assert (c["seq_len"], c["linear"]) == (L, linear)
    assert abs(c["attention"] - attention) <= 1
    if L <= 65:  # shorter than the half-window: a local layer sees every key
        assert attention == 4 * MB["D"] * MB["layers"] * L


def test_inspect_prints_hardware_fit_notes(cli):
    out = cli("inspect-notes").stdout
    notes = out.split("\nnotes\n", 1)
    assert len(notes) == 2, out
    lines = [line.strip() for line in notes[1].splitlines() if line.strip()]
    assert "- d_model=96 is not a multiple of 64 (GEMM tiles are wasted; next: 128)" in lines
    assert any(line.startswith("- head_dim=48 is not a multiple of 64") for line in lines)
    assert not any("vocab_size" in line or "d_ff" in line for line in lines)  # 1024 and 256 fit


def test_inspect_text_reports_the_counts(cli):
    out = cli("inspect-notes").stdout
    D, F, V = 96, 256, 1024  # rope, pre-LN with embedding and final norms, every bias on
    embedding = V * D + 2 * D
    layer = (3 * D * D + 3 * D) + (D * D + D) + (D * F + F) + (F * D + D) + 2 * (2 * D)
    total = embedding + 2 * layer + 2 * D
    assert f"  total          {total:>14,}" in out
    assert f"  embedding      {embedding:>14,}" in out
    assert f"  non_embedding  {total - embedding:>14,}" in out
    assert "layer plan  GG  (G global, L local window -)" in out


# --- --help on every command -------------------------------------------------------------------


def test_help_lists_the_commands(cli):
    out = cli("help").stdout
    assert out.startswith("usage: bertsmith")
    listed = [c for c in COMMANDS if f"\n    {c}" in out]
    assert listed == COMMANDS, f"bertsmith --help does not list {sorted(set(COMMANDS) - set(listed))}"


@pytest.mark.parametrize("command", COMMANDS)
def test_help_on_every_command(command, cli):
    p = cli(f"help-{command}")
    assert p.stdout.strip()
    if command != "train":  # train's help is Hydra's
        assert p.stdout.startswith(f"usage: bertsmith {command}")
