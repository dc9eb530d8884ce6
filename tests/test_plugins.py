"""Plugins: blocks from modules outside the repository (``BERTSMITH_PLUGINS``, the entry-point
group ``bertsmith.blocks``) are listed with their source, compose, build and appear in the
schema; a plugin that is missing, raises or shadows a built-in is one line, exit 2, nothing
written.

Loading a plugin changes the process-wide registry, so the checks run in a subprocess (one
script, the CLI's ``main`` called in-process there) and this test session's registry stays
the built-ins'.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "bertsmith-example-plugin"
SCRIPT = Path(sys.executable).with_name("bertsmith")

MODULES = {
    # a positional scheme (a top-level slot of the spec), next to the recipe
    "my_blocks.py": '''
        """A tiny plugin for the tests."""
        from bertsmith.blocks.positional import PositionalScheme
        from bertsmith.registry.core import register

        @register("positional", "nothing_at_all")
        class NothingAtAll(PositionalScheme):
            """No positional information, from a plugin."""
    ''',
    "boom_blocks.py": """
        raise RuntimeError("boom at import\\nand a second line")
    """,
    "shadow_blocks.py": '''
        import torch
        from bertsmith.registry.core import register

        @register("activation", "halfrelu")
        class HalfRelu(torch.nn.Module):
            """Registered before the failure below: it must not stay registered."""

        @register("activation", "gelu")
        class MyGelu(torch.nn.GELU):
            """Takes a built-in's name."""
    ''',
    # an installed package's module, found through its entry point (a dist-info folder)
    "site/ep_blocks.py": '''
        import torch
        from bertsmith.registry.core import register

        @register("activation", "ep_act")
        class EpAct(torch.nn.Module):
            """An activation from an entry point (identity)."""

            def forward(self, x):
                return x
    ''',
    "site/fakeplug-0.1.dist-info/METADATA": "Metadata-Version: 2.1\nName: fakeplug\nVersion: 0.1\n",
    "site/fakeplug-0.1.dist-info/entry_points.txt": "[bertsmith.blocks]\nep = ep_blocks\n",
}

CHECKS = r"""
import contextlib, io, json, os, sys
import torch

from bertsmith.train.cli import main

out = {}


def run(*argv):
    o, e = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(o), contextlib.redirect_stderr(e):
        rc = main(list(argv))
    return rc, o.getvalue(), e.getvalue()


os.environ["BERTSMITH_PLUGINS"] = "bertsmith_squareplus,my_blocks"
rc, text, err = run("blocks", "--json")
out["blocks"] = [rc, {f"{r['slot']}/{r['name']}": r["source"] for r in json.loads(text)}, err]
out["validate_act"] = run("validate", "modernbert-tiny", "model/activation=squareplus", "model.mlp.activation.b=2")
out["validate_pos"] = run("validate", "bert-tiny", "model/positional=nothing_at_all")
out["validate_ep"] = run("validate", "bert-tiny", "model/activation=ep_act")
rc, text, err = run("schema")
schema = json.loads(text)

import jsonschema
from bertsmith import registry
from bertsmith.registry.plugins import missing_plugin_lines, plugin_sources
from bertsmith.registry.spec import spec_dict

spec = registry.compose("modernbert-tiny", ["model/activation=squareplus", "model.mlp.activation.b=2"])
data = spec_dict(spec)
out["schema"] = [rc, "squareplus" in json.dumps(schema["$defs"]["slot.activation"]),
                 [e.message for e in jsonschema.Draft202012Validator(schema).iter_errors(data)]]
out["sources"] = plugin_sources(spec)
data["mlp"]["activation"]["kind"] = "not_here"
out["missing"] = missing_plugin_lines(data, {"mlp.activation": "gone_plugin"})

torch.manual_seed(0)
model = registry.build(spec).eval()
ids = torch.randint(5, spec.vocab_size, (2, 12))
with torch.no_grad():
    y2 = model(ids).last_hidden_state
    other = registry.build(spec.model_copy(update={"mlp": spec.mlp.model_copy(update={"activation": spec.mlp.activation.model_copy(update={"b": 9.0})})}), init=False).eval()
    other.load_state_dict(model.state_dict())
    y9 = other(ids).last_hidden_state
out["build"] = [bool(torch.isfinite(y2).all()), float((y2 - y9).abs().max()), repr(model).count("Squareplus(b=2.0)")]

# the example plugin end to end: a few training steps, then a remote-code export that carries
# the plugin's source (checked against bertsmith's outputs when it is written)
tiny = ["data.max_docs=200", "data.max_val_docs=8", "data.seq_len=64", "data.batch_size=4",
        "tokenizer.vocab_size=512", "trainer.progress=false", "trainer.max_steps=3", "trainer.val_every=100"]
out["train"] = run("train", "model/activation=squareplus", "model.mlp.activation.b=2", "model.n_layers=2",
                   "hydra.run.dir=run_plugin", *tiny)
out["export"] = run("export", "run_plugin", "--to", "hf", "--out", "hf_plugin")
out["spec_yaml"] = open("run_plugin/model/spec.yaml").read()

for bad in ("nope_missing_xyz", "boom_blocks", "shadow_blocks"):
    os.environ["BERTSMITH_PLUGINS"] = bad
    out[bad] = [
        run("validate", "bert-tiny"),
        run("schema", "--out", f"{bad}.json"),
        run("train", f"hydra.run.dir=run_{bad}"),
    ]
from bertsmith.registry.core import REGISTRY
out["after"] = [REGISTRY.get("activation", "gelu").source, "halfrelu" in REGISTRY.names("activation")]
print("RESULT " + json.dumps(out))
"""


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    work = tmp_path_factory.mktemp("plugins")
    for name, text in MODULES.items():
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        (work / name).write_text(textwrap.dedent(text).lstrip())
    (work / "checks.py").write_text(CHECKS)
    before = sorted(p.name for p in work.iterdir() if p.name != "__pycache__")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(EXAMPLE), str(work / "site")]),
        "BERTSMITH_CACHE": str(work / "cache"),
    }
    env.pop("BERTSMITH_PLUGINS", None)
    p = subprocess.run(
        [sys.executable, "checks.py"], cwd=work, env=env, capture_output=True, text=True, timeout=600
    )
    assert p.returncode == 0, p.stderr[-3000:]
    (line,) = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
    after = sorted(
        p.name for p in work.iterdir() if p.name not in ("cache", "__pycache__", "run_plugin", "hf_plugin")
    )
    return json.loads(line[len("RESULT ") :]), before, after, work


def test_plugin_blocks_are_listed_with_their_source(results):
    out = results[0]
    rc, sources, err = out["blocks"]
    assert rc == 0 and err == ""
    assert sources["activation/squareplus"] == "bertsmith_squareplus"  # BERTSMITH_PLUGINS, PYTHONPATH
    assert sources["positional/nothing_at_all"] == "my_blocks"  # BERTSMITH_PLUGINS, the working dir
    assert sources["activation/ep_act"] == "ep_blocks"  # the entry point of an installed package
    assert sources["activation/gelu"] == "bertsmith"


def test_plugin_blocks_compose_validate_and_build(results):
    out = results[0]
    for key in ("validate_act", "validate_pos", "validate_ep"):
        rc, text, err = out[key]
        assert (rc, err) == (0, ""), (key, err)
        assert text.startswith("ok: "), key
    finite, diff, shown = out["build"]
    assert finite and shown > 0
    assert diff > 1e-4  # the plugin's parameter, set from the command line, changes the output


def test_plugin_blocks_are_in_the_schema_and_recorded(results):
    out = results[0]
    rc, has_block, errors = out["schema"]
    assert rc == 0 and has_block and errors == []
    assert out["sources"] == {"mlp.activation": "bertsmith_squareplus"}
    (line,) = out["missing"]
    assert line.startswith(
        "spec.mlp.activation.kind: given 'not_here' from plugin 'gone_plugin', which is not loaded"
    )


@pytest.mark.parametrize(
    "plugin, line",
    [
        ("nope_missing_xyz", "error: plugin 'nope_missing_xyz': No module named 'nope_missing_xyz'"),
        ("boom_blocks", "error: plugin 'boom_blocks': boom at import"),
        (
            "shadow_blocks",
            "error: plugin 'shadow_blocks': activation entry 'gelu' from shadow_blocks is already registered by bertsmith",
        ),
    ],
)
def test_a_bad_plugin_is_one_line_exit_2_nothing_written(plugin, line, results):
    out, before, after, _ = results
    for rc, text, err in out[plugin]:  # validate, schema --out, train
        assert rc == 2 and text == ""
        assert len(err.splitlines()) == 1 and err.startswith(line), err
    assert after == before  # no schema file, no run directory
    gelu_source, half_left = out["after"]
    assert gelu_source == "bertsmith" and not half_left  # a failed plugin leaves nothing registered


def test_the_console_script_finds_a_plugin_in_the_working_directory(results):
    work = results[3]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    p = subprocess.run(
        [str(SCRIPT), "blocks"],
        cwd=work,
        env={**env, "BERTSMITH_PLUGINS": "my_blocks"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stderr
    assert "nothing_at_all" in p.stdout and "from: my_blocks (plugin)" in p.stdout


def test_the_example_plugin_trains_exports_and_is_needed_to_load(results):
    out, _, _, work = results
    rc, _, err = out["train"]
    assert rc == 0, err[-2000:]
    assert "plugins:\n  mlp.activation: bertsmith_squareplus\n" in out["spec_yaml"]
    rc, text, err = out["export"]
    assert rc == 0, err[-2000:]
    code = (work / "hf_plugin" / "modeling_bertsmith.py").read_text()
    assert "bertsmith_squareplus.py ---" in code and "class Squareplus(nn.Module):" in code
    # without the plugin, the model directory is refused in one line naming block and plugin
    env = {k: v for k, v in os.environ.items() if k not in ("BERTSMITH_PLUGINS",)}
    env["PYTHONPATH"] = str(ROOT)
    p = subprocess.run(
        [sys.executable, "-m", "bertsmith.train.cli", "export", "run_plugin", "--to", "recipe", "--out", "r.yaml"],
        cwd=work, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert p.returncode == 2 and not (work / "r.yaml").exists()
    (line,) = p.stderr.splitlines()
    assert line.startswith(
        "error: spec.mlp.activation.kind: given 'squareplus' from plugin 'bertsmith_squareplus'"
    )
