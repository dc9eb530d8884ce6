"""Fuzz harness: valid recipes, ``spec.yaml`` files, transformers ``config.json`` files and
safetensors files, mutated by ``hypothesis`` (``tests/fuzz_inputs.py`` says how), each run
through the bertsmith command that reads it.

For every example, whatever the input:

- the command exits 0, or exits 2 with one ``error: ...`` line per problem on stderr (at
  least one, and nothing else: no traceback, no warning, no line broken by a newline in a
  value); never a traceback, another exit status or a signal;
- it ends within ``BERTSMITH_FUZZ_TIMEOUT`` seconds (20) and within an address-space limit
  of what the process holds when it starts plus 3 GiB (``RLIMIT_AS``): a hang or a huge
  allocation fails the example (it shows as a timeout, or as a ``MemoryError`` or
  "can't allocate memory" traceback);
- the input directory is unchanged (every entry hashed before and after), and a refused
  command (exit 2) leaves nothing at ``--out``.

Each example runs in a child forked from the test process (torch and the registry already
imported, so an example costs a fraction of a second instead of a fresh interpreter's
seconds); the child sets the resource limit, one torch thread, a watchdog that dumps the
stack and exits at the time bound (and SIGALRM after it), and sends stdout and stderr to
files. The CLI is called in-process there as ``bertsmith`` would call it
(``bertsmith.train.cli.main``; ``registry.load`` is wrapped the same way: a ``SpecError`` is
printed as ``error:`` lines and exit 2).

Environment:

- ``BERTSMITH_FUZZ_EXAMPLES=N``: examples per target (default 25: the whole file takes well under a minute).
- ``BERTSMITH_FUZZ_SEED=S``: a random seed instead of the fixed (derandomized) sequence.
- ``BERTSMITH_FUZZ_KEEP_GOING=1``: record every failing example and fail at the end of the
  target, instead of at the first one.
- ``BERTSMITH_FUZZ_SHRINK=1``: let hypothesis shrink a failing example (slow when it hangs).
- ``BERTSMITH_FUZZ_OUT=DIR``: where failing inputs and per-target counts are written
  (default: a folder under pytest's temporary directory, named in every failure).
- ``BERTSMITH_FUZZ_TIMEOUT=S``: the time bound per example (default 20).
"""

from __future__ import annotations

import faulthandler
import io
import json
import os
import re
import resource
import shutil
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path

import fuzz_inputs as fi
import pytest
from helpers import run_main, warnings_as_a_fresh_process
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

DEFAULT_EXAMPLES, DEFAULT_TIMEOUT = 25, 20  # per target; seconds per example (README states both)
EXAMPLES = int(os.environ.get("BERTSMITH_FUZZ_EXAMPLES", DEFAULT_EXAMPLES))
SEED = os.environ.get("BERTSMITH_FUZZ_SEED")
KEEP_GOING = os.environ.get("BERTSMITH_FUZZ_KEEP_GOING", "") not in ("", "0")
SHRINK = os.environ.get("BERTSMITH_FUZZ_SHRINK", "") not in ("", "0")
TIMEOUT = max(1, int(os.environ.get("BERTSMITH_FUZZ_TIMEOUT", DEFAULT_TIMEOUT)))
MEMORY_MARGIN = 3 << 30  # bytes of address space an example may add to what the process holds
KEPT_PER_SIGNATURE = 3  # failing inputs written to disk per distinct failure


def fuzz_settings(fn):
    phases = [Phase.explicit, Phase.reuse, Phase.generate] + ([Phase.shrink] if SHRINK else [])
    fn = settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=SEED is None,
        phases=phases,
        suppress_health_check=list(HealthCheck),
        report_multiple_bugs=False,
        print_blob=False,
    )(fn)
    return seed(int(SEED))(fn) if SEED is not None else fn


# --- running one example in a forked child -----------------------------------------------------


def _load_like_cli(directory: str) -> int:
    """``registry.load(directory)`` with the CLI's handling of user errors."""
    from bertsmith import registry
    from bertsmith.registry.errors import SpecError

    try:
        registry.load(directory)
    except SpecError as e:
        for line in e.lines:
            print(f"error: {line}", file=sys.stderr)
        return 2
    return 0


def _cli(argv: list[str]) -> int:
    from bertsmith.train.cli import main

    return main(argv)


