"""Every registered entry, found in the registry (plugins loaded through BERTSMITH_PLUGINS or
the ``bertsmith.blocks`` entry points included), swapped onto one small base recipe.

Nothing here is keyed by an entry's name: a new block is tested by registering it. An entry
that does not fit the base says why through its declared rules (requirements, ``check=``)
or, for a kernel, why it cannot run on this machine — the test then skips with that reason.

For each entry that fits:
- the model's forward and backward are finite;
- a padded batch equals the same sequences packed into one token stream;
- ``registry.save`` / ``registry.load`` gives the same outputs;
- ``bertsmith export --to hf`` round-trips (native class or remote code, outputs checked at
  export time) or refuses in one line naming the block;
- building leaves no parameter uninitialised, and the init scheme leaves every parameter
  no block tagged with an init role as the block made it.
"""

from __future__ import annotations

import pytest
import torch

from bertsmith import registry
from bertsmith.blocks.roles import tagged
from bertsmith.registry.core import REGISTRY, SLOT_KEYS
from bertsmith.registry.errors import SpecError
from bertsmith.registry.rules import availability_problems

BASE = "modernbert-tiny"
SMALL = ["model.n_layers=3", "model.d_model=64", "model.n_heads=2", "model.d_ff=96", "model.vocab_size=128"]
ENTRIES = [(e.slot, e.name) for e in REGISTRY]
IDS = [f"{s}={n}" for s, n in ENTRIES]


def _spec(slot: str, name: str):
    """The base with the entry swapped in, or a skip naming the declared reason it does not fit."""
    spec = registry.compose(BASE, [*SMALL, f"model/{slot}={name}"])
    refused = registry.problems(spec, device="cpu", training=True) + availability_problems(spec, "cpu")
    if refused:
        assert all(line.startswith("model.") and "\n" not in line for line in refused), refused
        pytest.skip("; ".join(refused))
    return spec


def _chosen(spec, slot: str):
    node = spec
    for part in SLOT_KEYS[slot].split("."):
        node = getattr(node, part)
    return node


def _batch(vocab: int, lengths=(9, 5, 1)):
    g = torch.Generator().manual_seed(1)
    L = max(lengths)
    ids = torch.randint(5, vocab, (len(lengths), L), generator=g)
    mask = (torch.arange(L)[None] < torch.tensor(lengths)[:, None]).long()
    return ids * mask, mask


@pytest.mark.parametrize("slot, name", ENTRIES, ids=IDS)
def test_entry_composes_runs_and_round_trips(slot, name, tmp_path):
    spec = _spec(slot, name)
    assert _chosen(spec, slot).kind == name
    model = registry.build(spec)
    ids, mask = _batch(spec.vocab_size)

    # forward and backward, finite
    model.train(False)
    out = model(ids, mask)
    hidden = out.last_hidden_state
    assert torch.isfinite(hidden).all()
    loss = hidden[mask.bool()].square().mean() + sum(
        v.float().square().mean()
        for k, v in out.outputs.items()
        if torch.is_tensor(v) and v.is_floating_point()
    )
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)

    # padded == packed (per-token outputs at real tokens)
    with torch.no_grad():
        padded = model(ids, mask).last_hidden_state[mask.bool()]
        lengths = mask.sum(1)
        cu = torch.nn.functional.pad(lengths.cumsum(0), (1, 0)).int()
        packed = model(ids[mask.bool()], cu_seqlens=cu, max_seqlen=int(lengths.max())).last_hidden_state
    torch.testing.assert_close(packed, padded, atol=2e-5, rtol=2e-5)

    # save / load
    registry.save(model, tmp_path / "model")
    again = registry.load(tmp_path / "model").eval()
    assert again.spec == model.spec
    with torch.no_grad():
        torch.testing.assert_close(again(ids, mask).last_hidden_state, model(ids, mask).last_hidden_state)

    # export to transformers: a checked directory, or one line naming what cannot go
    from bertsmith.train.interop.export import export_hf

    try:
        export_hf(tmp_path / "model", tmp_path / "hf")
    except SpecError as e:
        assert len(e.lines) >= 1 and all("\n" not in line for line in e.lines)
        assert not (tmp_path / "hf").exists()
    else:
        assert (tmp_path / "hf" / "config.json").is_file()


@pytest.mark.parametrize("slot, name", ENTRIES, ids=IDS)
def test_entry_init_leaves_nothing_uninitialised_and_blocks_own_values_alone(slot, name):
    spec = _spec(slot, name)
    filled = torch.utils.deterministic.fill_uninitialized_memory
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = True  # torch.empty -> NaN
    try:
        torch.manual_seed(3)
        plain = registry.build(spec, init=False)
        torch.manual_seed(3)
        model = registry.build(spec)
    finally:
        torch.use_deterministic_algorithms(deterministic)
        torch.utils.deterministic.fill_uninitialized_memory = filled
    drawn: dict[str, torch.Tensor] = {}
    for pname, param, rows, _ in tagged(model):
        cover = drawn.setdefault(pname, torch.zeros(param.shape[:1] or (1,), dtype=torch.bool))
        cover[rows if rows is not None else slice(None)] = True
    before = dict(plain.named_parameters())
    for pname, param in model.named_parameters():
        assert torch.isfinite(param).all(), f"{pname} is not initialised"
        untouched = ~drawn.get(pname, torch.zeros(param.shape[:1] or (1,), dtype=torch.bool))
        if param.dim() == 0:
            untouched = untouched[0]
            if untouched:
                assert torch.equal(param, before[pname]), f"the init scheme overwrote {pname}"
        elif untouched.any():
            assert torch.equal(param[untouched], before[pname][untouched]), (
                f"the init scheme overwrote {pname}"
            )
