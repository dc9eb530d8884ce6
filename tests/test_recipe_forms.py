"""A slot given on the command line (``model/<slot>=X``) wins over the recipe body, in every
form a recipe has, and in every command that composes; where it cannot apply, one line."""

from __future__ import annotations

import json

import pytest
import yaml
from hydra import compose, initialize_config_dir

from bertsmith import registry
from bertsmith.registry import SpecError
from bertsmith.registry.composer import RECIPES
from bertsmith.registry.spec import spec_dict
from bertsmith.train.cli import main as cli_main
from bertsmith.train.pretrain.app import main as train_main
from bertsmith.train.pretrain.app import parse_config, precheck_swaps, prepare_overrides

EXTENSION = """\
# extends a family recipe and states slots in its body, after _self_
defaults:
  - modernbert-tiny
  - _self_
name: ext
norm: {kind: rmsnorm}
positional: {kind: rope, theta: 5000.0}
mlp: {activation: {kind: relu, power: 3}}
"""

# (slot, block the swap asks for, where it shows in the composed spec)
SWAPS = [
    ("norm", "layernorm", lambda s: s.norm.kind),
    ("positional", "alibi", lambda s: s.positional.kind),
    ("activation", "silu", lambda s: s.mlp.activation.kind),
    ("placement", "post", lambda s: s.placement.kind),
    ("head", "classification", lambda s: s.head.kind),
]


@pytest.fixture(scope="module")
def forms(tmp_path_factory) -> dict[str, str]:
    """recipe form -> what to pass as the recipe."""
    d = tmp_path_factory.mktemp("forms")
    (d / "ext.yaml").write_text(EXTENSION)
    base = registry.compose("modernbert-tiny")
    # the form `inspect` prints: slots as mappings, no defaults list
    (d / "standalone.yaml").write_text(yaml.safe_dump(spec_dict(base), sort_keys=False))
    return {
        "family": "modernbert-tiny",
        "extension": str(d / "ext.yaml"),
        "standalone": str(d / "standalone.yaml"),
    }


def _train_spec(recipe: str, overrides: list[str], tmp) -> object:
    """The spec `bertsmith train model=<recipe> <overrides>` would train (composed as its
    Hydra app composes each job, not run)."""
    ovs = prepare_overrides([f"model={recipe}", *overrides], tmp)
    with initialize_config_dir(config_dir=str(RECIPES), version_base="1.3"):
        cfg = compose(config_name="train", overrides=ovs)
    return parse_config(cfg, [o for o in ovs if not o.startswith("hydra.")])[0]


@pytest.mark.parametrize("form", ["family", "extension", "standalone"])
def test_the_command_line_slot_wins_in_every_form(form, forms, tmp_path):
    recipe = forms[form]
    plain = registry.compose(recipe)
    for slot, name, seen in SWAPS:
        swapped = registry.compose(recipe, [f"model/{slot}={name}"])
        assert seen(swapped) == name, (form, slot)
        assert seen(_train_spec(recipe, [f"model/{slot}={name}"], tmp_path)) == name, (form, slot)
    # Hydra's own hint (+model/<slot>=) reads the same; several swaps combine
    both = registry.compose(recipe, ["+model/norm=layernorm", "model/positional=alibi"])
    assert (both.norm.kind, both.positional.kind) == ("layernorm", "alibi")
    # the rest of the recipe is untouched: settings both blocks take survive (eps), the old
    # block's own ones go (RoPE's theta)
    assert both.norm.eps == plain.norm.eps
    assert both.model_copy(update={"norm": plain.norm, "positional": plain.positional}) == plain


def test_the_extension_body_applies_without_a_swap(forms):
    spec = registry.compose(forms["extension"])
    assert (spec.norm.kind, spec.positional.theta, spec.mlp.activation.power) == ("rmsnorm", 5000.0, 3)
    # a swap to the same entry keeps the body's values; to another drops what it cannot take
    assert registry.compose(forms["extension"], ["model/activation=relu"]).mlp.activation.power == 3
    assert registry.compose(forms["extension"], ["model/activation=relu2"]).mlp.activation.power == 2
    assert (
        registry.compose(
            forms["extension"], ["model/activation=relu2", "model.mlp.activation.power=4"]
        ).mlp.activation.power
        == 4
    )


def test_inspect_json_shows_the_swap(forms, capsys):
    for form in ("extension", "standalone"):
        assert (
            cli_main(["inspect", forms[form], "model/norm=layernorm", "model/activation=silu", "--json"]) == 0
        )
        spec = json.loads(capsys.readouterr().out)["spec"]
        assert (spec["norm"]["kind"], spec["mlp"]["activation"]["kind"]) == ("layernorm", "silu"), form


