"""``bertsmith schema``: a JSON Schema of a recipe that accepts every shipped recipe (as
written, composed, and in the spec form ``inspect``/``export`` print) and rejects mistakes."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from bertsmith import registry
from bertsmith.registry.composer import compose_config, model_names
from bertsmith.registry.spec import spec_dict
from bertsmith.train.cli import main as cli_main

RECIPES = Path(__file__).resolve().parent.parent / "recipes" / "model"


@pytest.fixture(scope="module")
def validator(tmp_path_factory):
    """The schema as `bertsmith schema --out s.json` writes it (what `> s.json` holds too)."""
    out = tmp_path_factory.mktemp("schema") / "s.json"
    assert cli_main(["schema", "--out", str(out)]) == 0
    schema = json.loads(out.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def _errors(validator, data) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message[:200]}" for e in validator.iter_errors(data)]


@pytest.mark.parametrize("name", model_names())
def test_every_shipped_recipe_is_valid(name, validator):
    written = yaml.safe_load((RECIPES / f"{name}.yaml").read_text())
    spec = registry.compose(name)
    for form, data in (
        ("as written", written),
        ("composed", compose_config(name)),
        ("spec form (inspect --json)", spec_dict(spec)),
    ):
        assert _errors(validator, data) == [], (name, form)


def test_the_export_form_is_valid(validator):
    from bertsmith.train.interop.export import recipe_text

    spec = registry.compose("deberta-tiny")
    assert _errors(validator, yaml.safe_load(recipe_text(spec, "a run"))) == []


MISTAKES = {
    "top-level typo": lambda r: r.update(d_modle=256),
    "slot param typo": lambda r: r["norm"].update(epss=1e-5),
    "bias typo": lambda r: r["bias"].update(qkvv=False),
    "unknown block": lambda r: r["positional"].update(kind="rop"),
    "wrong type": lambda r: r.update(n_layers="six"),
    "activation at the top": lambda r: r.update(activation={"kind": "silu"}),
    "activation param typo": lambda r: r["mlp"]["activation"].update(powr=2),
    "missing size (no defaults list)": lambda r: r.pop("vocab_size"),
}


@pytest.mark.parametrize("mistake", list(MISTAKES))
def test_a_mistake_is_rejected(mistake, validator):
    data = spec_dict(registry.compose("modernbert-tiny", ["model/activation=relu"]))
    assert _errors(validator, data) == []
    MISTAKES[mistake](data)
    assert _errors(validator, data), mistake


def test_an_extending_recipe_may_leave_out_sizes_and_kinds(validator):
    ok = {"defaults": ["modernbert-tiny", {"override positional": "alibi"}, "_self_"], "norm": {"eps": 1e-6}}
    assert _errors(validator, ok) == []
    assert _errors(validator, {**ok, "defaults": ["modernbert-tiny", {"override positional": "alibbi"}]})
    assert _errors(validator, {**ok, "defaults": ["modernbert-tny"]})
    assert _errors(validator, {**ok, "norm": {"epss": 1e-6}})


def test_every_key_has_a_one_line_meaning(validator):
    missing = []

    def walk(node, path):
        if isinstance(node, dict):
            for key, prop in (node.get("properties") or {}).items():
                desc = prop.get("description", "")
                if not desc.strip() or "\n" in desc:
                    missing.append(f"{path}.{key}")
                walk(prop, f"{path}.{key}")
            for key, sub in node.items():
                if key not in ("properties", "if"):  # an `if` states a condition, not keys
                    walk(sub, f"{path}/{key}")
        elif isinstance(node, list):
            for sub in node:
                walk(sub, path)

    walk(validator.schema, "")
    assert missing == []
    props = validator.schema["properties"]
    assert {"d_model", "d_ff", "bias", "dropout", "defaults", "placement"} <= set(props)
    assert "width" in props["d_model"]["description"]
