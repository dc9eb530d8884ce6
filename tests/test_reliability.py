"""Reliability and safety (issue #8): bad recipes, untrusted files, interrupted runs,
numerical and data faults, and resources never cost a user their work or run their code.

Counts are checkable: ``len(CASES)`` malformed recipes and overrides, each run through every
command it applies to (``COMMAND_RUNS`` invocations), and ``FAULTS`` faults survived.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml
from helpers import ROOT, TINY_TRAIN, bertsmith, kill_when

from bertsmith import registry
from bertsmith.registry.errors import SpecError
from bertsmith.train.callbacks import AtomicCheckpointIO, read_metrics

# --- 1. a corpus of malformed recipes and overrides ---------------------------------------------

BASE = {"vocab_size": 100, "d_model": 64, "n_layers": 2, "n_heads": 2, "d_ff": 128}


def recipe(**extra) -> str:
    """A small valid recipe file (rope, the rest default) plus ``extra`` keys, as YAML."""
    return yaml.safe_dump({"defaults": [{"positional": "rope"}, "_self_"], **BASE, **extra})


def _with_tag(tag: str) -> str:
    return recipe(name="X").replace("name: X", f"name: {tag}")


@dataclasses.dataclass(frozen=True)
class Bad:
    """One malformed input. ``recipe`` is a model recipe name or ``{rec}/FILE`` (written from
    ``files``); None runs only ``train`` on the default model. Every error line must start
    with ``error: KEY: `` (``keys``, in order) and ``says`` must appear in the error."""

    id: str
    recipe: str | None
    overrides: tuple[str, ...] = ()
    keys: tuple[str, ...] = ()
    says: tuple[str, ...] = ()
    files: tuple[tuple[str, str | bytes], ...] = ()
    commands: tuple[str, ...] = ("validate", "inspect", "train")
    train_keys: tuple[str, ...] | None = None  # where train reports it differently


TINY = "modernbert-tiny"
CASES = [
    # unknown blocks, slots, recipes and keys
    Bad(
        "unknown-block",
        TINY,
        ("model/positional=rop",),
        ("model/positional",),
        ("'rop'", "did you mean 'rope'?"),
    ),
    Bad("unknown-slot", TINY, ("model/postional=rope",), ("model/<slot>",), ("'postional'", "positional")),
    Bad("unknown-recipe", "modernbert-bsae", (), ("model",), ("did you mean 'modernbert-base'?",)),
    Bad(
        "unknown-key",
        TINY,
        ("model.d_modl=5",),
        ("model.d_modl",),
        ("unknown key", "did you mean 'd_model'?"),
    ),
    Bad(
        "unknown-block-param",
        TINY,
        ("model.positional.thetaa=1",),
        ("model.positional.thetaa",),
        ("unknown key for rope", "'theta'"),
    ),
    Bad(
        "param-of-another-block",
        "bert-tiny",
        ("model.attention.window=128",),
        ("model.attention.window",),
        ("unknown key for global",),
    ),
    Bad(
        "unknown-kind-as-value", TINY, ("model.kernel.kind=nope",), ("model.kernel.kind",), ("'nope'", "sdpa")
    ),
    # wrong types
    Bad("int-given-text", TINY, ("model.d_model=abc",), ("model.d_model",), ("'abc'", "integer")),
    Bad("int-given-bool", TINY, ("model.n_layers=true",), ("model.n_layers",), ("given True", "integer")),
    Bad("int-given-fraction", TINY, ("model.n_layers=2.5",), ("model.n_layers",), ("given 2.5", "integer")),
    Bad("int-given-list", TINY, ("model.d_model=[1,2]",), ("model.d_model",), ("[1, 2]", "integer")),
    Bad("int-given-mapping", TINY, ("model.n_layers={a:1}",), ("model.n_layers",), ("{'a': 1}", "integer")),
    Bad("bool-given-text", TINY, ("model.norm.final=maybe",), ("model.norm.final",), ("'maybe'", "boolean")),
    Bad(
        "slot-given-a-number",
        TINY,
        ("model.positional=5",),
        ("model.positional",),
        ("a mapping with 'kind'",),
    ),
    # impossible sizes
    Bad("heads-not-a-divisor", TINY, ("model.d_model=250",), ("model.n_heads",), ("given 4", "d_model=250")),
    Bad("zero-layers", TINY, ("model.n_layers=0",), ("model.n_layers",), ("given 0", "greater than 0")),
    Bad("negative-heads", TINY, ("model.n_heads=-2",), ("model.n_heads",), ("given -2", "greater than 0")),
    Bad("zero-vocab", TINY, ("model.vocab_size=0",), ("model.vocab_size",), ("given 0",)),
    Bad("zero-context", TINY, ("model.max_seq_len=0",), ("model.max_seq_len",), ("given 0",)),
    Bad(
        "pad-beyond-vocab",
        TINY,
        ("model.pad_token_id=100000",),
        ("model.pad_token_id",),
        ("below vocab_size",),
    ),
    Bad("negative-window", TINY, ("model.attention.window=-4",), ("model.attention.window",), ("given -4",)),
    Bad(
        "dropout-above-one",
        TINY,
        ("model.dropout.attention=1.5",),
        ("model.dropout.attention",),
        ("given 1.5", "less than 1"),
    ),
    Bad(
        "rope-dim-past-head",
        TINY,
        ("model.positional.dim=1024",),
        ("model.positional.dim",),
        ("at most the head dimension",),
    ),
    Bad("rope-dim-odd", TINY, ("model.positional.dim=3",), ("model.positional.dim",), ("even",)),
    # huge numbers
    Bad(
        "huge-width",
        TINY,
        ("model.d_model=" + "1" + "0" * 30,),
        ("model.d_model",),
        ("less than or equal to 65536",),
    ),
    Bad("huge-depth", TINY, ("model.n_layers=1000000000",), ("model.n_layers",), ("1000000000", "1024")),
    Bad("huge-vocab", TINY, ("model.vocab_size=100000000000000",), ("model.vocab_size",), ("4194304",)),
    Bad(
        "infinite-eps", TINY, ("model.norm.eps=1e400",), ("model.norm.eps",), ("given inf", "a finite number")
    ),
    Bad(
        "huge-name",
        TINY,
        ("model.name=" + "a" * 300,),
        ("model.name",),
        ("...(302 characters)", "at most 200 characters"),
    ),
    Bad("nan-eps", TINY, ("model.norm.eps=nan",), ("model.norm.eps",), ("given nan",)),
    # incompatible slot combinations
    Bad(
        "post-norm-skip-first",
        "bert-tiny",
        ("model.norm.skip_first=true",),
        ("model.norm.skip_first",),
        ("post",),
    ),
    Bad(
        "unknown-activation",
        TINY,
        ("model.mlp.activation=gleu",),
        ("model.mlp.activation.kind",),
        ("did you mean 'gelu'?",),
    ),
    Bad(
        "disentangled-needs-bias-kernel",
        "deberta-tiny",
        ("model/kernel=flash_attn",),
        ("model.kernel",),
        ("'disentangled' needs a kernel with bias", "allowed: eager, sdpa"),
        commands=("validate", "inspect"),
    ),
    Bad(
        "flex-without-cpu-backward",
        None,
        ("model/kernel=flex", "trainer.accelerator=cpu"),
        ("model.kernel",),
        ("'flex'", "backward pass on cpu"),
    ),
    Bad(
        "two-problems-two-lines",
        TINY,
        ("model.d_model=250", "model.pad_token_id=9999"),
        ("model.n_heads", "model.pad_token_id"),
    ),
    # unicode oddities
    Bad(
        "homoglyph-block",
        TINY,
        ("model/positional=r\u043epe",),
        ("model/positional",),
        ("r\\u043epe", "U+043E CYRILLIC SMALL LETTER O"),
    ),
    Bad(
        "homoglyph-key", TINY, ("model.d_m\u043edel=64",), ("override",), ("U+043E CYRILLIC SMALL LETTER O",)
    ),
    Bad("zero-width-space", TINY, ("model.d_model\u200b=64",), ("override",), ("U+200B ZERO WIDTH SPACE",)),
    Bad(
        "fullwidth-digits",
        TINY,
        ("model.d_model=\uff16\uff14",),
        ("override",),
        ("U+FF16 FULLWIDTH DIGIT SIX",),
    ),
    Bad(
        "rtl-override", TINY, ("model.name=abc\u202edef",), ("override",), ("U+202E RIGHT-TO-LEFT OVERRIDE",)
    ),
    Bad(
        "bad-override-syntax",
        TINY,
        ("d_model=5",),
        ("override",),
        ("'d_model=5'",),
        commands=("validate", "inspect"),
    ),
    # broken files
    Bad("empty-file", "{rec}/empty.yaml", (), ("model",), ("the file is empty",), (("empty.yaml", ""),)),
    Bad(
        "comments-only",
        "{rec}/c.yaml",
        (),
        ("model",),
        ("the file is empty",),
        (("c.yaml", "# nothing here\n\n"),),
    ),
    Bad("missing-file", "{rec}/nope.yaml", (), ("model",), ("nope.yaml", "an existing recipe file")),
    Bad(
        "broken-yaml",
        "{rec}/b.yaml",
        (),
        ("model",),
        ("valid YAML", "expected ',' or ']'", "line 3"),
        (("b.yaml", "d_model: 64\nn_layers: [2\n"),),
    ),
    Bad(
        "tab-indent",
        "{rec}/t.yaml",
        (),
        ("model",),
        ("valid YAML",),
        (("t.yaml", "norm:\n\tkind: rmsnorm\n"),),
    ),
    Bad(
        "yaml-list",
        "{rec}/l.yaml",
        (),
        ("model",),
        ("a YAML mapping, not a list",),
        (("l.yaml", "- d_model: 64\n"),),
    ),
    Bad(
        "yaml-scalar",
        "{rec}/s.yaml",
        (),
        ("model",),
        ("a YAML mapping, not a str",),
        (("s.yaml", "just some text\n"),),
    ),
    Bad("not-utf8", "{rec}/latin.yaml", (), ("model",), ("UTF-8",), (("latin.yaml", b"name: caf\xe9\n"),)),
    Bad(
        "duplicate-key",
        "{rec}/d.yaml",
        (),
        ("model",),
        ("duplicate key 'd_model'", f"line {recipe().count(chr(10)) + 1}"),
        (("d.yaml", recipe() + "d_model: 128\n"),),
    ),
    # defaults: recursive, self-referencing, unknown, malformed
    Bad(
        "defaults-self",
        "{rec}/loop.yaml",
        (),
        ("model",),
        ("'_file_loop'", "_self_ or a recipe"),
        (("loop.yaml", "defaults:\n  - _file_loop\n  - _self_\n"),),
    ),
    Bad(
        "defaults-unknown-recipe",
        "{rec}/r.yaml",
        (),
        ("model",),
        ("'modernbert-tyni'", "did you mean 'modernbert-tiny'?"),
        (("r.yaml", "defaults:\n  - modernbert-tyni\n  - _self_\n"),),
    ),
    Bad(
        "defaults-unknown-block",
        "{rec}/r.yaml",
        (),
        ("model",),
        ("positional 'rop'", "did you mean 'rope'?"),
        (("r.yaml", recipe().replace("positional: rope", "positional: rop")),),
    ),
    Bad(
        "defaults-not-a-list",
        "{rec}/r.yaml",
        (),
        ("model",),
        ("defaults is a str", "a list"),
        (("r.yaml", "defaults: modernbert-tiny\nd_model: 64\n"),),
    ),
    Bad(
        "defaults-retarget",
        "{rec}/r.yaml",
        (),
        ("model",),
        ("'/hydra/callbacks@_global_.hydra.callbacks'", "each optionally after 'override '"),
        (
            (
                "r.yaml",
                "defaults:\n  - modernbert-tiny\n  - /hydra/callbacks@_global_.hydra.callbacks: null\n  - _self_\n",
            ),
        ),
    ),
    Bad(
        "package-global",
        "{rec}/g.yaml",
        (),
        ("model",),
        ("'# @package _global_'", "no @package line"),
        (
            (
                "g.yaml",
                "# @package _global_\nhydra:\n  callbacks:\n    x:\n      _target_: os.system\n      _args_: ['touch pwned']\n",
            ),
        ),
    ),
    Bad(
        "interpolation-self",
        "{rec}/r.yaml",
        (),
        ("model",),
        ("interpolation",),
        (("r.yaml", recipe(name="${name}")),),
        train_keys=("model.name",),  # the key whose interpolation failed,
    ),
    Bad(
        "interpolation-cycle",
        "{rec}/r.yaml",
        (),
        ("model",),
        ("interpolation",),
        (
            (
                "r.yaml",
                recipe().replace("d_model: 64", "d_model: ${d_ff}").replace("d_ff: 128", "d_ff: ${d_model}"),
            ),
        ),
        train_keys=("model.d_ff",),  # the key whose interpolation failed,
    ),
    # _target_ injection at several depths, YAML tags, resolvers
    Bad(
        "target-top",
        "{rec}/r.yaml",
        (),
        ("model._target_",),
        ("'os.system'", "cannot name Python objects"),
        (("r.yaml", recipe(_target_="os.system")),),
    ),
    Bad(
        "target-slot",
        "{rec}/r.yaml",
        (),
        ("model.mlp._target_",),
        ("allowed: nothing",),
        (("r.yaml", recipe(mlp={"kind": "mlp", "_target_": "os.system", "_args_": ["touch pwned"]})),),
    ),
    Bad(
        "target-nested",
        "{rec}/r.yaml",
        (),
        ("model.bias.qkv._target_",),
        ("allowed: nothing",),
        (("r.yaml", recipe(bias={"qkv": {"_target_": "os.system"}})),),
    ),
    Bad(
        "target-in-list",
        "{rec}/r.yaml",
        (),
        ("model.name[0]._target_",),
        ("allowed: nothing",),
        (("r.yaml", recipe(name=[{"_target_": "os.system"}])),),
    ),
    Bad(
        "target-override",
        TINY,
        ("model.mlp._target_=os.system",),
        ("model.mlp._target_",),
        ("allowed: nothing",),
    ),
    Bad(
        "target-training-group",
        None,
        ("optim._target_=torch.optim.SGD",),
        ("optim._target_",),
        ("'torch.optim.SGD'", "allowed: nothing"),
    ),
    Bad(
        "target-deep-training-group",
        None,
        ("trainer.checkpoint._target_=os.system",),
        ("trainer.checkpoint._target_",),
        ("allowed: nothing",),
    ),
    Bad(
        "python-object-tag",
        "{rec}/r.yaml",
        (),
        ("model",),
        ("valid YAML", "python/object/apply:os.system"),
        (("r.yaml", _with_tag('!!python/object/apply:os.system ["touch pwned"]')),),
    ),
    Bad(
        "python-name-tag",
        "{rec}/r.yaml",
        (),
        ("model",),
        ("valid YAML", "python/name:os.system"),
        (("r.yaml", _with_tag("!!python/name:os.system ''")),),
    ),
    Bad(
        "eval-resolver",
        "{rec}/r.yaml",
        (),
        ("model",),
        ("interpolation", "eval"),
        (("r.yaml", recipe(name='${eval:\'__import__("os").system("touch pwned")\'}')),),
        train_keys=("model.name",),  # the key whose interpolation failed,
    ),
    Bad(
        "python-resolver-override",
        TINY,
        ("model.name=${python:os.getcwd}",),
        ("model",),
        ("interpolation", "python"),
        train_keys=("model.name",),  # the key whose interpolation failed,
    ),
    Bad(
        "missing-env",
        TINY,
        ("model.name=${oc.env:BERTSMITH_SURELY_UNSET_VAR}",),
        ("model",),
        ("BERTSMITH_SURELY_UNSET_VAR",),
        train_keys=("model.name",),  # the key whose interpolation failed,
    ),
    Bad(
        "env-into-int",
        TINY,
        ("model.d_model=${oc.env:BERTSMITH_TEST_SHELLISH}",),
        ("model.d_model",),
        ("'$(touch pwned)'", "integer"),
    ),
    # training groups (train only)
    Bad("unknown-group-choice", None, ("optim=adamx",), ("optim",), ("'adamx'", "adamw")),
    Bad(
        "unknown-training-key",
        None,
        ("trainer.max_stps=5",),
        ("trainer.max_stps",),
        ("did you mean 'max_steps'?",),
    ),
    Bad("unknown-top-key", None, ("lr=1",), ("lr",), ("unknown key",)),
    Bad(
        "training-wrong-type", None, ("trainer.max_steps=abc",), ("trainer.max_steps",), ("'abc'", "integer")
    ),
    Bad(
        "mask-ratio-above-one", None, ("objective.mask_ratio=1.5",), ("objective.mask_ratio",), ("given 1.5",)
    ),
    Bad(
        "seq-len-past-positions",
        None,
        ("pretrain=bert", "data.seq_len=1024"),
        ("data.seq_len",),
        ("given 1024", "max_seq_len"),
    ),
    Bad(
        "nsp-without-nsp-head",
        None,
        ("objective.nsp=true",),
        ("objective.nsp",),
        ("head provides next_sentence",),
    ),
    Bad(
        "skip-guard-negative",
        None,
        ("trainer.skip_nonfinite=-1",),
        ("trainer.skip_nonfinite",),
        ("given -1",),
    ),
    Bad(
        "data-path-missing",
        None,
        ("data=files", "data.path=/nonexistent/corpus"),
        ("data.path",),
        ("'/nonexistent/corpus'", "an existing file or folder"),
    ),
    Bad(
        "training-interpolation-cycle",
        None,
        ("trainer.max_steps=${trainer.max_steps}",),
        ("trainer.max_steps",),
        ("interpolation",),
    ),
]
COMMAND_RUNS = sum(len(c.commands) if c.recipe is not None else 1 for c in CASES)


def test_the_corpus_is_large_and_ids_are_unique():
    assert len(CASES) >= 40
    assert len({c.id for c in CASES}) == len(CASES)
    assert COMMAND_RUNS >= 120


def test_readme_counts_are_the_corpus_counts():
    """The README's "feeds N malformed recipes and overrides ... (M invocations" is this
    file's ``len(CASES)`` and ``COMMAND_RUNS``: adding a case means updating the README."""
    readme = " ".join((ROOT / "README.md").read_text().split())
    said = re.search(r"feeds (\d+) malformed recipes and overrides .*? \((\d+) invocations", readme)
    assert said, "README no longer states the malformed-input counts"
    assert (int(said[1]), int(said[2])) == (len(CASES), COMMAND_RUNS)