def _vm_size() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _child(call, out_path: str, err_path: str) -> None:
    """In the forked child: limits, redirected output, the call; never returns."""
    rc = 70
    try:
        for fd, path in ((1, out_path), (2, err_path)):
            f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(f, fd)
            os.close(f)
        sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), write_through=True)
        sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), write_through=True)
        faulthandler.dump_traceback_later(TIMEOUT, exit=True, file=sys.stderr)  # prints "Timeout (...)!"
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
        signal.alarm(TIMEOUT + 5)  # if even the watchdog is stuck
        import torch

        torch.set_num_threads(1)
        limit = _vm_size() + MEMORY_MARGIN
        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
        with warnings_as_a_fresh_process():
            try:
                rc = call()
            except SystemExit as e:
                rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:
        traceback.print_exc()
        rc = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(rc if isinstance(rc, int) and 0 <= rc < 256 else 1)


class Outcome:
    def __init__(self, rc: int | None, signal_: int | None, stdout: str, stderr: str, seconds: float):
        self.rc, self.signal, self.stdout, self.stderr, self.seconds = rc, signal_, stdout, stderr, seconds


def run_isolated(call, work: Path) -> Outcome:
    """``call()`` in a forked child (see ``_child``); the parent kills it 15 s after the bound."""
    out_path, err_path = work / "child.stdout", work / "child.stderr"
    sys.stdout.flush()
    sys.stderr.flush()
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:
        _child(call, str(out_path), str(err_path))
    status = None
    while status is None:
        done, st_ = os.waitpid(pid, os.WNOHANG)
        if done:
            status = st_
        elif time.monotonic() - start > TIMEOUT + 15:
            os.kill(pid, signal.SIGKILL)
            status = os.waitpid(pid, 0)[1]
        else:
            time.sleep(0.005)
    seconds = time.monotonic() - start
    read = lambda p: p.read_text(encoding="utf-8", errors="replace") if p.exists() else ""  # noqa: E731
    if os.WIFSIGNALED(status):
        return Outcome(None, os.WTERMSIG(status), read(out_path), read(err_path), seconds)
    return Outcome(os.WEXITSTATUS(status), None, read(out_path), read(err_path), seconds)


# --- judging an example --------------------------------------------------------------------------

_FRAME = re.compile(r'File "([^"]+)", line (\d+)')


def _where(text: str, innermost_first: bool = False, ours: bool = False) -> str:
    """``file:line`` of the innermost frame of a traceback (of a faulthandler dump, which
    lists it first, with ``innermost_first``), or of bertsmith's innermost frame (``ours``)."""
    frames = _FRAME.findall(text)
    if ours:
        root = str(fi.ROOT) + "/"
        frames = [f for f in frames if f[0].startswith(root) and not f[0].startswith(root + "tests/")]
    if not frames:
        return "?"
    path, line = frames[0] if innermost_first else frames[-1]
    for root in (
        str(fi.ROOT) + "/",
        "site-packages/",
        f"lib/python{sys.version_info[0]}.{sys.version_info[1]}/",
    ):
        if root in path:
            path = path.split(root, 1)[1]
            break
    return f"{path}:{line}"


def problems(outcome: Outcome, before: dict, after: dict, out: Path | None) -> tuple[str, str] | None:
    """``(signature, explanation)`` when the example broke the contract, else None. The
    signature names the kind of failure and the place, so distinct failures can be counted."""
    err = outcome.stderr
    if "Timeout (0:" in err or outcome.signal in (signal.SIGALRM, signal.SIGKILL):
        return f"hang at {_where(err.split('Timeout (0:', 1)[-1], innermost_first=True)}", (
            f"no exit within {TIMEOUT} s"
        )
    if outcome.signal is not None:
        return (
            f"signal {signal.Signals(outcome.signal).name}",
            f"killed by {signal.Signals(outcome.signal).name}",
        )
    if "Traceback" in err:
        lines = err.split("\n")
        frame = max((i for i, line in enumerate(lines) if _FRAME.search(line)), default=-1)
        last = next((line for line in lines[frame + 1 :] if line and not line[0].isspace()), "?")
        exc = last.split(":", 1)[0].rsplit(".", 1)[-1]
        memory = any(
            s in err for s in ("MemoryError", "can't allocate memory", "bad_alloc", "Cannot allocate memory")
        )
        kind = "memory" if memory else "traceback"
        where, ours = _where(err), _where(err, ours=True)
        via = f" via {ours}" if ours not in (where, "?") else ""
        return f"{kind} {exc} at {where}{via}", f"traceback, exit {outcome.rc}: {last[:300]}"
    if outcome.seconds > TIMEOUT:
        return "slow", f"took {outcome.seconds:.1f} s"
    if outcome.rc not in (0, 2):
        return f"exit {outcome.rc}", f"exit status {outcome.rc}"
    if outcome.rc == 2:
        lines = [line for line in err.split("\n") if line.strip()]  # terminal lines: "\n" only
        stray = next((i for i, line in enumerate(lines) if not line.startswith("error: ")), None)
        if not lines:
            return "exit 2 without an error line", "exit 2 and nothing on stderr"
        if stray is not None:
            after = lines[stray - 1][7:].split(":", 1)[0][:40] if stray else "-"
            return f"exit 2 with a line that is not an error line (after {ascii(after)})", (
                f"exit 2, stderr line {stray + 1} of {len(lines)} is not an 'error: ' line: {lines[stray][:200]!r}"
            )
        if out is not None and (out.exists() or out.is_symlink()):
            return "exit 2 left --out behind", f"exit 2 but {out} exists"
    if before != after:
        changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
        return f"input changed (exit {outcome.rc})", f"input directory changed: {changed}"
    return None


