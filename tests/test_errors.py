"""Mistakes a user can make give one line per problem, exit code 2, no traceback, and write
nothing; a recipe cannot make bertsmith import or run code."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import tempfile
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml
from helpers import run_main

from bertsmith import (
    blocks,  # noqa: F401  (fills REGISTRY, which this module reads at import)
    registry,
)
from bertsmith.registry import REGISTRY, SpecError

SCRIPT = Path(sys.executable).with_name("bertsmith")
BASE_RECIPE = {"vocab_size": 100, "d_model": 64, "n_layers": 2, "n_heads": 2, "d_ff": 128}


def recipe_text(**extra) -> str:
    """A small valid recipe (rope, everything else default) plus ``extra`` keys, as YAML."""
    return yaml.safe_dump({"defaults": [{"positional": "rope"}, "_self_"], **BASE_RECIPE, **extra})


def _kernels_without(*caps: str) -> list[str]:
    return [e.name for e in REGISTRY.entries["kernel"].values() if not e.provides & set(caps)]


@dataclasses.dataclass(frozen=True)
class Case:
    """One CLI invocation. ``{rec}`` in ``argv`` is the folder ``files`` are written to
    (never the working directory, which must stay empty)."""

    id: str
    argv: tuple[str, ...]
    keys: tuple[str, ...]  # one error line per key, in order, each "error: KEY: ..."
    hints: tuple[str, ...] = ()  # must appear in stderr
    files: tuple[tuple[str, str], ...] = ()
    script: bool = False  # run the console script instead of ``python -m bertsmith.train.cli``


NO_BIAS_KERNELS = _kernels_without("bias", "alibi")

CASES = [
    Case(
        "unknown-block",
        ("validate", "modernbert-base", "model/positional=rop"),
        ("model/positional",),
        ("given 'rop'", "did you mean 'rope'?"),
        script=True,
    ),
    Case(
        "unknown-block-inspect",
        ("inspect", "modernbert-base", "model/positional=rop", "--json"),
        ("model/positional",),
        ("given 'rop'", "did you mean 'rope'?"),
    ),
    Case(
        "unknown-slot",
        ("validate", "modernbert-tiny", "model/postional=rope"),
        ("model/<slot>",),
        ("given 'postional'", "positional"),
    ),
    Case(
        "unknown-recipe",
        ("validate", "modernbert-bsae"),
        ("model",),
        ("given 'modernbert-bsae'", "did you mean 'modernbert-base'?"),
        script=True,
    ),
    Case(
        "wrong-type",
        ("validate", "modernbert-tiny", "model.d_model=abc"),
        ("model.d_model",),
        ("given 'abc'", "integer"),
    ),
    Case(
        "unknown-key",
        ("validate", "modernbert-tiny", "model.d_modl=5"),
        ("model.d_modl",),
        ("unknown key", "did you mean 'd_model'?"),
    ),
    Case(
        "unknown-slot-param",
        ("validate", "modernbert-tiny", "model.positional.thetaa=1"),
        ("model.positional.thetaa",),
        ("unknown key for rope", "did you mean 'theta'?"),
    ),
    Case(
        "heads-not-a-divisor",
        ("validate", "modernbert-tiny", "model.d_model=250"),
        ("model.n_heads",),
        ("given 4", "d_model=250"),
    ),
    Case(
        "negative-window",
        ("validate", "modernbert-tiny", "model.attention.window=-4"),
        ("model.attention.window",),
        ("given -4", "greater than 0"),
    ),
    Case(
        "skip-first-with-post-norm",
        ("validate", "bert-tiny", "model.norm.skip_first=true"),
        ("model.norm.skip_first",),
        ("post",),
    ),
    Case(
        "bad-activation",
        ("validate", "modernbert-tiny", "model.mlp.activation=gleu"),
        ("model.mlp.activation.kind",),
        ("given 'gleu'", "did you mean 'gelu'?"),
    ),
    Case(
        "two-type-problems-two-lines",
        ("validate", "modernbert-tiny", "model.attention.window=-4", "model.d_modl=3"),
        ("model.attention.window", "model.d_modl"),
    ),
    Case(
        "two-rule-problems-two-lines",
        ("validate", "modernbert-tiny", "model.d_model=250", "model.pad_token_id=9999"),
        ("model.n_heads", "model.pad_token_id"),
    ),
    Case(
        "bad-override-syntax",
        ("validate", "modernbert-tiny", "d_model=5"),
        ("override",),
        ("given 'd_model=5'", "model.<key>=<value>"),
    ),
    Case(
        "missing-file",
        ("validate", "{rec}/nope.yaml"),
        ("model",),
        ("nope.yaml", "an existing recipe file"),
    ),
    Case(
        "empty-file",
        ("validate", "{rec}/empty.yaml"),
        ("model",),
        ("empty.yaml", "empty"),
        files=(("empty.yaml", ""),),
    ),
    Case(
        "empty-file-inspect",
        ("inspect", "{rec}/empty.yaml"),
        ("model",),
        ("empty.yaml", "empty"),
        files=(("empty.yaml", ""),),
    ),
    Case(
        "not-yaml",
        ("validate", "{rec}/broken.yaml"),
        ("model",),
        ("broken.yaml", "valid YAML"),
        files=(("broken.yaml", "a: [b\n"),),
    ),
    Case(
        "yaml-list",
        ("validate", "{rec}/list.yaml"),
        ("model",),
        ("list.yaml", "mapping", "list"),
        files=(("list.yaml", "- positional: rope\n- d_model: 64\n"),),
    ),
    Case(
        "defaults-name-unknown-block",
        ("validate", "{rec}/typo.yaml"),
        ("model",),
        ("rop",),
        files=(("typo.yaml", recipe_text().replace("positional: rope", "positional: rop")),),
    ),
    Case(
        "target-for-a-model-part",
        ("validate", "{rec}/target.yaml"),
        ("model.mlp._target_",),
        ("os.system",),
        files=(("target.yaml", recipe_text(mlp={"_target_": "os.system", "_args_": ["touch pwned"]})),),
        script=True,
    ),
    Case(
        "unknown-resolver",
        ("validate", "{rec}/evil.yaml"),
        ("model",),
        ("interpolation", "eval"),
        files=(("evil.yaml", recipe_text(name='${eval:\'__import__("os").system("touch pwned")\'}')),),
    ),
    Case(
        "python-yaml-tag",
        ("validate", "{rec}/tag.yaml"),
        ("model",),
        ("tag.yaml", "valid YAML"),
        files=(
            (
                "tag.yaml",
                recipe_text(name="X").replace(
                    "name: X", 'name: !!python/object/apply:os.system ["touch pwned"]'
                ),
            ),
        ),
    ),
    Case(
        "alibi-needs-a-bias-kernel",
        (
            "validate",
            "bert-tiny",  # global attention: a kernel without a window is refused for alibi alone
            "model/positional=alibi",
            f"model/kernel={(NO_BIAS_KERNELS or ['?'])[0]}",
        ),
        ("model.kernel",),
        ("'alibi'", "bias"),
    ),
]
SKIPS = {
    "alibi-needs-a-bias-kernel": None
    if NO_BIAS_KERNELS
    else "every registered kernel provides 'bias' or 'alibi' "
    f"({', '.join(REGISTRY.names('kernel'))}), so no recipe can pair alibi with a bias-less kernel; "
    "the rule itself is tested in-process by test_alibi_rule_without_a_bias_kernel",
}


@dataclasses.dataclass
class Result:
    rc: int
    stdout: str
    stderr: str
    left: dict[str, list[str]]  # what the run left in the folders that must stay empty


def run_case(case: Case, root: Path) -> Result:
    rec, cwd, home, tmp = (root / d for d in ("rec", "cwd", "home", "tmp"))
    for d in (rec, cwd, home, tmp):
        d.mkdir()
    for name, text in case.files:
        (rec / name).write_text(text)
    argv = [a.replace("{rec}", str(rec)) for a in case.argv]
    if case.script:
        env = {**os.environ, "HOME": str(home), "TMPDIR": str(tmp)}
        env.pop("BERTSMITH_CACHE", None)  # the default cache is under HOME, which must stay empty
        p = subprocess.run(
            [str(SCRIPT), *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
        )
    else:  # in this process, with the same working directory, HOME and TMPDIR
        with pytest.MonkeyPatch.context() as mp:
            mp.chdir(cwd)
            mp.setenv("HOME", str(home))
            mp.setenv("TMPDIR", str(tmp))
            mp.setattr(tempfile, "tempdir", str(tmp))
            mp.delenv("BERTSMITH_CACHE", raising=False)
            p = run_main(*argv)
    # torch itself may leave an empty torchinductor_<user> cache folder in TMPDIR: not ours
    left = {
        d.name: sorted(x.name for x in d.iterdir() if not x.name.startswith("torchinductor_"))
        for d in (cwd, home, tmp)
    }
    return Result(p.returncode, p.stdout, p.stderr, left)


@pytest.fixture(scope="module")
def results(request, tmp_path_factory):
    """Run the selected cases up front: those through the console script in parallel
    processes, meanwhile the others in this process (``helpers.run_main``)."""
    wanted = set()
    for item in request.session.items:
        spec = getattr(item, "callspec", None)
        if spec is not None and item.module is request.module and "case" in spec.params:
            wanted.add(spec.params["case"].id)
    todo = [c for c in CASES if c.id in wanted and not SKIPS.get(c.id)]
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        futures = {c.id: pool.submit(run_case, c, tmp_path_factory.mktemp(c.id)) for c in todo if c.script}
        for c in todo:
            if not c.script:
                futures[c.id] = Future()
                futures[c.id].set_result(run_case(c, tmp_path_factory.mktemp(c.id)))
        yield futures


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_user_error_is_one_line_per_problem(case, results):
    if SKIPS.get(case.id):
        pytest.skip(SKIPS[case.id])
    r = results[case.id].result()
    assert r.rc == 2, (r.stdout, r.stderr)
    assert "Traceback" not in r.stdout + r.stderr
    assert r.stdout == ""
    lines = r.stderr.splitlines()
    assert len(lines) == len(case.keys), r.stderr
    for line, key in zip(lines, case.keys, strict=True):
        assert line.startswith(f"error: {key}: "), line
    for hint in case.hints:
        assert hint in r.stderr
    assert r.left == {"cwd": [], "home": [], "tmp": []}


@pytest.mark.parametrize("seq_len", ["-5", "0"])
def test_inspect_refuses_a_sequence_length_below_one(seq_len, tmp_path, monkeypatch):
    """FLOPs per token at no tokens mean nothing: a user error, not a traceback or a default."""
    monkeypatch.chdir(tmp_path)
    p = run_main("inspect", "modernbert-tiny", f"--seq-len={seq_len}", "--json")
    assert "Traceback" not in p.stderr
    assert p.returncode == 2, p.stdout[-300:]
    assert "seq-len" in p.stderr or "seq_len" in p.stderr
    assert p.stdout == ""


def test_model_validator_error_names_the_key():
    """A params model's own check (rope's even ``dim``) is reported at the key, not the slot."""
    with pytest.raises(SpecError) as e:
        registry.compose("modernbert-tiny", ["model.positional.dim=3"])
    (line,) = e.value.lines
    assert line.startswith("model.positional.dim: given 3, allowed:"), line
    assert "even" in line


# --- the alibi rule, with a kernel that lacks a score bias -----------------------------------


def test_alibi_rule_without_a_bias_kernel(monkeypatch):
    """alibi needs a kernel with ``bias`` or ``alibi``; strip both from sdpa and ask again."""
    sdpa = REGISTRY.get("kernel", "sdpa")
    monkeypatch.setitem(
        REGISTRY.entries["kernel"],
        "sdpa",
        dataclasses.replace(sdpa, provides=sdpa.provides - {"bias", "alibi"}),
    )
    able = [e.name for e in REGISTRY.entries["kernel"].values() if e.provides & {"bias", "alibi"}]
    spec = registry.compose("modernbert-tiny", ["model/positional=alibi", "model/kernel=sdpa"])
    (line,) = registry.problems(spec)
    assert line.startswith("model.kernel: given 'sdpa', but positional 'alibi' needs a kernel with")
    assert line.endswith(f"allowed: {', '.join(able) or 'none registered'}")
    assert "sdpa" not in line.split("allowed:")[1]
    with pytest.raises(SpecError) as e:
        registry.check(spec)
    assert e.value.lines == [line]


# --- a recipe cannot import or run code --------------------------------------------------------


@pytest.fixture
def canary(tmp_path, monkeypatch):
    """An importable module that leaves a file behind if anything imports it."""
    name = f"bertsmith_canary_{uuid.uuid4().hex[:8]}"
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    sentinel = tmp_path / "imported"
    (pkg / f"{name}.py").write_text(
        f"from pathlib import Path\nPath({str(sentinel)!r}).touch()\ndef boom(*a, **k):\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(pkg))
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    yield name
    assert name not in sys.modules, "a recipe made bertsmith import a module"
    assert not sentinel.exists(), "a recipe made bertsmith import a module"
    assert list(work.iterdir()) == []


@pytest.mark.parametrize(
    "where, key",
    [
        ({"_target_": "{mod}.boom"}, "model._target_"),
        ({"mlp": {"kind": "mlp", "_target_": "{mod}.boom"}}, "model.mlp._target_"),
        ({"head": {"kind": "mlm", "_target_": "{mod}.boom", "_partial_": True}}, "model.head._target_"),
        ({"bias": {"qkv": {"_target_": "{mod}.boom"}}}, "model.bias.qkv._target_"),
        ({"name": [{"_target_": "{mod}.boom"}]}, "model.name[0]._target_"),
    ],
    ids=["top", "slot", "head-partial", "nested", "in-a-list"],
)
def test_target_anywhere_in_the_model_is_refused(where, key, canary, tmp_path):
    text = recipe_text(**where).replace("{mod}", canary)
    path = tmp_path / "r.yaml"
    path.write_text(text)
    with pytest.raises(SpecError) as e:
        registry.compose(str(path))
    (line,) = e.value.lines
    assert line.startswith(f"{key}: given '{canary}.boom', allowed: nothing;")
    assert "cannot name Python objects" in line


@pytest.mark.parametrize(
    "overrides",
    [
        ["model.mlp.activation={mod}.boom"],
        ["model.kernel.kind={mod}.boom"],
        ["model/positional={mod}.boom"],
        ["model.mlp._target_={mod}.boom"],
    ],
    ids=["activation", "kind", "slot-entry", "target-override"],
)
def test_blocks_are_looked_up_by_name_never_imported(overrides, canary):
    with pytest.raises(SpecError) as e:
        registry.validate("modernbert-tiny", [o.replace("{mod}", canary) for o in overrides])
    assert len(e.value.lines) == 1
    assert f"{canary}.boom" in e.value.lines[0]


def test_env_interpolation_is_a_plain_string(tmp_path, monkeypatch):
    """``${oc.env:X}`` substitutes X's text; text that looks like shell code stays text."""
    shellish = "$(touch pwned) `touch pwned2`; touch pwned3"
    monkeypatch.setenv("BERTSMITH_TEST_NAME", shellish)
    monkeypatch.setenv("HOME", "/home/someone")
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "r.yaml"
    path.write_text(recipe_text(name="${oc.env:HOME}"))
    assert registry.compose(str(path)).name == "/home/someone"
    spec = registry.compose("modernbert-tiny", ["model.name=${oc.env:BERTSMITH_TEST_NAME}"])
    assert spec.name == shellish
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.yaml"]


