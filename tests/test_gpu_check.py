"""``scripts/gpu-check`` is honest, checked on CPU: its verdict on pytest's junit report
(``scripts/gpu_check_report.py skips``), the bench table, and the script itself run against a
stand-in Python that pretends to have CUDA.

A kernel whose tests skip because its package is missing or unusable fails the check unless
``BERTSMITH_GPU_SKIP`` names it; skips for what a kernel does not provide pass; a run in which
no test ran fails.
"""

from __future__ import annotations

import importlib.util
import json
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from helpers import ROOT

SCRIPT = ROOT / "scripts" / "gpu-check"
spec = importlib.util.spec_from_file_location("gpu_check_report", ROOT / "scripts" / "gpu_check_report.py")
report = sys.modules["gpu_check_report"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(report)

FLASH_MISSING = (
    "flash_attn: needs CUDA and the flash-attn package (pip install 'bertsmith[flash]'); "
    "flash-attn is not installed"
)
XFORMERS_BROKEN = (
    "xformers: needs CUDA and the xformers package (pip install 'bertsmith[xformers]'); "
    "importing xformers failed: undefined symbol: _ZN3c104cuda9SetDeviceEi"
)
NO_WINDOW = "xformers does not provide window"


def junit(passed: int = 0, failed: int = 0, skips: tuple[str, ...] = ()) -> str:
    """A junit XML report as pytest writes it (``skipped`` carries the reason as ``message``)."""
    cases = [f'<testcase classname="tests.test_gpu_kernels" name="ok{i}" time="0.1"/>' for i in range(passed)]
    cases += [
        f'<testcase classname="t" name="bad{i}"><failure message="assert">boom</failure></testcase>'
        for i in range(failed)
    ]
    for i, reason in enumerate(skips):
        msg = reason.replace("&", "&amp;").replace("'", "&apos;").replace('"', "&quot;")
        cases.append(
            f'<testcase classname="t" name="skip{i}" time="0.0">'
            f'<skipped type="pytest.skip" message="{msg}">tests/test_gpu_kernels.py:1: {msg}</skipped>'
            "</testcase>"
        )
    n = passed + failed + len(skips)
    return (
        '<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest" errors="0" '
        f'failures="{failed}" skipped="{len(skips)}" tests="{n}">{"".join(cases)}</testsuite></testsuites>'
    )


def judge(tmp_path: Path, xml: str, allow: str = "") -> tuple[int, list[str]]:
    path = tmp_path / "gpu-tests.xml"
    path.write_text(xml)
    p = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gpu_check_report.py"), "skips", str(path), "--allow", allow],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert p.stderr == "", p.stderr
    return p.returncode, p.stdout.splitlines()


def test_a_missing_kernel_package_fails_in_one_line_naming_it(tmp_path):
    rc, lines = judge(tmp_path, junit(passed=40, skips=(FLASH_MISSING,) * 30 + (NO_WINDOW,)))
    assert rc == 1
    (fail,) = [line for line in lines if "FAIL" in line]
    assert fail.startswith("gpu-check: FAIL: flash_attn: 30 test(s) skipped")
    assert "flash-attn is not installed" in fail and "BERTSMITH_GPU_SKIP=flash_attn" in fail


def test_an_unusable_kernel_package_fails_too(tmp_path):
    rc, lines = judge(tmp_path, junit(passed=3, skips=(FLASH_MISSING, XFORMERS_BROKEN)), allow="flash_attn")
    assert rc == 1
    (fail,) = [line for line in lines if "FAIL" in line]
    assert "xformers" in fail and "importing xformers failed" in fail
    assert any("flash_attn: 1 test(s) skipped, allowed by BERTSMITH_GPU_SKIP" in line for line in lines)


@pytest.mark.parametrize("allow", ["flash_attn", "flash-attn", "xformers, flash_attn", "xformers flash-attn"])
def test_a_kernel_allowed_to_be_missing_passes(tmp_path, allow):
    rc, lines = judge(tmp_path, junit(passed=40, skips=(FLASH_MISSING,) * 30), allow=allow)
    assert rc == 0, lines
    assert not any("FAIL" in line for line in lines)
    assert (
        lines[-1]
        == "gpu-check: 40 passed, 0 failed, 30 skipped (0 for what a kernel or configuration does not provide)"
    )


def test_skips_for_what_a_kernel_does_not_provide_pass(tmp_path):
    refused = "model.kernel: given 'xformers', which does not provide 'alternating' windows"
    compiled = "compiled flex compiles for tens of seconds per mask: one model is enough"
    rc, lines = judge(
        tmp_path, junit(passed=5, skips=(NO_WINDOW, "flex does not provide bias", refused, compiled))
    )
    assert rc == 0, lines
    assert lines == [
        "gpu-check: 5 passed, 0 failed, 4 skipped (4 for what a kernel or configuration does not provide)"
    ]


@pytest.mark.parametrize(
    "xml",
    [junit(), junit(skips=(NO_WINDOW, "needs CUDA")), junit(skips=(FLASH_MISSING,))],
    ids=["none-collected", "all-skipped", "all-skipped-allowed"],
)
def test_no_test_run_fails(tmp_path, xml):
    rc, lines = judge(tmp_path, xml, allow="flash_attn")
    assert rc == 1
    assert [line for line in lines if "FAIL" in line] == [
        f"gpu-check: FAIL: no test ran ({xml.count('<skipped')} collected, all skipped)"
    ]


def test_failures_are_counted_and_left_to_pytest_exit_status(tmp_path):
    rc, lines = judge(tmp_path, junit(passed=2, failed=1))
    assert rc == 0 and lines[-1].startswith("gpu-check: 2 passed, 1 failed, 0 skipped")


def test_a_missing_or_broken_report_is_exit_2(tmp_path):
    rc, lines = judge(tmp_path, "<testsuites><testsuite>")
    assert rc == 2 and lines[0].startswith("gpu-check: FAIL: cannot read the test report")
    assert report.main(["skips", str(tmp_path / "absent.xml")]) == 2


def test_the_reason_the_gpu_tests_skip_with_is_the_one_recognised(monkeypatch):
    """The skip mark tests/test_gpu_kernels.py puts on a kernel whose package is missing, with
    CUDA faked present: the helper's pattern reads its kernel and distribution."""
    import test_gpu_kernels as t

    monkeypatch.setattr(t, "CUDA", True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None)
    for kernel, dist in (("flash_attn", "flash-attn"), ("xformers", "xformers")):
        (param,) = t._kernel_params(lambda n, p, k=kernel: n == k)
        (reason,) = [m.kwargs["reason"] for m in param.marks if m.name == "skip"]
        m = report.MISSING.match(reason)
        assert m and m["kernel"] == kernel and m["dist"] == dist, reason
    (param,) = t._kernel_params(lambda n, p: n == "sdpa")
    assert [m.name for m in param.marks] == ["gpu"]


def test_a_real_pytest_report_is_read_as_pytest_writes_it(tmp_path):
    """pytest's own junit XML, from a file whose tests skip as tests/test_gpu_kernels.py's do."""
    (tmp_path / "test_fake.py").write_text(
        textwrap.dedent(
            f"""
            import pytest

            def test_ran():
                pass

            @pytest.mark.skip(reason={FLASH_MISSING!r})
            def test_flash():
                pass

            def test_capability():
                pytest.skip({NO_WINDOW!r})
            """
        )
    )
    xml = tmp_path / "out.xml"
    p = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={xml}", "test_fake.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    v = report.decide(xml, set())
    assert v.ran == 1 and not v.ok and list(v.missing) == ["flash_attn"] and sum(v.legit.values()) == 1
    assert report.decide(xml, {"flash_attn"}).ok


def test_the_bench_table_combines_the_runs(tmp_path, capsys):
    rows = [
        {
            "family": "modernbert",
            "case": c,
            "dtype": "bf16",
            "ours_tok_s": 1e5 * (i + 1),
            "hf_tok_s": 5e4,
            "ratio": 2.0 * (i + 1),
        }
        for i, c in enumerate(["fixed", "variable", "long", "train"])
    ]
    (tmp_path / "a.json").write_text(json.dumps({"env": {"kernel": "sdpa"}, "rows": rows}))
    assert (
        report.main(
            [
                "table",
                f"sdpa:sdpa:{tmp_path / 'a.json'}",
                f"flash_attn:flash_attention_2:{tmp_path / 'b.json'}",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["kernel", "hf-attn", "case", "ours", "tok/s", "hf", "tok/s", "ratio"]
    assert out[1].split() == ["sdpa", "sdpa", "fixed", "100,000", "50,000", "2.00x"]
    assert out[4].split() == ["sdpa", "sdpa", "train", "400,000", "50,000", "8.00x"]
    assert out[5].startswith("flash_attn") and "flash_attention_2" in out[5] and "no results" in out[5]


# --- the script itself, with a stand-in Python that has "CUDA" -------------------------------

FAKE_PY = r"""#!/usr/bin/env bash
# a Python whose torch "sees CUDA": the script's own probes answered, pytest and bench faked
if [ "$1" = -c ]; then
  case "$2" in
    *flash_attn_varlen_func*) exit 1 ;;                      # flash-attn does not import
    *get_device_name*) echo "torch 0.0 (fake), Fake GPU"; exit 0 ;;
    *cuda.is_available*) exit 0 ;;
  esac
fi
if [ "$1" = -m ] && [ "$2" = pytest ]; then
  for a in "$@"; do case $a in --junitxml=*) cp "$FAKE_JUNIT" "${a#--junitxml=}" ;; esac; done
  echo "pytest (fake): $*"
  exit "${FAKE_PYTEST_RC:-0}"
fi
if [ "$1" = -m ] && [ "$2" = bertsmith.train.cli ]; then
  echo "bench (fake): $*" >&2
  echo "$*" >>"$FAKE_BENCH_CALLS"
  cat "$FAKE_BENCH_JSON"
  exit "${FAKE_BENCH_RC:-0}"
fi
exec "$FAKE_REAL_PY" "$@"
"""


def gpu_check(tmp_path: Path, xml: str, **env) -> subprocess.CompletedProcess:
    fake = tmp_path / "python"
    fake.write_text(FAKE_PY)
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    (tmp_path / "junit.xml").write_text(xml)
    rows = [{"family": "modernbert", "case": "fixed", "ours_tok_s": 2e5, "hf_tok_s": 1e5, "ratio": 2.0}]
    (tmp_path / "bench.json").write_text(json.dumps({"env": {}, "rows": rows}))
    (tmp_path / "wheels").mkdir(exist_ok=True)
    given = {k: v for k, v in os.environ.items() if not k.startswith("BERTSMITH_") and k != "OUT"}
    full = {
        **given,
        "BERTSMITH_PYTHON": str(fake),
        "BERTSMITH_WHEELS": str(tmp_path / "wheels"),
        "BERTSMITH_REPORT": str(tmp_path / "report"),
        "FAKE_REAL_PY": sys.executable,
        "FAKE_JUNIT": str(tmp_path / "junit.xml"),
        "FAKE_BENCH_JSON": str(tmp_path / "bench.json"),
        "FAKE_BENCH_CALLS": str(tmp_path / "bench-calls.txt"),
        **env,
    }
    return subprocess.run(
        ["bash", str(SCRIPT)],
        capture_output=True,
        text=True,
        env=full,
        timeout=300,
        check=False,
        cwd=tmp_path,
    )


def test_the_script_fails_on_a_missing_kernel_and_passes_when_it_is_allowed(tmp_path):
    xml = junit(passed=10, skips=(FLASH_MISSING,) * 4 + (NO_WINDOW,))
    p = gpu_check(tmp_path, xml)
    assert p.returncode == 1, p.stdout + p.stderr
    fails = [line for line in p.stdout.splitlines() if line.startswith("gpu-check: FAIL: ")]
    assert len(fails) == 1 and "flash_attn: 4 test(s) skipped" in fails[0], p.stdout
    assert "gpu-check: tests: FAILED (flash_attn: 4 test(s) skipped" in p.stdout
    assert (tmp_path / "report" / "gpu-tests.xml").exists() and (
        tmp_path / "report" / "gpu-skips.log"
    ).exists()
    # the bench ran anyway, sdpa against transformers' sdpa only: flash-attn does not import
    (call,) = (tmp_path / "bench-calls.txt").read_text().splitlines()
    assert "--kernel sdpa --hf-attn sdpa" in call and "--case fixed variable long train" in call
    assert "--family modernbert --size base" in call and "--dtype bf16" in call
    assert "flash_attn vs transformers flash_attention_2: left out" in p.stdout
    assert any(line.split()[:3] == ["sdpa", "sdpa", "fixed"] for line in p.stdout.splitlines()), p.stdout

    p = gpu_check(tmp_path, xml, BERTSMITH_GPU_SKIP="flash-attn")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "gpu-check: tests: passed" in p.stdout and "gpu-check: FAIL" not in p.stdout


def test_the_script_exit_status_for_failed_tests_and_a_failed_bench(tmp_path):
    p = gpu_check(tmp_path, junit(passed=3, failed=1), FAKE_PYTEST_RC="1")
    assert p.returncode == 1 and "gpu-check: tests: FAILED (pytest exit 1)" in p.stdout
    p = gpu_check(tmp_path, junit(passed=3), FAKE_BENCH_RC="2")
    assert p.returncode == 3 and "sdpa/sdpa FAILED (exit 2" in p.stdout