# --- the targets ---------------------------------------------------------------------------------


class Target:
    """One fuzz target: counts its examples and keeps (or raises) its failures."""

    def __init__(self, name: str, out_root: Path):
        self.name = name
        self.root = out_root / name
        self.work = out_root / "work" / name
        self.examples = 0
        self.exits: dict[str, int] = {}  # "0", "2", "other": how the examples ended
        self.failures: dict[str, list[str]] = {}  # signature -> saved example folders

    def run(self, case: fi.Case, seed_dir: Path, command) -> None:
        """Put ``case`` into a copy of ``seed_dir``, run ``command(input_dir, out_path)``
        (returns ``(call, argv_text)``) in a child, judge the outcome."""
        self.examples += 1
        self.work.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix="ex-", dir=self.work))
        try:
            inp = tmp / "input"
            fi.copy_tree(seed_dir, inp)
            fi.write_case(inp, case)
            out = tmp / "out" / ("new.yaml" if self.name.endswith("export") else "new")
            out.parent.mkdir()
            call, shown = command(inp, out)
            before = fi.snapshot(inp)
            outcome = run_isolated(call, tmp)
            after = fi.snapshot(inp)
            ended = str(outcome.rc) if outcome.rc in (0, 2) else "other"
            self.exits[ended] = self.exits.get(ended, 0) + 1
            bad = problems(outcome, before, after, out if "--out" in shown else None)
            if bad is None:
                return
            signature, why = bad
            saved = self._save(signature, case, inp, shown, why, outcome)
            message = (
                f"fuzz {self.name}: {why}\n  failure: {signature}\n  input: {case.describe()[:600]}\n"
                f"  saved: {saved}\n  command: {shown}\n  stderr (end):\n{outcome.stderr[-2000:]}"
            )
            if not KEEP_GOING:
                raise AssertionError(message)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _save(self, signature, case, inp: Path, shown: str, why: str, outcome: Outcome) -> Path | None:
        kept = self.failures.setdefault(signature, [])
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", signature)[:80].strip("-")
        if len(kept) >= KEPT_PER_SIGNATURE:
            kept.append("")
            return None
        dest = self.root / f"{slug}" / str(len(kept))
        if dest.exists():
            shutil.rmtree(dest)
        fi.copy_tree(inp, dest / "input")
        (dest / "README").write_text(
            f"target: {self.name}\nfailure: {signature}\nwhat: {why}\ninput: {case.describe()}\n"
            f"command (the input is {dest / 'input'}):\n  {shown.replace(str(inp), str(dest / 'input'))}\n"
            f"exit: {outcome.rc} signal: {outcome.signal} seconds: {outcome.seconds:.1f}\n",
            encoding="utf-8",
        )
        (dest / "stderr").write_text(outcome.stderr, encoding="utf-8")
        kept.append(str(dest))
        return dest

    def run_all(self, check) -> None:
        """Run the hypothesis test ``check``; record the counts whatever happens, then fail
        if any example failed (in keep-going mode ``check`` itself never fails)."""
        try:
            check()
        finally:
            self.record()
        assert not self.failures, f"fuzz {self.name}: {len(self.failures)} distinct failures:\n" + "\n".join(
            f"  {k}  (x{len(v)}; e.g. {next((p for p in v if p), '-')})" for k, v in self.failures.items()
        )

    def record(self) -> None:
        summary = {
            "target": self.name,
            "examples": self.examples,
            "exits": self.exits,
            "failing_examples": sum(len(v) for v in self.failures.values()),
            "distinct_failures": len(self.failures),
            "failures": {k: [p for p in v if p] for k, v in self.failures.items()},
        }
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "counts.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
        print(
            f"fuzz {self.name}: {self.examples} examples (exit 0: {self.exits.get('0', 0)}, "
            f"exit 2: {self.exits.get('2', 0)}), {summary['failing_examples']} failing, "
            f"{len(self.failures)} distinct failures ({self.root})"
        )