@pytest.mark.parametrize("resolver", ["eval", "python", "exec", "import"])
@pytest.mark.parametrize("via", ["file", "override"])
def test_unknown_resolvers_are_refused(resolver, via, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    value = f'${{{resolver}:\'__import__("os").system("touch pwned")\'}}'
    path = tmp_path / "r.yaml"
    path.write_text(recipe_text(name=value if via == "file" else "x"))
    overrides = [f"model.name={value}"] if via == "override" else []
    with pytest.raises(SpecError) as e:
        registry.compose(str(path), overrides)
    (line,) = e.value.lines
    assert line.startswith("model: ") and resolver in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.yaml"]


def test_only_known_resolvers_are_registered():
    """Interpolations can only call OmegaConf's and Hydra's own resolvers, none of which runs code."""
    from omegaconf.basecontainer import BaseContainer

    registry.compose("modernbert-tiny")
    safe = {
        "oc.create",
        "oc.decode",
        "oc.deprecated",
        "oc.dict.keys",
        "oc.dict.values",
        "oc.env",
        "oc.select",
    }
    safe |= {"hydra", "now", "python_version"}
    assert set(BaseContainer._resolvers) <= safe


def test_env_interpolation_via_cli(tmp_path, monkeypatch):
    """End to end: the spec's name is the variable's text; the command runs nothing else."""
    rec, cwd = tmp_path / "rec", tmp_path / "cwd"
    rec.mkdir()
    cwd.mkdir()
    (rec / "r.yaml").write_text(recipe_text(name="${oc.env:BERTSMITH_TEST_NAME}"))
    monkeypatch.setenv("BERTSMITH_TEST_NAME", "$(touch pwned)")
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.chdir(cwd)
    p = run_main("validate", rec / "r.yaml")  # in this process
    assert (p.returncode, p.stderr) == (0, "")
    assert p.stdout == f"ok: $(touch pwned) ({rec / 'r.yaml'})\n"
    assert list(cwd.iterdir()) == []
    assert sorted(x.name for x in tmp_path.iterdir() if not x.name.startswith("torchinductor_")) == [
        "cwd",
        "rec",
    ]
