"""Every recipe in the tree composes, validates and builds; composed values are what the
recipe and its overrides say; family recipes have their reference parameter counts."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from helpers import run_main

from bertsmith import (
    blocks,  # noqa: F401  (fills REGISTRY, which this module reads at import)
    registry,
)
from bertsmith.registry import REGISTRY, SpecError
from bertsmith.registry.composer import compose_config
from bertsmith.registry.core import SLOT_KEYS

ROOT = Path(__file__).resolve().parent.parent
MODEL_DIR = ROOT / "recipes" / "model"
MODEL_RECIPES = sorted(p.stem for p in MODEL_DIR.glob("*.yaml"))
TINY_RECIPES = [n for n in MODEL_RECIPES if n.endswith("-tiny")]
ENTRIES = [(e.slot, e.name) for e in REGISTRY]

# Encoder body (embeddings, layers, final norm; no head, no pooler) of the reference models.
FAMILY_PARAMS = {
    "bert-base": 108_891_648,
    "bert-large": 334_092_288,
    "roberta-base": 124_055_040,
    "roberta-large": 354_310_144,
    "modernbert-base": 149_014_272,
    "modernbert-large": 394_781_696,
    "mosaicbert-base": 136_777_728,
    # DebertaV2Model (/work/shared/reference/hf-layouts.md)
    "deberta-v3-base": 183_831_552,
    "deberta-v3-large": 434_012_160,
}


def expected_params(spec) -> tuple[int, int]:
    """(embedding, total) of the encoder body, counted from the spec alone: an independent
    reference for the built-in blocks (a plugin's block is counted by the cost model only)."""
    D, F_, b = spec.d_model, spec.d_ff, spec.bias
    norm = 1 if spec.norm.kind == "scalenorm" else D * (2 if b.norm else 1)
    emb = spec.vocab_size * D + spec.type_vocab_size * D
    if spec.positional.kind == "learned":
        emb += (spec.max_seq_len + spec.positional.offset) * D
    if spec.positional.kind == "t5":  # one bucket table for all layers
        emb += spec.positional.num_buckets * spec.n_heads
    if spec.norm.embedding:
        emb += norm
    own = 0  # per-layer parameters of the positional scheme
    if spec.positional.kind == "disentangled":  # one relative table R [2S, D] (+ norm) for all layers
        pos = spec.positional
        span = pos.position_buckets or pos.max_relative_positions or spec.max_seq_len
        emb += 2 * span * D + (norm if pos.norm_rel_ebd else 0)
        if not pos.share_att_key:
            own = len(pos.pos_att_type) * (D * D + D * b.qkv)
    mlp_in = 2 * F_ if spec.mlp.kind == "glu" else F_
    act = 1 if getattr(spec.mlp.activation, "learnable", False) else 0
    norms = 4 if spec.placement.kind == "sandwich" else 2
    layer = (
        3 * D * D
        + 3 * D * b.qkv
        + D * D
        + D * b.attn_out
        + D * mlp_in
        + mlp_in * b.mlp_in
        + F_ * D
        + D * b.mlp_out
        + norms * norm
        + own
        + act
    )
    total = emb + spec.n_layers * layer + (norm if spec.norm.final else 0)
    if spec.norm.skip_first:
        total -= norm
    return emb, total


def batch(vocab_size: int, lengths=(7, 12, 4), seed: int = 0):
    """Padded ids [B, L] and mask; padding at the right."""
    g = torch.Generator().manual_seed(seed)
    L = max(lengths)
    ids = torch.randint(0, vocab_size, (len(lengths), L), generator=g)
    mask = (torch.arange(L)[None] < torch.tensor(lengths)[:, None]).long()
    return ids, mask


# --- every recipe in the tree ------------------------------------------------------------


def test_the_tree_has_recipes():
    assert {"bert-base", "modernbert-base", "modernbert-tiny"} <= set(MODEL_RECIPES)
    assert TINY_RECIPES


@pytest.mark.parametrize("name", MODEL_RECIPES)
def test_recipe_validates_and_counts(name):
    spec = registry.validate(name)  # compose -> pydantic -> rules -> meta build
    assert spec.name == name
    assert registry.problems(spec) == []
    emb, total = expected_params(spec)
    p = registry.cost(spec)["params"]
    assert (p["embedding"], p["total"]) == (emb, total)
    assert p["non_embedding"] == total - emb


@pytest.mark.parametrize(
    "name, overrides",
    [
        ("deberta-tiny", ["model.positional.share_att_key=false"]),
        (
            "deberta-tiny",
            [
                "model.positional.position_buckets=0",
                "model.positional.max_relative_positions=64",
                "model.positional.pos_att_type=[c2p]",
                "model.positional.share_att_key=false",
                "model.positional.norm_rel_ebd=false",
            ],
        ),
        ("modernbert-tiny", ["model/norm=rmsnorm", "model.bias.norm=true", "model.norm.skip_first=false"]),
        ("bert-tiny", ["model.norm.final=true", "model.norm.embedding=false", "model.bias.qkv=false"]),
        ("roberta-tiny", ["model.positional.offset=5", "model.type_vocab_size=0"]),
    ],
)
def test_counts_follow_the_settings(name, overrides):
    spec = registry.validate(name, overrides)
    emb, total = expected_params(spec)
    p = registry.cost(spec)["params"]
    assert (p["embedding"], p["total"]) == (emb, total)
    model = registry.build(spec, init=False)
    assert sum(x.numel() for x in model.encoder.parameters()) == total


def test_every_family_recipe_has_a_reference_count():
    families = {n for n in MODEL_RECIPES if not n.endswith("-tiny")}
    assert families == set(FAMILY_PARAMS), "a family recipe without a reference count (or a missing one)"


@pytest.mark.parametrize("name", sorted(FAMILY_PARAMS))
def test_family_parameter_count(name):
    assert registry.cost(registry.compose(name))["params"]["total"] == FAMILY_PARAMS[name]


def test_inspect_cli_reports_the_family_count():
    out = run_main("inspect", "bert-base", "--json")  # in-process
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["params"]["total"] == FAMILY_PARAMS["bert-base"]
    assert report["spec"]["name"] == "bert-base"


@pytest.mark.parametrize(
    "child, parent, changes",
    [
        ("bert-large", "bert-base", dict(d_model=1024, n_layers=24, n_heads=16, d_ff=4096)),
        ("modernbert-large", "modernbert-base", dict(d_model=1024, n_layers=28, n_heads=16, d_ff=2624)),
        (
            "roberta-base",
            "bert-base",
            {
                "vocab_size": 50265,
                "type_vocab_size": 1,
                "pad_token_id": 1,
                "positional.offset": 2,
                "norm.eps": 1e-5,
            },
        ),
    ],
)
def test_inherited_recipe_is_parent_plus_its_diff(child, parent, changes):
    """A recipe holds only its diff: child == parent with the same values set as overrides."""
    overrides = [f"model.name={child}", *(f"model.{k}={v}" for k, v in changes.items())]
    assert registry.compose(child) == registry.compose(parent, overrides)


# --- tiny recipes run for real ---------------------------------------------------------------


@pytest.mark.parametrize("name", TINY_RECIPES)
def test_tiny_forward_backward_on_cpu(name):
    spec = registry.compose(name)
    registry.check(spec, device="cpu", training=True)
    model = registry.build(spec).train()
    ids, mask = batch(spec.vocab_size)
    out = model(ids, mask)
    B, L = ids.shape
    assert out.last_hidden_state.shape == (B, L, spec.d_model)
    assert out.logits.shape == (B, L, spec.vocab_size)
    real = mask.bool()
    targets = torch.randint(0, spec.vocab_size, (B, L))
    loss = F.cross_entropy(out.logits[real], targets[real])
    assert torch.isfinite(loss)
    # random init: the loss is near ln(V), not degenerate
    assert abs(loss.item() - math.log(spec.vocab_size)) < 2.0
    loss.backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{pname} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{pname} has a non-finite gradient"
        assert p.grad.abs().sum() > 0, f"{pname} has an all-zero gradient"


@pytest.mark.parametrize("name", TINY_RECIPES)
def test_tiny_padding_does_not_change_outputs(name):
    """Each sequence gives the same hidden states alone as in a padded batch."""
    spec = registry.compose(name)
    model = registry.build(spec).eval()
    lengths = (7, 12, 4)
    ids, mask = batch(spec.vocab_size, lengths)
    with torch.no_grad():
        padded = model(ids, mask)
        for b, n in enumerate(lengths):
            alone = model(ids[b : b + 1, :n])
            torch.testing.assert_close(
                padded.last_hidden_state[b, :n], alone.last_hidden_state[0], atol=2e-5, rtol=1e-4
            )
            torch.testing.assert_close(padded.logits[b, :n], alone.logits[0], atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize(
    "overrides, key",
    [
        (["model/head=classification"], "logits"),
        (["model/head=classification", "model.head.pooling=mean"], "logits"),
        (["model/head=nsp"], "nsp_logits"),
    ],
    ids=["cls-pool", "mean-pool", "nsp"],
)
def test_sequence_heads_ignore_padding(overrides, key):
    spec = registry.compose("modernbert-tiny", overrides)
    model = registry.build(spec).eval()
    lengths = (7, 12, 4)
    ids, mask = batch(spec.vocab_size, lengths)
    with torch.no_grad():
        padded = model(ids, mask)[key]
        alone = torch.cat([model(ids[b : b + 1, :n])[key] for b, n in enumerate(lengths)])
    assert padded.shape == (3, spec.head.num_labels if key == "logits" else 2)
    torch.testing.assert_close(padded, alone, atol=2e-5, rtol=1e-4)


# --- slot entries: each is an option without a YAML file; each one can be swapped in --------


def test_every_entry_is_an_option_without_a_file():
    """``model/<slot>=<name>`` needs no YAML: the registry's entries are generated into
    Hydra's ConfigStore as ``{kind: <name>}`` at the slot's key."""
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    from bertsmith.registry.composer import presets, register_configs

    register_configs()
    for slot, name in ENTRIES:
        if name in presets(slot):
            continue
        node = ConfigStore.instance().load(f"model/{slot}/{name}.yaml")
        assert OmegaConf.to_container(node.node) == {"kind": name}, (slot, name)
        assert node.package == f"model.{SLOT_KEYS[slot]}"


def test_slot_files_are_presets_with_values():
    """A YAML file under recipes/model/<slot>/ exists only for a preset: an entry with values."""
    for path in MODEL_DIR.glob("*/*.yaml"):
        data = yaml.safe_load(path.read_text())
        slot = path.parent.name
        assert slot in SLOT_KEYS, path
        assert isinstance(data, dict) and data.get("kind") in REGISTRY.names(slot), path
        assert set(data) - {"kind"}, f"{path} only names its entry: the registry already does"


@pytest.fixture(scope="module")
def tiny_base():
    spec = registry.compose("modernbert-tiny")
    model = registry.build(spec).eval()
    ids, mask = batch(spec.vocab_size)
    with torch.no_grad():
        out = model(ids, mask)
    return spec, compose_config("modernbert-tiny"), model, out


@pytest.mark.parametrize("slot, name", ENTRIES, ids=[f"{s}={n}" for s, n in ENTRIES])
def test_swap_each_entry_onto_modernbert_tiny(slot, name, tiny_base):
    base, raw, base_model, base_out = tiny_base
    if slot == "kernel":
        # a kernel that cannot run modernbert-tiny (xformers: no window) or not on this machine
        # (flash_attn without CUDA) is refused by validation; tests/test_gpu_kernels.py holds it
        from bertsmith.registry.rules import availability_problems

        spec = registry.compose("modernbert-tiny", [f"model/{slot}={name}"])
        refused = registry.problems(spec) + availability_problems(spec)
        if refused:
            pytest.skip("; ".join(refused))
    spec = registry.compose("modernbert-tiny", [f"model/{slot}={name}"])
    if refused := registry.problems(spec):
        # an entry that does not fit this base says why through its declared rules
        assert all(line.startswith("model.") for line in refused), refused
        pytest.skip("; ".join(refused))
    spec = registry.validate("modernbert-tiny", [f"model/{slot}={name}"])
    field = "mlp" if slot == "activation" else slot
    got = spec.model_dump()
    want = base.model_dump()
    if slot == "placement" and not REGISTRY.get(slot, name).provides & {"skip_first"}:
        # ModernBERT's inherited skip_first goes with a placement that has no first norm to skip
        assert got["norm"] == {**want["norm"], "skip_first": False}
        want = {**want, "norm": got["norm"]}
    # nothing outside the swapped slot changes
    assert {k: v for k, v in got.items() if k != field} == {k: v for k, v in want.items() if k != field}
    if slot == "activation":
        assert got["mlp"] == {**want["mlp"], "activation": REGISTRY.get(slot, name).params().model_dump()}
    else:
        # the recipe's own settings that the new entry takes are kept, the others dropped
        entry = REGISTRY.get(slot, name)
        stated = raw.get(slot) or {}
        kept = {k: v for k, v in stated.items() if k in entry.params.model_fields and k != "kind"}
        assert got[slot] == entry.params(**kept).model_dump()
        assert got[slot]["kind"] == name

    assert registry.cost(spec)["params"]["total"] == expected_params(spec)[1]
    kernel = REGISTRY.get("kernel", spec.kernel.kind)
    if "device:cpu" not in kernel.provides:
        return
    # the init scheme runs only where it is the swap (truncated normal init is slow on CPU)
    model = registry.build(spec, init=slot == "init").eval()
    ids, mask = batch(spec.vocab_size)
    if slot == "kernel":
        # a kernel is an implementation, not a mechanism: same weights, same outputs
        model.load_state_dict(base_model.state_dict())
    with torch.no_grad():
        out = model(ids, mask)
    assert torch.isfinite(out.last_hidden_state).all()
    if slot == "kernel":
        torch.testing.assert_close(out.last_hidden_state, base_out.last_hidden_state, atol=1e-4, rtol=1e-4)
    if spec.head.kind == "classification":
        assert out.logits.shape == (ids.shape[0], spec.head.num_labels)
    elif spec.head.kind == "token_classification":
        assert out.logits.shape == (*ids.shape, spec.head.num_labels)
    else:
        assert out.logits.shape == (*ids.shape, spec.vocab_size)


# --- composed values -----------------------------------------------------------------------


def _without(spec, *fields) -> dict:
    return {k: v for k, v in spec.model_dump().items() if k not in fields}


def test_swap_positional_to_alibi_drops_rope_thetas_only():
    base = registry.compose("modernbert-base")
    assert base.positional.model_dump() == {
        "kind": "rope",
        "theta": 160000.0,
        "local_theta": 10000.0,
        "dim": None,
    }
    swapped = registry.compose("modernbert-base", ["model/positional=alibi"])
    assert swapped.positional.model_dump() == {"kind": "alibi"}
    assert _without(swapped, "positional") == _without(base, "positional")


def test_value_override_sets_only_that_value():
    base = registry.compose("modernbert-base")
    spec = registry.compose("modernbert-base", ["model.d_model=512", "model.norm.eps=1e-6"])
    assert spec.d_model == 512
    assert spec.norm.eps == 1e-6
    assert spec.placement.kind == "pre" and spec.norm.skip_first is True
    assert _without(spec, "d_model", "norm") == _without(base, "d_model", "norm")


def test_value_override_may_set_a_key_the_recipe_does_not_state():
    assert "dim" not in compose_config("modernbert-tiny")["positional"]
    spec = registry.compose("modernbert-tiny", ["model.positional.dim=32"])
    assert spec.positional.dim == 32


def test_explicit_setting_for_a_swapped_slot_is_kept_and_refused():
    with pytest.raises(SpecError) as e:
        registry.compose("modernbert-base", ["model/positional=alibi", "model.positional.theta=1"])
    assert e.value.lines == ["model.positional.theta: unknown key for alibi; allowed: none"]


def test_swap_keeps_settings_the_new_entry_takes():
    spec = registry.compose("modernbert-tiny", ["model/attention=local"])
    assert spec.attention.model_dump() == {"kind": "local", "window": 128}  # global_every dropped
    spec = registry.compose("roberta-tiny", ["model/positional=sinusoidal"])
    assert spec.positional.model_dump() == {"kind": "sinusoidal"}  # offset dropped
    spec = registry.compose("modernbert-tiny", ["model/norm=rmsnorm"])
    assert spec.norm.model_dump() == {
        "kind": "rmsnorm",
        "eps": 1e-5,
        "embedding": True,
        "final": True,
        "skip_first": True,
    }


def test_swap_then_set_in_one_call():
    spec = registry.compose(
        "bert-tiny",
        ["model/attention=alternating", "model.attention.window=16", "model.attention.global_every=2"],
    )
    assert spec.attention.model_dump() == {"kind": "alternating", "window": 16, "global_every": 2}
    assert registry.layer_plan(spec) == [None, 16, None, 16]


# --- a recipe by path ----------------------------------------------------------------------

SLOTS_RECIPE = """\
defaults:
  - positional: alibi
  - attention: local
  - mlp: glu
  - activation: silu
  - norm: rmsnorm
  - head: classification
  - init: megatron
  - _self_

name: from-file
vocab_size: 1000
d_model: 96
n_layers: 3
n_heads: 3
d_ff: 200
attention: {window: 16}
head: {num_labels: 5}
"""


def test_compose_recipe_by_absolute_path(tmp_path, monkeypatch):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(scratch))
    path = tmp_path / "x.yaml"
    path.write_text(SLOTS_RECIPE)
    spec = registry.compose(str(path))
    assert spec.model_dump() == {
        "name": "from-file",
        "vocab_size": 1000,
        "d_model": 96,
        "n_layers": 3,
        "n_heads": 3,
        "d_ff": 200,
        "max_seq_len": 512,
        "type_vocab_size": 0,
        "pad_token_id": 0,
        "positional": {"kind": "alibi"},
        "attention": {"kind": "local", "window": 16},
        "kernel": {
            "kind": "sdpa",
            "band": "auto",
            "split": "auto",
        },  # not in the defaults list: the spec's default
        "mlp": {"kind": "glu", "activation": {"kind": "silu"}},
        "norm": {
            "kind": "rmsnorm",
            "eps": 1e-5,
            "embedding": True,
            "final": True,
            "skip_first": False,
        },
        "placement": {"kind": "pre"},
        "bias": dict.fromkeys(("qkv", "attn_out", "mlp_in", "mlp_out", "norm", "head", "decoder"), True),
        "dropout": dict.fromkeys(("embedding", "attention", "attn_out", "mlp"), 0.0),
        "head": {
            "kind": "classification",
            "num_labels": 5,
            "pooling": "cls",
            "activation": {"kind": "gelu"},
            "norm": True,
            "dropout": 0.0,
        },
        "init": {"kind": "megatron", "std": 0.02},
    }
    registry.check(spec)
    model = registry.build(spec).eval()
    ids, mask = batch(1000)
    with torch.no_grad():
        assert model(ids, mask).logits.shape == (3, 5)
    # overrides work on a path recipe too
    spec = registry.compose(str(path), ["model/positional=rope", "model.d_model=192"])
    assert spec.positional.model_dump() == {
        "kind": "rope",
        "theta": 10000.0,
        "local_theta": None,
        "dim": None,
    }
    assert spec.d_model == 192
    # compose leaves nothing behind: not next to the recipe, not in the temp dir
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scratch", "x.yaml"]
    assert list(scratch.iterdir()) == []


def test_path_recipe_may_inherit_a_named_recipe(tmp_path):
    path = tmp_path / "mine.yml"
    path.write_text("defaults:\n  - modernbert-tiny\n  - _self_\nname: mine\nd_model: 128\nn_heads: 2\n")
    spec = registry.compose(str(path))
    want = registry.compose("modernbert-tiny", ["model.name=mine", "model.d_model=128", "model.n_heads=2"])
    assert spec == want


def test_path_recipe_named_like_a_tree_recipe_is_the_file(tmp_path):
    """A file called bert-base.yaml is read from the path, not the tree's bert-base."""
    path = tmp_path / "bert-base.yaml"
    path.write_text("defaults:\n  - bert-base\n  - _self_\nname: shadow\nn_layers: 2\n")
    spec = registry.compose(str(path))
    assert (spec.name, spec.n_layers, spec.d_model) == ("shadow", 2, 768)