@pytest.fixture(scope="module")
def out_root(tmp_path_factory) -> Path:
    given_ = os.environ.get("BERTSMITH_FUZZ_OUT")
    root = Path(given_) if given_ else tmp_path_factory.mktemp("fuzz")
    root.mkdir(parents=True, exist_ok=True)
    return root


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory) -> dict[str, Path]:
    """The valid directories, and one successful run of every command on them in this
    process, so that the forked children find everything imported and warm."""
    dirs = fi.build_fixtures(tmp_path_factory.mktemp("fuzz-seeds"))
    recipes = tmp_path_factory.mktemp("fuzz-recipes")
    for name, data in fi.recipe_seeds().items():
        (recipes / name).write_bytes(data)
    dirs["recipes"] = recipes
    scratch = tmp_path_factory.mktemp("fuzz-warm")
    warm = [
        ("validate", str(recipes / "bert-tiny.yaml")),
        ("inspect", str(recipes / "small-swiglu.yaml")),
        ("export", str(dirs["model-bert"]), "--to", "recipe", "--out", str(scratch / "r.yaml")),
        ("import-hf", str(dirs["hf-bert"]), "--out", str(scratch / "b")),
        ("import-hf", str(dirs["hf-modernbert"]), "--out", str(scratch / "m")),
    ]
    for args in warm:
        ran = run_main(*args)
        assert ran.returncode == 0, (args, ran.stderr)
    assert _load_like_cli(str(dirs["model-modernbert"])) == 0
    return dirs


def _recipe_command(case: fi.Case, verb: str):
    def command(inp: Path, out: Path):
        path = str(inp / case.name)
        return (lambda: _cli([verb, path])), f"bertsmith {verb} {path}"

    return command


def _export_command(inp: Path, out: Path):
    argv = ["export", str(inp), "--to", "recipe", "--out", str(out)]
    return (lambda: _cli(argv)), "bertsmith " + " ".join(argv)


def _load_command(inp: Path, out: Path):
    code = f"from bertsmith import registry; registry.load({str(inp)!r})"
    return (lambda: _load_like_cli(str(inp))), f"python -c {code!r}"


def _import_command(inp: Path, out: Path):
    argv = ["import-hf", str(inp), "--out", str(out)]
    return (lambda: _cli(argv)), "bertsmith " + " ".join(argv)


RECIPES = fi.recipe_seeds()


def test_fuzz_recipe_validate(fixtures, out_root):
    """Mutated recipes -> ``bertsmith validate FILE`` (and ``inspect FILE`` for 1 in 4)."""
    target = Target("recipe-validate", out_root)

    @fuzz_settings
    @given(
        case=fi.mutated_document(RECIPES, "recipe.yaml", "yaml", fi.RECIPE_VALUES), inspect=st.integers(0, 3)
    )
    def check(case, inspect):
        verb = "inspect" if inspect == 3 else "validate"
        # the seed's own name would shadow a base recipe of that name: every case is recipe.yaml
        target.run(case, fixtures["recipes"] / "_empty", _recipe_command(case, verb))

    (fixtures["recipes"] / "_empty").mkdir(exist_ok=True)
    target.run_all(check)


@pytest.fixture(scope="module")
def spec_seeds(fixtures):
    return fi.dir_seeds(fixtures, "model-", "spec.yaml")


def test_fuzz_spec_export(fixtures, out_root, spec_seeds):
    """A model directory with a mutated ``spec.yaml`` -> ``bertsmith export DIR --to recipe``."""
    target = Target("spec-export", out_root)

    @fuzz_settings
    @given(case=fi.mutated_document(spec_seeds, "spec.yaml", "yaml", fi.SPEC_VALUES))
    def check(case):
        target.run(case, fixtures[case.seed], _export_command)

    target.run_all(check)