def _argv(case: Bad, command: str, rec: Path, run_dir: Path) -> list[str]:
    recipe_arg = case.recipe.replace("{rec}", str(rec)) if case.recipe else None
    if command != "train":
        return [command, recipe_arg, *case.overrides]
    keys = {o.split("=")[0] for o in case.overrides}
    # should a case wrongly pass the checks, it trains for one tiny step, not 800 default ones
    guard = [o for o in (*TINY_TRAIN, "trainer.max_steps=1") if o.split("=")[0] not in keys]
    model = [f"model={recipe_arg}"] if recipe_arg else []
    return ["train", *model, *case.overrides, *guard, f"hydra.run.dir={run_dir}"]


@pytest.mark.parametrize(
    "case, command",
    [(c, cmd) for c in CASES for cmd in (c.commands if c.recipe is not None else ("train",))],
    ids=[f"{c.id}-{cmd}" for c in CASES for cmd in (c.commands if c.recipe is not None else ("train",))],
)
def test_malformed_input_is_one_line_exit_2_and_writes_nothing(case, command, tmp_path, monkeypatch, capfd):
    """In-process, so that 120+ invocations take seconds; an exception escaping ``main``
    would be a traceback at the command line and fails the test as one."""
    from bertsmith.train.cli import main

    rec, cwd, tmp, cache, home = (tmp_path / d for d in ("rec", "cwd", "tmp", "cache", "home"))
    for d in (rec, cwd, tmp, cache, home):
        d.mkdir()
    for name, content in case.files:
        (rec / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    monkeypatch.chdir(cwd)  # the default run dir (runs/...) would land here
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    monkeypatch.setenv("BERTSMITH_CACHE", str(cache))
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("BERTSMITH_TEST_SHELLISH", "$(touch pwned)")
    run_dir = tmp_path / "run"

    rc = main(_argv(case, command, rec, run_dir))

    out, err = capfd.readouterr()
    assert rc == 2, (out, err)
    assert out == ""
    assert "Traceback" not in err
    lines = err.splitlines()
    keys = case.train_keys if command == "train" and case.train_keys is not None else case.keys
    assert len(lines) == len(keys), err
    for line, key in zip(lines, keys, strict=True):
        assert line.startswith(f"error: {key}: "), line
    for text in case.says:
        assert text in err, err
    assert not run_dir.exists()
    assert sorted(p.name for p in rec.iterdir()) == sorted(n for n, _ in case.files)
    for d in (cwd, tmp, cache, home):
        assert list(d.iterdir()) == [], d
    assert not any(Path(p).exists() for p in ("pwned", cwd / "pwned"))


def test_console_script_end_to_end(tmp_path):
    """Two cases through the real console script: exit status and stderr as a user sees them."""
    script = Path(sys.executable).with_name("bertsmith")
    (tmp_path / "g.yaml").write_text(dict(CASES_BY_ID["package-global"].files)["g.yaml"])
    for argv, key in (
        (["validate", TINY, "model/positional=r\u043epe"], "model/positional"),
        (["train", f"model={tmp_path / 'g.yaml'}", f"hydra.run.dir={tmp_path / 'run'}"], "model"),
    ):
        p = subprocess.run([str(script), *argv], capture_output=True, text=True, timeout=300, cwd=tmp_path)
        assert p.returncode == 2, p.stderr[-2000:]
        assert p.stdout == "" and "Traceback" not in p.stderr
        (line,) = p.stderr.splitlines()
        assert line.startswith(f"error: {key}: ")
    assert sorted(x.name for x in tmp_path.iterdir()) == ["g.yaml"]


CASES_BY_ID = {c.id: c for c in CASES}


# --- 2. no code from data ------------------------------------------------------------------------


@pytest.fixture
def canary(tmp_path):
    """A path that exists only if untrusted data ran code."""
    path = tmp_path / f"canary-{uuid.uuid4().hex[:8]}"
    yield path
    assert not path.exists(), "data made bertsmith run code"


class _Payload:
    """Pickles into a call of ``os.mkdir(path)``: what a malicious checkpoint carries."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (os.mkdir, (self.path,))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("model")
    registry.save(registry.build(registry.compose("bert-tiny", ["model.n_layers=1"])), d)
    return d


@pytest.mark.parametrize(
    "edit, key, says",
    [
        (lambda s: s.replace("n_layers: 1", "n_layers: 1000000000"), "spec.n_layers", "1024"),
        (lambda s: s.replace("d_model: 256", "d_model: 250"), "model.n_heads", "a divisor of d_model=250"),
        (lambda s: "_target_: os.system\n" + s, "spec._target_", "unknown key"),
        (
            lambda s: s.replace("name: bert-tiny", "name: !!python/object/apply:os.system ['touch pwned']"),
            "spec",
            "valid YAML",
        ),
        (lambda s: s.replace("kind: sdpa", "kind: os.system"), "spec.kernel.kind", "'os.system'"),
    ],
    ids=["huge-depth", "heads-not-a-divisor", "target", "python-tag", "kind-as-import-path"],
)
def test_tampered_spec_yaml_is_validated_like_a_recipe(
    edit, key, says, model_dir, tmp_path, monkeypatch, capfd
):
    from bertsmith.train.cli import main

    d = tmp_path / "m"
    shutil.copytree(model_dir, d)
    text = (d / "spec.yaml").read_text()
    (d / "spec.yaml").write_text(edit(text))
    assert (d / "spec.yaml").read_text() != text
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SpecError):
        registry.load(d)
    rc = main(["export", str(d), "--to", "recipe", "--out", str(tmp_path / "r.yaml")])
    out, err = capfd.readouterr()
    assert rc == 2 and out == "" and "Traceback" not in err
    (line,) = err.splitlines()
    assert line.startswith(f"error: {key}") and says in line, line
    assert not (tmp_path / "r.yaml").exists() and not (tmp_path / "pwned").exists()


def test_pickle_bearing_checkpoint_is_refused_unrun(tmp_path, canary):
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "global_step": 1, "x": _Payload(canary)}, path)
    with pytest.raises(SpecError) as e:
        AtomicCheckpointIO().load_checkpoint(path)
    (line,) = e.value.lines
    assert line.startswith(f"checkpoint: given {str(path)!r} holding GLOBAL posix.mkdir, allowed:")
    assert "weights_only=True" in line
    truncated = tmp_path / "cut.ckpt"
    truncated.write_bytes(path.read_bytes()[:200])
    with pytest.raises(SpecError, match="truncated or damaged"):
        AtomicCheckpointIO().load_checkpoint(truncated)


def _hf_bert(directory: Path) -> Path:
    from helpers import TINY_BERT
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    BertForMaskedLM(BertConfig(**TINY_BERT)).save_pretrained(directory)
    return directory


def _plant_remote_code(directory: Path, canary: Path, model_type: str | None = None) -> None:
    """``auto_map`` naming modeling/configuration files that leave ``canary`` if imported."""
    cfg = json.loads((directory / "config.json").read_text())
    cfg["auto_map"] = {
        "AutoConfig": "configuration_evil.EvilConfig",
        "AutoModel": "modeling_evil.EvilModel",
        "AutoModelForMaskedLM": "modeling_evil.EvilModel",
    }
    if model_type:
        cfg["model_type"] = model_type
    (directory / "config.json").write_text(json.dumps(cfg))
    code = f"import os\nos.mkdir({str(canary)!r})\nclass EvilModel: pass\nclass EvilConfig: pass\n"
    for name in ("modeling_evil.py", "configuration_evil.py"):
        (directory / name).write_text(code)


def test_import_hf_never_imports_remote_code(tmp_path, canary, monkeypatch, capfd):
    from bertsmith.train.cli import main

    monkeypatch.chdir(tmp_path)
    hf = _hf_bert(tmp_path / "hf")
    _plant_remote_code(hf, canary)
    assert main(["import-hf", str(hf), "--out", str(tmp_path / "ours")]) == 0
    assert (tmp_path / "ours" / "model.safetensors").is_file()
    assert not {"modeling_evil", "configuration_evil"} & set(sys.modules)

    # a model type we do not know is refused by name, its auto_map never followed
    _plant_remote_code(hf, canary, model_type="evil")
    capfd.readouterr()
    assert main(["import-hf", str(hf), "--out", str(tmp_path / "other")]) == 2
    (line,) = capfd.readouterr().err.splitlines()
    assert line.startswith("error: config.json model_type: given 'evil', allowed: bert, roberta")

    # pickled weights that would run code: refused, not run
    hf2 = tmp_path / "hf2"
    hf2.mkdir()
    shutil.copy(hf / "config.json", hf2 / "config.json")
    cfg = json.loads((hf2 / "config.json").read_text())
    (hf2 / "config.json").write_text(json.dumps({**cfg, "model_type": "bert"}))
    torch.save({"bert.embeddings.word_embeddings.weight": _Payload(canary)}, hf2 / "pytorch_model.bin")
    assert main(["import-hf", str(hf2), "--out", str(tmp_path / "third")]) == 2
    (line,) = capfd.readouterr().err.splitlines()
    assert line.startswith(
        f"error: import-hf: given {str(hf2 / 'pytorch_model.bin')!r}, allowed: a weights-only"
    )
    assert not (tmp_path / "other").exists() and not (tmp_path / "third").exists()


# --- 3, 4. interrupted training and numerical faults (real runs, tiny) --------------------------

FAULTS: list[str] = []  # every fault a test below shows the run survives, for the count


def run_train(run_dir, *overrides, cache, wait=True):
    return bertsmith(
        "train",
        *TINY_TRAIN,
        "model.n_layers=2",
        f"hydra.run.dir={run_dir}",
        *overrides,
        cache=cache,
        wait=wait,
    )


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _finite_state(ckpt: dict) -> bool:
    return all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())


@pytest.fixture(scope="module")
def diverged(tmp_path_factory, cache):
    """A run whose loss really goes non-finite: AdamW at lr=300, fp32 on the CPU, a
    checkpoint every step. Where it overflows (which step, nan or inf, loss or gradient)
    depends on the CPU's rounding (it differs even between 1 and 2 threads), so tests of it
    read the step from the error line; ``stopped`` is the same fault at a chosen step."""
    run_dir = tmp_path_factory.mktemp("diverged") / "run"
    p = run_train(
        run_dir,
        "optim=adamw",  # not the modernbert family's StableAdamW, whose update clipping holds
        "optim.lr=300",
        "trainer.accelerator=cpu",
        "schedule=constant",
        "schedule.warmup=0",
        "trainer.max_steps=30",
        "trainer.val_every=100",
        "trainer.checkpoint.every_n_steps=1",
        cache=cache,
    )
    return run_dir, p


NONFINITE_LINE = re.compile(r"error: non-finite (loss \((?:nan|inf|-inf)\)|gradient|weights) at step (\d+); ")


@pytest.mark.slow
def test_non_finite_loss_stops_with_one_line_and_keeps_the_last_good_checkpoint(diverged):
    """A real overflow, wherever this CPU's rounding puts it: one line naming the step and
    what went non-finite, and the run directory agrees with it (the newest checkpoint worth
    resuming is ``last.ckpt`` and is finite, or there is none and the line says so)."""
    run_dir, p = diverged
    assert p.returncode == 2, p.stderr[-3000:] or "lr=300 did not diverge in 30 steps on this machine"
    assert "Traceback" not in p.stderr
    (line,) = p.stderr.splitlines()
    m = NONFINITE_LINE.match(line)
    assert m, line
    what, step = m[1], int(m[2])
    # weights that overflow in step N were left by the finite step N; a bad loss or gradient
    # at step N came from the weights of step N-1, themselves made by step N-1 from those of N-2
    good = step - 1 if what == "weights" else step - 2
    last = run_dir / "checkpoints" / "last.ckpt"
    if good >= 1:
        assert f"; last good checkpoint: {last} (step {good}); resume=true with a lower optim.lr" in line
        ckpt = _load(last)
        assert ckpt["global_step"] == good and _finite_state(ckpt)
    else:
        assert f"; no checkpoint from before step {good + 1} to keep (resume=true starts over)" in line
        assert not last.exists()
    assert line.endswith("; or set trainer.skip_nonfinite=N to skip up to N bad batches")
    rows = [r for r in read_metrics(run_dir / "metrics.csv") if "train_loss" in r]
    logged = step if what == "weights" else step - 1  # a bad loss or gradient is never logged
    assert [r["step"] for r in rows] == list(range(1, logged + 1))  # nothing logged past the fault
    assert all(math.isfinite(r["train_loss"]) for r in rows)
    for s in range(1, step):  # every checkpoint on disk holds finite weights
        ck = run_dir / "checkpoints" / f"step={s}.ckpt"
        assert _load(ck)["global_step"] == s and _finite_state(_load(ck))
    assert not (run_dir / "checkpoints" / f"step={step}.ckpt").exists()
    assert not (run_dir / "model").exists() and not (run_dir / "summary.json").exists()
    FAULTS.append("non-finite loss")


POISON = """
import sys
from bertsmith.train.pretrain.module import PretrainModule
real, bad = PretrainModule.forward, int(sys.argv[1])
def forward(self, batch):  # a real nan in the graph at step `bad`, as a bad batch would give
    loss, metrics = real(self, batch)
    if self.training and self.global_step + 1 == bad:
        loss = loss * float("nan")
    return loss, metrics
PretrainModule.forward = forward
from bertsmith.train.cli import main
sys.exit(main(sys.argv[2:]))
"""

STOPPED_AT = 5  # the step whose loss is nan in ``stopped``
STOPPED = ["optim=adamw", "trainer.accelerator=cpu", "schedule=constant", "schedule.warmup=0",
           "trainer.val_every=100", "trainer.checkpoint.every_n_steps=1"]  # fmt: skip


@pytest.fixture(scope="module")
def stopped(tmp_path_factory, cache):
    """A run stopped by a nan loss at step ``STOPPED_AT``, at a normal rate (optim.lr=1e-3),
    so its weights are sound and what follows does not depend on the CPU's rounding: the
    nan is put into the loss by patching ``PretrainModule.forward`` in the child process."""
    run_dir = tmp_path_factory.mktemp("stopped") / "run"
    args = [*TINY_TRAIN, "model.n_layers=2", f"hydra.run.dir={run_dir}", *STOPPED, "optim.lr=1e-3",
            "trainer.max_steps=8"]  # fmt: skip
    env = {**os.environ, "BERTSMITH_CACHE": str(cache), "PYTHONPATH": str(ROOT)}
    p = subprocess.run(
        [sys.executable, "-c", POISON, str(STOPPED_AT), "train", *args],
        env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    return run_dir, p


def test_a_nan_loss_stops_the_run_at_that_step_and_keeps_step_minus_2(stopped):
    run_dir, p = stopped
    assert p.returncode == 2, p.stderr[-3000:]
    assert p.stderr.splitlines() == [
        f"error: non-finite loss (nan) at step {STOPPED_AT}; last good checkpoint: "
        f"{run_dir / 'checkpoints' / 'last.ckpt'} (step {STOPPED_AT - 2}); resume=true with a lower "
        "optim.lr continues from it; or set trainer.skip_nonfinite=N to skip up to N bad batches"
    ]
    ckpt = _load(run_dir / "checkpoints" / "last.ckpt")
    assert ckpt["global_step"] == STOPPED_AT - 2 and _finite_state(ckpt)
    rows = [r["step"] for r in read_metrics(run_dir / "metrics.csv") if "train_loss" in r]
    assert rows == list(range(1, STOPPED_AT))
    assert not (run_dir / "checkpoints" / f"step={STOPPED_AT}.ckpt").exists()
    assert not (run_dir / "model").exists() and not (run_dir / "summary.json").exists()


def test_a_diverged_run_resumes_from_its_last_good_checkpoint(stopped, tmp_path, cache):
    """``resume=true`` with a changed ``optim.lr``: the run goes on from the kept step at the
    configured rate, finite, to a model (the README's way out of a divergence)."""
    run_dir, _ = stopped
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    done = _load(copy / "checkpoints" / "last.ckpt")["global_step"]
    assert done == STOPPED_AT - 2
    p = run_train(copy, "resume=true", *STOPPED, "optim.lr=5e-4", f"trainer.max_steps={done + 4}",
                  cache=cache)  # fmt: skip
    assert p.returncode == 0, p.stderr[-3000:]
    rows = [r for r in read_metrics(copy / "metrics.csv") if "train_loss" in r]
    assert [r["step"] for r in rows] == list(range(1, done + 5))
    assert [r["lr"] for r in rows] == [1e-3] * done + [5e-4] * 4  # the kept rows, then the new rate
    assert all(math.isfinite(r["train_loss"]) for r in rows)
    assert _load(copy / "checkpoints" / "last.ckpt")["global_step"] == done + 4
    # the diverged run's step=4.ckpt is rewritten, not kept beside a step=4-v1.ckpt
    assert sorted(p.name for p in (copy / "checkpoints").iterdir()) == sorted(
        ["last.ckpt", *(f"step={s}.ckpt" for s in range(1, done + 5))]
    )
    assert registry.load(copy / "model") is not None


@pytest.mark.slow
def test_resume_refuses_a_tokenizer_other_than_the_runs(stopped, tmp_path, cache):
    """A resumed run must train on the tokenizer it was trained with (its ``tokenizer.json``,
    by ``tokenizer_sha256``): one line, exit 2, nothing written, whether the tokenizer settings
    changed (checked before the model's spec, whose vocabulary follows) or this machine's
    cached tokenizer differs (as another machine's did before training was deterministic:
    same size, so the spec alone would not tell). Then the way out the line names resumes it."""
    from bertsmith.train.pretrain.tokenizer import file_sha256

    run_dir, _ = stopped
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    sha = file_sha256(copy / "tokenizer.json")
    other_cache = tmp_path / "cache"
    # the session's cache, shared with other tests (and xdist workers) that may be writing to it
    shutil.copytree(cache, other_cache, ignore=shutil.ignore_patterns("*.tmp", "*.lock"))
    for f in (other_cache / "tokenizers").glob("*.json"):
        state = json.loads(f.read_text())
        vocab = state["model"]["vocab"]
        a, b = list(vocab)[-2:]  # two tokens swap ids: same size, another tokenizer
        vocab[a], vocab[b] = vocab[b], vocab[a]
        f.write_text(json.dumps(state))

    def files():
        return {p: p.stat().st_mtime_ns for p in copy.rglob("*") if p.is_file() and ".hydra" not in p.parts}

    before = files()
    done = _load(copy / "checkpoints" / "last.ckpt")["global_step"]
    common = ["resume=true", *STOPPED, "optim.lr=1e-3", f"trainer.max_steps={done + 2}"]
    for extra, where in ((["tokenizer.min_frequency=1000"], cache), ([], other_cache)):
        p = run_train(copy, *common, *extra, cache=where)
        assert p.returncode == 2, p.stderr[-3000:]
        assert "Traceback" not in p.stderr and p.stdout == ""
        (line,) = p.stderr.splitlines()
        assert line.startswith("error: resume: given a tokenizer (sha256 "), line
        assert (
            f"that differs from the one {str(copy)!r} was trained with (tokenizer.json, sha256 "
            f"{sha[:12]}), allowed: the same corpus and tokenizer settings as the run being resumed, "
            f"or tokenizer=file tokenizer.path={copy / 'tokenizer.json'}"
        ) in line, line
        assert files() == before

    way_out = ["tokenizer=file", f"tokenizer.path={copy / 'tokenizer.json'}"]
    p = run_train(copy, *common, *way_out, cache=other_cache)
    assert p.returncode == 0, p.stderr[-3000:]
    assert json.loads((copy / "summary.json").read_text())["tokenizer_sha256"] == sha
    assert _load(copy / "checkpoints" / "last.ckpt")["global_step"] == done + 2


def test_resume_refuses_a_pickle_bearing_checkpoint(stopped, tmp_path, cache, canary):
    run_dir, _ = stopped
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    good = _load(copy / "checkpoints" / "last.ckpt")
    good["callbacks"] = {"evil": _Payload(canary)}
    torch.save(good, copy / "checkpoints" / "last.ckpt")
    p = run_train(copy, "resume=true", *STOPPED, "optim.lr=1e-3", "trainer.max_steps=20", cache=cache)
    assert p.returncode == 2, p.stderr[-3000:]
    assert "Traceback" not in p.stderr
    (line,) = p.stderr.splitlines()
    assert line.startswith("error: checkpoint: given ") and "GLOBAL posix.mkdir" in line
    assert not (copy / "model").exists()
    FAULTS.append("pickle-bearing checkpoint")


def _poisoned_forward(bad_steps: set[int]):
    """PretrainModule.forward whose loss is multiplied by nan at ``bad_steps``: a real nan in
    the graph, so the backward pass produces nan gradients as a bad batch would."""
    from bertsmith.train.pretrain.module import PretrainModule

    real = PretrainModule.forward

    def forward(self, batch):
        loss, metrics = real(self, batch)
        if self.training and self.global_step + 1 in bad_steps:
            loss = loss * float("nan")
        return loss, metrics

    return forward


def _tiny_config(run_dir: Path, **trainer):
    from bertsmith.train.pretrain.config import parse_train_config

    data = {
        "data": {"max_docs": 300, "max_val_docs": 16, "seq_len": 64, "batch_size": 4},
        "tokenizer": {"vocab_size": 512},
        "trainer": {"progress": False, "log_every": 1, "val_every": 100, "max_steps": 6, **trainer},
    }
    spec = registry.compose("modernbert-tiny", ["model.n_layers=2"])
    return spec, parse_train_config(data)


def test_skip_guard_skips_bad_batches_then_stops(tmp_path, cache, monkeypatch, capsys):
    """``trainer.skip_nonfinite=1``: the first bad step is skipped (weights untouched, the run
    goes on), the second ends the run with the error line; in-process, with a nan injected."""
    from bertsmith.train.pretrain.loop import train as train_job
    from bertsmith.train.pretrain.module import PretrainModule

    monkeypatch.setenv("BERTSMITH_CACHE", str(cache))
    monkeypatch.setattr(PretrainModule, "forward", _poisoned_forward({3, 5}))
    run_dir = tmp_path / "run"
    spec, tcfg = _tiny_config(run_dir, skip_nonfinite=1, checkpoint={"every_n_steps": 1})
    with pytest.raises(SpecError) as e:
        train_job(spec, tcfg, run_dir, {})
    (line,) = e.value.lines
    assert line == (
        "non-finite loss (nan) at step 5 after skipping 1 bad batches; last good checkpoint: "
        f"{run_dir / 'checkpoints' / 'last.ckpt'} (step 3); resume=true with a lower optim.lr "
        "continues from it"
    ), line
    assert _load(run_dir / "checkpoints" / "last.ckpt")["global_step"] == 3
    err = capsys.readouterr().err
    assert "bertsmith: step 3: non-finite loss (nan); batch skipped (1 of trainer.skip_nonfinite=1)" in err
    ck = {s: _load(run_dir / "checkpoints" / f"step={s}.ckpt") for s in (2, 3, 4)}
    same = [torch.equal(ck[2]["state_dict"][k], ck[3]["state_dict"][k]) for k in ck[2]["state_dict"]]
    assert all(same), "a skipped step changed the weights"
    assert not all(torch.equal(ck[3]["state_dict"][k], ck[4]["state_dict"][k]) for k in ck[3]["state_dict"])
    assert ck[4]["bertsmith_skipped"] == 1 and _finite_state(ck[4])
    assert not (run_dir / "checkpoints" / "step=5.ckpt").exists()

    # with room for both, the run finishes and its model is finite
    run2 = tmp_path / "run2"
    spec, tcfg = _tiny_config(run2, skip_nonfinite=2)
    summary = train_job(spec, tcfg, run2, {})
    assert summary["steps"] == 6 and math.isfinite(summary["val_loss"])
    assert capsys.readouterr().err.count("batch skipped") == 2
    FAULTS.append("bad batches skipped")


def test_non_finite_weights_are_never_checkpointed(tmp_path):
    """The save guard: a checkpoint of nan weights is refused before its file is opened."""
    from bertsmith.train.pretrain.module import NonFiniteError, PretrainModule

    model = registry.build(registry.compose("bert-tiny", ["model.n_layers=1"]))
    module = PretrainModule(model, None, None, 10)
    with torch.no_grad():
        next(model.parameters())[0, 0] = float("inf")
    with pytest.raises(NonFiniteError, match="non-finite weights"):
        module.on_save_checkpoint({})


KILL_MID_WRITE = """
import io, os, sys, time
from pathlib import Path
import torch
real, flag, seen = torch.save, Path(sys.argv[1]), []
def slow_save(obj, f, *args, **kwargs):
    if Path(f).name.startswith(".last.ckpt."):
        seen.append(f)
    if len(seen) < 2:
        return real(obj, f, *args, **kwargs)
    buf = io.BytesIO()
    real(obj, buf)
    with open(f, "wb") as out:  # half of the second last.ckpt, then hang until killed
        out.write(buf.getvalue()[: len(buf.getvalue()) // 2])
        out.flush()
        flag.write_text(str(f))
        time.sleep(600)
torch.save = slow_save
from bertsmith.train.cli import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.slow
def test_kill_during_a_checkpoint_write_keeps_the_previous_checkpoint(tmp_path, cache):
    """SIGKILL while ``last.ckpt`` is being rewritten (the write made slow by patching
    ``torch.save`` in the child, not by any hook in bertsmith): the old ``last.ckpt`` still
    loads, the partial bytes are only in a temporary file, and resume=true finishes the run."""
    run_dir, flag = tmp_path / "run", tmp_path / "writing"
    args = [*TINY_TRAIN, "model.n_layers=2", f"hydra.run.dir={run_dir}", "trainer.max_steps=6",
            "trainer.val_every=6", "trainer.checkpoint.every_n_steps=2"]  # fmt: skip
    env = {**os.environ, "BERTSMITH_CACHE": str(cache), "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-c", KILL_MID_WRITE, str(flag), "train", *args],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    kill_when(proc, flag)
    partial = Path(flag.read_text())
    assert partial.parent == run_dir / "checkpoints" and partial.name != "last.ckpt"
    assert partial.exists()  # what the kill left: half a file, beside the good one
    last = _load(run_dir / "checkpoints" / "last.ckpt")
    assert last["global_step"] == 2 and _finite_state(last)
    assert _load(run_dir / "checkpoints" / "step=4.ckpt")["global_step"] == 4

    again = run_train(run_dir, "resume=true", "trainer.max_steps=6", "trainer.val_every=6",
                  "trainer.checkpoint.every_n_steps=2", cache=cache)  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    assert not list((run_dir / "checkpoints").glob(".*.tmp"))
    assert not list((run_dir / "checkpoints").glob("*-v*.ckpt"))  # step=4.ckpt was rewritten
    assert _load(run_dir / "checkpoints" / "last.ckpt")["global_step"] == 6
    rows = [r["step"] for r in read_metrics(run_dir / "metrics.csv") if "train_loss" in r]
    assert rows == [1, 2, 3, 4, 5, 6]
    FAULTS.append("SIGKILL during a checkpoint write")


def test_failed_checkpoint_write_is_one_line_and_keeps_the_old_file(tmp_path, monkeypatch):
    """Disk full mid-write: the error names the file; the previous checkpoint is untouched."""
    io_ = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io_.save_checkpoint({"global_step": 1, "w": torch.ones(3)}, path)
    real = torch.save

    def full_disk(obj, f, *a, **k):
        real(obj, f, *a, **k)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(SpecError) as e:
        io_.save_checkpoint({"global_step": 2, "w": torch.zeros(3)}, path)
    (line,) = e.value.lines
    assert line.startswith(f"checkpoint: could not write {str(path)!r} (No space left on device)")
    assert io_.load_checkpoint(path)["global_step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]
    FAULTS.append("disk full during a checkpoint write")


@pytest.mark.slow
def test_sweep_interrupted_mid_grid_reruns_only_unfinished_jobs(tmp_path, cache):
    sweep = tmp_path / "sweep"
    args = ["-m", f"hydra.sweep.dir={sweep}", "seed=0,1,2", "trainer.max_steps=2", "trainer.val_every=2"]
    proc = run_train(tmp_path / "unused", *args, cache=cache, wait=False)
    kill_when(proc, sweep / "0" / "summary.json")
    assert not (sweep / "1" / "summary.json").exists() and not (sweep / "2").exists()

    def files(job):
        return {
            p: p.stat().st_mtime_ns
            for p in (sweep / job).rglob("*")
            if p.is_file() and ".hydra" not in p.parts
        }

    first = files("0")
    again = run_train(tmp_path / "unused", *args, "resume=true", cache=cache)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"bertsmith: {sweep / '0'} already finished; nothing to resume" in again.stdout
    assert files("0") == first  # the finished job was not touched
    for job in ("1", "2"):
        assert (sweep / job / "summary.json").is_file()
    assert again.stdout.count("already finished; nothing to resume") == 1
    FAULTS.append("sweep interrupted mid-grid")


# --- 5. data faults ------------------------------------------------------------------------------


def test_blank_and_whitespace_lines_separate_documents(tmp_path):
    from bertsmith.train.pretrain import corpus
    from bertsmith.train.pretrain.config import DataConfig

    (tmp_path / "c.txt").write_text("\n\n\nfirst doc\nline two\n \t \nsecond\r\n\r\n\n\n   \nthird\n\n\n")
    docs = list(corpus.documents(DataConfig(source="files", path=str(tmp_path / "c.txt"))))
    assert docs == ["first doc\nline two", "second", "third"]


def _words(n: int, seed: int) -> list[str]:
    import random

    rng = random.Random(seed)
    vocab = ["alpha", "beta", "gamma", "delta", "return", "value", "of", "the", "list", "object"]
    return [rng.choice(vocab) for _ in range(n)]


def test_long_documents_are_split_not_truncated(tmp_path, monkeypatch):
    """A single 1 MB line and documents far past seq_len: every token reaches a training row."""
    from bertsmith.train.pretrain import corpus
    from bertsmith.train.pretrain.config import DataConfig, TokenizerConfig, TrainConfig
    from bertsmith.train.pretrain.data import build_data

    monkeypatch.setenv("BERTSMITH_CACHE", str(tmp_path / "cache"))
    long_line = " ".join(_words(200_000, 0))
    assert len(long_line) > 2**20
    docs = [long_line] + [" ".join(_words(50 + 40 * i, i)) for i in range(1, 40)]
    (tmp_path / "c.txt").write_text("\n\n".join(docs))
    cfg = TrainConfig(
        data=DataConfig(
            source="files", path=str(tmp_path / "c.txt"), seq_len=64, batch_size=4, val_fraction=0.1
        ),
        tokenizer=TokenizerConfig(vocab_size=128),
    )
    data = build_data(cfg, 0)
    read = list(corpus.documents(cfg.data))
    val = [d for d in read if corpus.is_val(d, 0.1)]
    train_docs = [d for d in read if not corpus.is_val(d, 0.1)]
    if not val:
        train_docs.pop()
    assert long_line in train_docs
    ids = data.tok.encode(train_docs)
    special = {data.tok.cls_id, data.tok.sep_id}
    rows = data.train.rows.rows
    in_rows = Counter(t for row in rows for s in row for t in s.ids if t not in special)
    assert in_rows == Counter(t for doc in ids for t in doc)  # nothing truncated, nothing lost
    n_seqs = sum(len(row) for row in rows)
    assert n_seqs == sum(math.ceil(len(doc) / 62) for doc in ids)
    assert all(len(s.ids) <= 64 for row in rows for s in row)
    FAULTS.append("1 MB line and documents longer than seq_len")


def test_undecodable_bytes_name_the_file_and_offset(tmp_path):
    from bertsmith.train.pretrain import corpus
    from bertsmith.train.pretrain.config import DataConfig

    good = ("fine text " * 100_000).encode()
    (tmp_path / "c.txt").write_bytes(good + b"\n\nbad \xff here")
    with pytest.raises(SpecError) as e:
        list(corpus.documents(DataConfig(source="files", path=str(tmp_path / "c.txt"))))
    (line,) = e.value.lines
    assert line == (
        f"data.path: given {str(tmp_path / 'c.txt')!r}, allowed: UTF-8 text (undecodable byte at "
        f"offset {len(good) + 6}; set data.errors=replace to replace such bytes)"
    )


def test_corpus_smaller_than_one_batch_is_one_clear_error(tmp_path, monkeypatch):
    """Chosen behaviour: an error naming data.batch_size and how many rows the corpus makes
    (repeating three rows sixteen times per batch would train on duplicates silently)."""
    from bertsmith.train.pretrain.config import DataConfig, TokenizerConfig, TrainConfig
    from bertsmith.train.pretrain.data import build_data

    monkeypatch.setenv("BERTSMITH_CACHE", str(tmp_path / "cache"))
    (tmp_path / "c.txt").write_text("\n\n".join(" ".join(_words(30, i)) for i in range(4)))
    cfg = TrainConfig(
        data=DataConfig(source="files", path=str(tmp_path / "c.txt"), seq_len=64, batch_size=16),
        tokenizer=TokenizerConfig(vocab_size=64),
    )
    with pytest.raises(SpecError) as e:
        build_data(cfg, 0)
    (line,) = e.value.lines
    assert line.startswith("data.batch_size: given 16 rows, allowed: at most the ")
    assert line.endswith(" packed rows this corpus makes at seq_len 64")


def test_data_file_disappearing_mid_run(tmp_path, monkeypatch, cache):
    """In memory (the default), training goes on from what was read; streamed, the next read
    fails with one line that says what happened and what is kept."""
    from bertsmith.train.pretrain.config import DataConfig, TokenizerConfig, TrainConfig
    from bertsmith.train.pretrain.data import build_data
    from bertsmith.train.pretrain.loop import train as train_job

    monkeypatch.setenv("BERTSMITH_CACHE", str(cache))
    path = tmp_path / "c.txt"
    path.write_text("\n\n".join(" ".join(_words(40, i)) for i in range(200)))
    cfg = TrainConfig(
        data=DataConfig(source="files", path=str(path), seq_len=64, batch_size=4),
        tokenizer=TokenizerConfig(vocab_size=128),
    )
    data = build_data(cfg, 0)
    before = [data.train[s]["input_ids"] for s in (0, 7, 100)]
    path.unlink()
    assert all(torch.equal(a, data.train[s]["input_ids"]) for a, s in zip(before, (0, 7, 100), strict=True))

    path.write_text("\n\n".join(" ".join(_words(40, i)) for i in range(200)))

    from bertsmith.train import pretrain as train

    real = train.loop.build_data

    def build_then_delete(*a, **k):
        out = real(*a, **k)
        path.unlink()  # after tokenization and the tokenizer cache, before the first batch
        return out

    monkeypatch.setattr(train.loop, "build_data", build_then_delete)
    spec = registry.compose("modernbert-tiny", ["model.n_layers=2"])
    streamed = cfg.model_copy(
        update={
            "data": cfg.data.model_copy(update={"streaming": True}),
            "trainer": cfg.trainer.model_copy(update={"max_steps": 3, "progress": False}),
        }
    )
    with pytest.raises(SpecError) as e:
        train_job(spec, streamed, tmp_path / "run", {})
    (line,) = e.value.lines
    assert line.startswith(f"data.path: given {str(path)!r}, allowed: an existing file or folder")
    assert "during training" in line and "resume=true" in line
    FAULTS.append("data file disappearing mid-run")


# --- 6. resources --------------------------------------------------------------------------------


def _train_in_process(run_dir: Path, *extra: str) -> int:
    from bertsmith.train.cli import main

    return main(["train", *TINY_TRAIN, "trainer.max_steps=2", f"hydra.run.dir={run_dir}", *extra])


def test_run_dir_under_a_regular_file_fails_early(tmp_path, capfd):
    """Works for root too (root ignores permissions, not the file system)."""
    (tmp_path / "afile").write_text("x")
    run_dir = tmp_path / "afile" / "run"
    assert _train_in_process(run_dir) == 2
    out, err = capfd.readouterr()
    assert "Traceback" not in err and out == ""
    (line,) = err.splitlines()
    assert line == (
        f"error: hydra.run.dir: given {str(run_dir)!r}, allowed: a path of directories "
        f"({str(tmp_path / 'afile')!r} is a file)"
    )
    FAULTS.append("run dir under a file")


NOBODY = 65534  # uid and gid of ``nobody``


def _as_nobody(fn) -> int:
    """``fn()`` in a forked child that first drops to ``nobody`` (uid and gid 65534, no
    supplementary groups); its return value is the child's exit status, 77 when the drop
    was refused. A fork, not a new interpreter: ``nobody`` may not be able to run this
    Python (here it lives under root's 0700 home) although it can run the code loaded."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        rc = 1
        try:
            try:
                os.setgroups([])
                os.setgid(NOBODY)
                os.setuid(NOBODY)
            except PermissionError:
                rc = 77
            else:
                torch.set_num_threads(1)  # as DataLoader workers do: no OpenMP pool after a fork
                rc = fn()
        except BaseException:
            import traceback

            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(rc)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def _package_dirs() -> list[Path]:
    """What a run reads from disk after the fork: the recipes and the installed packages."""
    import hydra

    from bertsmith.registry.composer import RECIPES

    return [Path(RECIPES), Path(hydra.__file__).parent]


def test_run_dir_without_write_permission_fails_early(capfd):
    """A run dir inside a directory the user may not write fails early, writing nothing.

    Root writes anywhere, so as root the check runs in a forked child that has dropped to
    ``nobody`` (``_as_nobody``); it skips, saying why, only where root cannot drop
    privileges. Run as any other user, it runs in-process."""
    drop = os.geteuid() == 0
    # not tmp_path: its parents are 0700, so nobody could not reach it
    base = Path(tempfile.mkdtemp(prefix="bertsmith-unprivileged-"))
    dirs = {d: base / d for d in ("ro", "home", "cache")}
    try:
        for d in (base, *dirs.values()):
            d.mkdir(exist_ok=True)
            if drop:
                os.chown(d, NOBODY, NOBODY)
        dirs["ro"].chmod(0o500)
        run_dir = dirs["ro"] / "run"

        needed = _package_dirs()  # imported here: after the fork nobody may not read them

        def check() -> int:
            assert os.geteuid() != 0 and not os.access(dirs["ro"], os.W_OK)
            if not all(os.access(p, os.R_OK | os.X_OK) for p in needed):
                return 78  # this checkout (or its venv) lies where nobody may not read
            return _train_in_process(run_dir)

        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("HOME", str(dirs["home"]))
            mp.setenv("BERTSMITH_CACHE", str(dirs["cache"]))
            if drop:
                from bertsmith.train.cli import main  # noqa: F401  (loaded before the fork)

                rc = _as_nobody(check)
            else:
                rc = check()
        if rc == 77:
            pytest.skip("root may not drop privileges to nobody on this machine (setuid refused)")
        if rc == 78:
            pytest.skip(f"nobody may not read this checkout or its venv ({', '.join(map(str, needed))})")
        out, err = capfd.readouterr()
        assert rc == 2, err[-3000:]
        assert out == "" and "Traceback" not in err
        (line,) = err.splitlines()
        assert line.startswith(f"error: hydra.run.dir: given {str(run_dir)!r}, allowed: a writable directory")
        assert list(dirs["ro"].iterdir()) == []
    finally:
        if dirs["ro"].exists():
            dirs["ro"].chmod(0o700)
        shutil.rmtree(base)


def test_too_little_disk_fails_before_anything_is_written(tmp_path, monkeypatch, capfd):
    from bertsmith.train.pretrain.config import parse_train_config
    from bertsmith.train.pretrain.loop import checkpoint_bytes, estimate_params

    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=10 * 2**20))
    run_dir = tmp_path / "run"
    assert _train_in_process(run_dir, "trainer.checkpoint.every_n_steps=1") == 2
    (line,) = capfd.readouterr().err.splitlines()
    tcfg = parse_train_config({"tokenizer": {"vocab_size": 512}})
    n = estimate_params(registry.compose("modernbert-tiny"), tcfg)
    need = 4 * checkpoint_bytes(n) + 4 * n + 64 * 2**20  # 2 step checkpoints, last.ckpt and its rewrite
    assert line == (
        f"error: hydra.run.dir: given {str(run_dir)!r} with 10 MiB free, allowed: at least "
        f"{need / 2**20:,.0f} MiB free (4 checkpoints of {checkpoint_bytes(n) / 2**20:,.0f} MiB and "
        "the final model; fewer with a larger trainer.checkpoint.every_n_steps)"
    )
    assert not run_dir.exists()
    FAULTS.append("out of disk")


def test_fault_count(request):
    """Runs last in file order: every fault test above that ran appended what it survived.

    The fault tests are this file's tests that name ``FAULTS``. When all of them were
    selected, the faults recorded must be exactly as many as the README claims ("survives N
    injected faults"): a fault test skipped, or passing without reaching its ``append``,
    fails this test. It skips only when some fault test was deselected (``-k``, a node id).
    Needs the fault tests in its process: under pytest-xdist, conftest puts every test that
    names ``FAULTS`` (this one too) in one group."""
    fault_tests = {
        name
        for name, f in globals().items()
        if name.startswith("test_") and callable(f) and "FAULTS" in f.__code__.co_names
    } - {request.node.originalname}
    selected = {
        getattr(i, "originalname", i.name) for i in request.session.items if i.module is request.module
    }
    if not fault_tests <= selected:
        pytest.skip(f"fault tests deselected: {sorted(fault_tests - selected)}")
    readme = " ".join((ROOT / "README.md").read_text().split())
    claimed = re.search(r"survives (\d+) injected faults", readme)
    assert claimed, "README no longer states the number of faults survived"
    assert len(set(FAULTS)) == len(FAULTS)
    assert len(FAULTS) == int(claimed[1]) == len(fault_tests), (FAULTS, sorted(fault_tests))