def test_a_grid_checks_every_arm_before_it_starts(forms, tmp_path):
    """`train -m model/<slot>=a,b` on a standalone recipe: Hydra accepts the sweep (the copy
    it composes names every slot), and each arm composes to its block."""
    ovs = prepare_overrides(
        ["-m", f"model={forms['standalone']}", "model/norm=layernorm,rmsnorm", "seed=0,1"], tmp_path
    )
    precheck_swaps(ovs)
    for name in ("layernorm", "rmsnorm"):
        job = [o if not o.startswith("model/norm=") else f"model/norm={name}" for o in ovs if o != "-m"]
        job = [o if o != "seed=0,1" else "seed=0" for o in job]
        with initialize_config_dir(config_dir=str(RECIPES), version_base="1.3"):
            cfg = compose(config_name="train", overrides=job)
        assert parse_config(cfg, [o for o in job if not o.startswith("hydra.")])[0].norm.kind == name


REFUSALS = [
    (["model/norm=rmsnorm", "model/norm=layernorm"], "model/norm: given 'rmsnorm' and 'layernorm'"),
    (["model/norm=rmsnorm", "model.norm.kind=layernorm"], "model/norm: given 'rmsnorm' and model.norm.kind"),
    (["~model/norm"], "model/norm: given '~model/norm'"),
    (["model/norm=rmsnrom"], "model/norm: given 'rmsnrom'"),
    (["model/normm=rmsnorm"], "model/<slot>: given 'normm'"),
    (["model/norm=layernorm,rmsnorm"], "model/norm: given 'layernorm,rmsnorm', allowed: one name"),
]


@pytest.mark.parametrize(
    "overrides, line", REFUSALS, ids=["twice", "and-kind", "delete", "typo", "slot-typo", "sweep"]
)
def test_a_swap_that_cannot_apply_is_one_line(overrides, line, forms):
    with pytest.raises(SpecError) as e:
        registry.compose(forms["extension"], overrides)
    assert len(e.value.lines) == 1 and e.value.lines[0].startswith(line), e.value.lines


def test_a_swap_into_a_parent_that_is_not_a_block(tmp_path):
    path = tmp_path / "odd.yaml"
    path.write_text("defaults: [modernbert-tiny, _self_]\nmlp: 3\n")
    with pytest.raises(SpecError) as e:
        registry.compose(str(path), ["model/activation=silu"])
    assert e.value.lines == [
        "model/activation: given 'silu', cannot apply: model.mlp is 3, allowed: a mapping with 'kind' there"
    ]


def test_train_refuses_in_one_line_and_writes_nothing(forms, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for argv in (
        [
            f"model={forms['extension']}",
            "model/norm=layernorm",
            "model.norm.kind=rmsnorm",
            "hydra.run.dir=run",
        ],
        [
            "-m",
            f"model={forms['extension']}",
            "model/norm=layernorm,rmsnorm",
            "model.norm.kind=rmsnorm",
            "hydra.sweep.dir=grid",
        ],
        ["-m", "model/norm=layernorm,rmsnorm", "model/norm=layernorm", "hydra.sweep.dir=grid"],
    ):
        assert train_main(argv) == 2
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 1 and err[0].startswith("error: model/norm: given "), err
    assert list(tmp_path.iterdir()) == []


MISPLACED = [
    ("activation: {kind: silu}", "model.activation: misplaced", "model.mlp.activation"),
    ("theta: 5000.0", "model.theta: misplaced", "model.positional.theta"),
    ("mlp: {power: 2}", "model.mlp.power: misplaced", "model.mlp.activation.power"),
]


@pytest.mark.parametrize("body, start, where", MISPLACED, ids=[m[1].split(":")[0] for m in MISPLACED])
def test_a_misplaced_key_names_where_it_belongs(body, start, where, tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(f"defaults: [modernbert-tiny, _self_]\n{body}\n")
    with pytest.raises(SpecError) as e:
        registry.compose(str(path))
    assert len(e.value.lines) == 1 and e.value.lines[0].startswith(start) and where in e.value.lines[0], (
        e.value.lines
    )


def test_a_preset_file_is_an_option_and_its_values_win(forms, tmp_path, monkeypatch):
    """`recipes/model/<slot>/<name>.yaml` with values: `model/<slot>=<name>` puts them in
    place after the recipe body (the family's theta gives way to the preset's)."""
    import shutil

    import bertsmith.registry.composer as composer

    tree = tmp_path / "recipes"
    shutil.copytree(RECIPES, tree)
    (tree / "model" / "positional").mkdir(exist_ok=True)
    (tree / "model" / "positional" / "rope-long.yaml").write_text("kind: rope\ntheta: 1000000.0\n")
    monkeypatch.setattr(composer, "RECIPES", tree)
    for recipe in (forms["family"], forms["standalone"]):
        spec = registry.compose(recipe, ["model/positional=rope-long"])
        assert (spec.positional.kind, spec.positional.theta) == ("rope", 1e6), recipe
    with pytest.raises(SpecError) as e:
        registry.compose(forms["family"], ["model/positional=rope-lng"])
    assert "rope-long" in e.value.lines[0]