def test_fuzz_spec_load(fixtures, out_root, spec_seeds):
    """A model directory with a mutated ``spec.yaml`` -> ``registry.load(DIR)``."""
    target = Target("spec-load", out_root)

    @fuzz_settings
    @given(case=fi.mutated_document(spec_seeds, "spec.yaml", "yaml", fi.SPEC_VALUES))
    def check(case):
        target.run(case, fixtures[case.seed], _load_command)

    target.run_all(check)


def test_fuzz_config_import(fixtures, out_root):
    """A transformers directory with a mutated ``config.json`` -> ``bertsmith import-hf``."""
    target = Target("config-import", out_root)
    seeds = fi.dir_seeds(fixtures, "hf-", "config.json")

    @fuzz_settings
    @given(case=fi.config_cases(seeds))
    def check(case):
        target.run(case, fixtures[case.seed], _import_command)

    target.run_all(check)


def test_fuzz_safetensors_import(fixtures, out_root):
    """A transformers directory with a mutated ``model.safetensors`` -> ``bertsmith import-hf``."""
    target = Target("safetensors-import", out_root)
    seeds = fi.dir_seeds(fixtures, "hf-", "model.safetensors")

    @fuzz_settings
    @given(case=fi.safetensors_cases(seeds))
    def check(case):
        target.run(case, fixtures[case.seed], _import_command)

    target.run_all(check)


def test_fuzz_safetensors_load(fixtures, out_root):
    """A bertsmith model directory with a mutated ``model.safetensors`` -> ``registry.load``."""
    target = Target("safetensors-load", out_root)
    seeds = fi.dir_seeds(fixtures, "model-", "model.safetensors")

    @fuzz_settings
    @given(case=fi.safetensors_cases(seeds))
    def check(case):
        target.run(case, fixtures[case.seed], _load_command)

    target.run_all(check)


def test_fuzz_harness_catches_what_it_should(tmp_path):
    """The harness itself: a traceback, a second stderr line, a hang, a huge allocation and a
    changed input are each reported; a clean exit 2 is not."""
    import torch

    from bertsmith.registry.errors import SpecError

    def raise_(exc):
        raise exc

    def two_lines():
        print("error: one\ntwo", file=sys.stderr)
        return 2

    def allocate():
        torch.empty(8 << 30, dtype=torch.uint8).fill_(1)
        return 0

    def clean():
        print("error: x: given 1, allowed: 2", file=sys.stderr)
        return 2

    cases = {
        "traceback KeyError": lambda: raise_(KeyError("x")),
        "traceback SpecError": lambda: raise_(SpecError("x")),  # escaping main is a traceback too
        "exit 2 with a line that is not an error line": two_lines,
        "memory RuntimeError": allocate,
        "exit 3": lambda: 3,
    }
    for want, call in cases.items():
        bad = problems(run_isolated(call, tmp_path), {}, {}, None)
        assert bad is not None and bad[0].startswith(want), (want, bad)
    assert problems(run_isolated(clean, tmp_path), {}, {}, None) is None
    assert problems(run_isolated(lambda: clean() and clean(), tmp_path), {}, {}, None) is None  # 2 problems
    assert problems(run_isolated(clean, tmp_path), {"a": 1}, {"a": 2}, None)[0] == "input changed (exit 2)"
    global TIMEOUT
    saved, TIMEOUT = TIMEOUT, 1
    try:
        bad = problems(run_isolated(lambda: time.sleep(30), tmp_path), {}, {}, None)
    finally:
        TIMEOUT = saved
    assert bad is not None and bad[0].startswith("hang at"), bad


def test_readme_states_the_harness_defaults():
    """README's description of the harness (examples per target, time and memory bounds) is
    what this file runs when no environment variable changes it."""
    from helpers import ROOT

    readme = " ".join((ROOT / "README.md").read_text().split())
    said = re.search(
        r"under a (\d+) s and a (\d+) GiB address-space bound.*?a fixed sequence of (\d+) examples per target",
        readme,
    )
    assert said, "README no longer describes the fuzz harness's bounds and default count"
    stated = (int(said[1]), int(said[2]) << 30, int(said[3]))
    assert stated == (DEFAULT_TIMEOUT, MEMORY_MARGIN, DEFAULT_EXAMPLES)
