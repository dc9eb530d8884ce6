"""The README's examples run, so they never rot."""

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()
BLOCKS = re.findall(r"<!-- readme-test -->\n```(\w+)\n(.*?)```", README, re.S)
COMMANDS = [line for lang, body in BLOCKS if lang == "bash" for line in body.splitlines() if line.strip()]
PYTHON = [body for lang, body in BLOCKS if lang == "python"]


def test_readme_has_tested_examples():
    assert len(COMMANDS) >= 4 and PYTHON


@pytest.mark.parametrize("command", COMMANDS)
def test_readme_command(command, tmp_path):
    argv = shlex.split(command)
    assert argv[0] == "bertsmith"
    run = subprocess.run(
        [sys.executable, "-m", "bertsmith.train.cli", *argv[1:]],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"PYTHONPATH": str(Path(__file__).resolve().parent.parent), "PATH": ""},
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip()


@pytest.mark.parametrize("code", PYTHON)
def test_readme_python(code):
    exec(compile(code, "README.md", "exec"), {})


def test_readme_error_example_is_true():
    block = re.search(r"```console\n\$ (bertsmith .*?)\n(.*?)```", README, re.S)
    argv = shlex.split(block.group(1))
    run = subprocess.run(
        [sys.executable, "-m", "bertsmith.train.cli", *argv[1:]], capture_output=True, text=True
    )
    assert run.returncode == 2
    assert run.stderr.strip() == block.group(2).strip()
