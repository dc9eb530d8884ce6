"""The blocks added as one file each (placements sandwich and deepnorm, ScaleNorm, T5's
relative bias, Swish-β), checked against their papers' definitions or reference code, and
the settings a recipe gives them reaching the model."""

from __future__ import annotations

import math

import pytest
import torch

from bertsmith import registry
from bertsmith.blocks.roles import tagged
from bertsmith.registry.errors import SpecError

SMALL = ["model.n_layers=3", "model.d_model=64", "model.n_heads=2", "model.d_ff=96", "model.vocab_size=128"]


def _model(*overrides: str, init: bool = True):
    spec = registry.validate("modernbert-tiny", [*SMALL, *overrides])
    return registry.build(spec, init=init).eval()


def _batch(vocab: int = 128):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, vocab, (2, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    return ids * mask, mask


def test_an_activation_parameter_set_on_the_command_line_changes_the_output():
    ids, mask = _batch()
    outs = {}
    for beta in ("1.0", "1.5"):
        torch.manual_seed(0)
        # wide weights, so the MLP's share of the output is not hidden by a 0.02 init
        model = _model("model/activation=swish", f"model.mlp.activation.beta={beta}", "model.init.std=0.3")
        assert model.spec.mlp.activation.beta == float(beta)
        with torch.no_grad():
            outs[beta] = model(ids, mask).last_hidden_state
    assert (outs["1.0"] - outs["1.5"]).abs().max() > 0.05
    # beta = 1 is SiLU exactly
    torch.manual_seed(0)
    silu = _model("model/activation=silu", "model.init.std=0.3")
    with torch.no_grad():
        torch.testing.assert_close(silu(ids, mask).last_hidden_state, outs["1.0"])


def test_relu_power_is_squared_relu_and_the_old_name_still_loads():
    spec = registry.compose("bert-tiny", ["model.mlp.activation=relu2"])
    assert spec.mlp.activation.model_dump() == {"kind": "relu", "power": 2}
    same = registry.compose("bert-tiny", ["model/activation=relu", "model.mlp.activation.power=2"])
    assert same == spec
    with pytest.raises(SpecError) as e:
        registry.compose("bert-tiny", ["model/activation=relu", "model.mlp.activation.power=true"])
    assert e.value.lines == ["model.mlp.activation.power: given True, allowed: a valid integer"]


def test_swish_learnable_beta_is_a_parameter_init_leaves_alone():
    model = _model(
        "model/activation=swish", "model.mlp.activation.beta=1.7", "model.mlp.activation.learnable=true"
    )
    betas = [layer.mlp.act.beta for layer in model.encoder.layers]
    assert all(isinstance(b, torch.nn.Parameter) and b.item() == pytest.approx(1.7) for b in betas)


def test_scalenorm_is_g_x_over_norm_with_g_sqrt_d_kept_through_init():
    model = _model("model/norm=scalenorm")
    norm = model.encoder.layers[1].attn_norm
    assert norm.g.item() == pytest.approx(math.sqrt(64))  # not reset by the init scheme
    x = torch.randn(5, 64)
    torch.testing.assert_close(norm(x), math.sqrt(64) * x / x.norm(dim=-1, keepdim=True))


def test_scalenorm_refuses_norm_biases_it_cannot_have():
    with pytest.raises(SpecError) as e:
        registry.validate("bert-tiny", ["model/norm=scalenorm"])  # BERT's norms have biases
    assert e.value.lines == [
        "model.bias.norm: given True, allowed: false with norm 'scalenorm', which has no bias"
    ]
    assert (
        registry.validate("bert-tiny", ["model/norm=scalenorm", "model.bias.norm=false"]).norm.kind
        == "scalenorm"
    )


def test_sandwich_wires_a_norm_before_and_after_each_sublayer():
    model = _model("model/placement=sandwich")
    layer = model.encoder.layers[1]
    assert [n for n, _ in layer.named_children() if n.endswith("norm")] == [
        "attn_norm",
        "attn_post_norm",
        "mlp_norm",
        "mlp_post_norm",
    ]
    for norm in (layer.attn_post_norm, layer.mlp_post_norm):
        torch.nn.init.normal_(norm.weight, 1.0, 0.3)
    x = torch.randn(12, 64)
    ids, mask = _batch()
    stream = model(ids, mask).stream
    pos = model.encoder.embeddings.positional.prepare(stream)
    x = torch.randn(stream.position_ids.numel(), 64)
    with torch.no_grad():
        h = x + layer.attn_post_norm(layer.attn(layer.attn_norm(x), stream, pos))
        want = h + layer.mlp_post_norm(layer.mlp(layer.mlp_norm(h)))
        torch.testing.assert_close(layer(x, stream, pos), want)


def test_deepnorm_scales_the_residual_by_alpha_and_the_init_by_beta():
    N = 3
    alpha, beta = (2 * N) ** 0.25, (8 * N) ** -0.25
    torch.manual_seed(0)
    spec = registry.validate(
        "bert-tiny",
        [
            *SMALL,
            "model/placement=deepnorm",
            "model/init=bert_normal",
            "model.init.std=0.5",
            "model.d_model=256",
            "model.d_ff=1024",
        ],
    )
    model = registry.build(spec).eval()
    layer = model.encoder.layers[1]
    assert layer.placement.alpha == pytest.approx(alpha) and layer.placement.beta == pytest.approx(beta)
    D = 256
    qkv = layer.attn.qkv.weight
    # queries and keys keep the scheme's std; values, attention out and the MLP get β·std
    assert qkv[: 2 * D].std().item() == pytest.approx(0.5, rel=0.05)
    for w in (qkv[2 * D :], layer.attn.out.weight, layer.mlp.wi.weight, layer.mlp.wo.weight):
        assert w.std().item() == pytest.approx(0.5 * beta, rel=0.05)
    ids, mask = _batch()
    stream = model(ids, mask).stream
    pos = model.encoder.embeddings.positional.prepare(stream)
    x = torch.randn(stream.position_ids.numel(), D)
    with torch.no_grad():
        h = layer.attn_norm(alpha * x + layer.attn(x, stream, pos))
        want = layer.mlp_norm(alpha * h + layer.mlp(h))
        torch.testing.assert_close(layer(x, stream, pos), want)


def test_skip_first_goes_with_a_placement_that_cannot_skip():
    # inherited from ModernBERT's pre-norm recipe: dropped with the swap, like a block's settings
    for placement in ("deepnorm", "post"):
        spec = registry.validate("modernbert-tiny", [f"model/placement={placement}"])
        assert spec.placement.kind == placement and spec.norm.skip_first is False
    # asked for on the command line: kept, and refused in one line
    with pytest.raises(SpecError) as e:
        registry.validate("modernbert-tiny", ["model/placement=deepnorm", "model.norm.skip_first=true"])
    (line,) = e.value.lines
    assert line.startswith("model.norm.skip_first: given True, allowed: false with placement 'deepnorm'")


def test_t5_buckets_match_transformers_and_the_bias_is_the_table():
    from transformers.models.t5.modeling_t5 import T5Attention

    from bertsmith.blocks.t5 import t5_bucket

    rel = torch.arange(-300, 301)
    for buckets, distance in ((32, 128), (8, 20), (64, 256)):
        ref = T5Attention._relative_position_bucket(
            rel, bidirectional=True, num_buckets=buckets, max_distance=distance
        )
        assert torch.equal(t5_bucket(rel, buckets, distance), ref)
    model = _model(
        "model/positional=t5", "model.positional.num_buckets=16", "model.positional.max_distance=32"
    )
    ids, mask = _batch()
    out = model(ids, mask)
    scheme = model.encoder.embeddings.positional
    bias = scheme.prepare(out.stream).bias(None).dense(out.stream, torch.zeros(1), torch.zeros(1))
    L = out.stream.max_seqlen
    pos = torch.arange(L)
    want = scheme.table.weight[T5Attention._relative_position_bucket(pos[None] - pos[:, None], True, 16, 32)]
    torch.testing.assert_close(bias[0], want.permute(2, 0, 1))
    assert sum(p.numel() for _, p, _, _ in tagged(scheme)) == 16 * 2


def test_the_old_norm_placement_spelling_loads_or_is_refused_in_one_line():
    base = registry.compose("bert-tiny")
    data = registry.spec.spec_dict(base)
    old = {**data, "norm": {**data["norm"], "placement": "post"}}
    old.pop("placement")
    assert registry.parse_spec(old) == base
    clash = {**data, "norm": {**data["norm"], "placement": "pre"}}
    with pytest.raises(SpecError) as e:
        registry.parse_spec(clash)
    (line,) = e.value.lines
    assert line.startswith(
        "model.norm.placement: given 'pre' (the old spelling) while model.placement is 'post'"
    )


def test_the_new_blocks_train_and_export_from_the_command_line(tmp_path, monkeypatch, capsys):
    """All five in one small model: a few real training steps with `bertsmith train`, then
    `bertsmith export --to hf` (remote code, checked against bertsmith's outputs on writing)."""
    from bertsmith.train.cli import main

    run = tmp_path / "run"
    args = [
        "train",
        "model/placement=deepnorm",
        "model/norm=scalenorm",
        "model/positional=t5",
        "model/activation=swish",
        "model.mlp.activation.beta=1.5",
        "model.n_layers=2",
        "data.max_docs=200",
        "data.max_val_docs=8",
        "data.seq_len=64",
        "data.batch_size=4",
        "tokenizer.vocab_size=512",
        "trainer.progress=false",
        "trainer.max_steps=3",
        "trainer.val_every=100",
        f"hydra.run.dir={run}",
    ]
    assert main(args) == 0, capsys.readouterr().err[-2000:]
    spec = registry.load_spec(run / "model" / "spec.yaml")
    assert (spec.placement.kind, spec.norm.kind, spec.positional.kind) == ("deepnorm", "scalenorm", "t5")
    assert spec.mlp.activation.model_dump() == {"kind": "swish", "beta": 1.5, "learnable": False}
    assert main(["export", str(run), "--to", "hf", "--out", str(tmp_path / "hf")]) == 0
    assert "modeling_bertsmith.py" in {p.name for p in (tmp_path / "hf").iterdir()}
