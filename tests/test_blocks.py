"""Blocks alone, each against an independent computation."""

import math

import pytest
import torch
import torch.nn.functional as F

from bertsmith import registry
from bertsmith.blocks.activation import GeluTanh, Relu
from bertsmith.blocks.head import ClassificationHead, MlmHead, mean_tokens
from bertsmith.blocks.mlp import Glu
from bertsmith.blocks.norm import RMSNorm
from bertsmith.blocks.positional import Rope, Sinusoidal
from bertsmith.blocks.stream import repad, stream_from_cu_seqlens, unpad


def test_unpad_repad_roundtrip_left_and_right_padding():
    mask = torch.tensor([[1, 1, 1, 0], [0, 0, 1, 1], [1, 1, 1, 1]])
    x = torch.randn(3, 4, 5)
    idx, stream = unpad(mask)
    assert stream.cu_seqlens.tolist() == [0, 3, 5, 9]
    assert stream.position_ids.tolist() == [0, 1, 2, 0, 1, 0, 1, 2, 3]
    flat = x.reshape(12, 5)[idx]
    back = repad(flat, idx, 3, 4)
    assert torch.equal(back[mask.bool()], x[mask.bool()])
    assert torch.count_nonzero(back[~mask.bool()]) == 0
    batch = stream.to_batch(flat)  # [B, Lmax, 5], sequences left-aligned
    assert torch.equal(batch[1, :2], x[1, 2:])
    assert torch.equal(stream.from_batch(batch), flat)


def test_rope_matches_transformers_rotation():
    from transformers.models.modernbert.modeling_modernbert import apply_rotary_pos_emb

    d, theta = 16, 500.0
    rope = Rope(head_dim=d, theta=theta)
    stream = stream_from_cu_seqlens(torch.tensor([0, 7, 12]))
    q, k = torch.randn(12, 3, d), torch.randn(12, 3, d)
    qr, kr = rope.prepare(stream).rotate(q, k, local=False)
    pos = stream.position_ids.float()
    inv = 1.0 / theta ** (torch.arange(0, d, 2).float() / d)
    emb = torch.cat([pos[:, None] * inv] * 2, -1)
    ref_q, ref_k = apply_rotary_pos_emb(
        q.transpose(0, 1), k.transpose(0, 1), emb.cos(), emb.sin(), unsqueeze_dim=0
    )
    assert torch.allclose(qr, ref_q.transpose(0, 1), atol=1e-6)
    assert torch.allclose(kr, ref_k.transpose(0, 1), atol=1e-6)


def test_rope_local_theta_and_partial_dim():
    rope = Rope(head_dim=8, theta=1e4, local_theta=10.0, dim=4)
    stream = stream_from_cu_seqlens(torch.tensor([0, 6]))
    q = torch.randn(6, 2, 8)
    ctx = rope.prepare(stream)
    g, _ = ctx.rotate(q, q, local=False)
    loc, _ = ctx.rotate(q, q, local=True)
    assert torch.equal(g[..., 4:], q[..., 4:])  # unrotated tail
    assert not torch.allclose(g, loc)
    # the rotated part is a 4-dim rope with the local theta
    ref, _ = Rope(head_dim=4, theta=10.0).prepare(stream).rotate(q[..., :4], q[..., :4], False)
    assert torch.allclose(loc[..., :4], ref, atol=1e-6)
    # rotation keeps norms
    assert torch.allclose(g.norm(dim=-1), q.norm(dim=-1), atol=1e-5)


def test_sinusoidal_formula():
    D = 6
    pe = Sinusoidal(D).embed(torch.arange(5))
    for p in range(5):
        for i in range(0, D, 2):
            angle = p / 10000 ** (i / D)
            assert pe[p, i].item() == pytest.approx(math.sin(angle), abs=1e-6)
            assert pe[p, i + 1].item() == pytest.approx(math.cos(angle), abs=1e-6)


def test_rmsnorm_with_bias():
    n = RMSNorm(5, eps=1e-6, bias=True)
    with torch.no_grad():
        n.weight.uniform_()
        n.bias.uniform_()
    x = torch.randn(4, 5)
    ref = x / torch.sqrt((x**2).mean(-1, keepdim=True) + 1e-6) * n.weight + n.bias
    assert torch.allclose(n(x), ref, atol=1e-6)
    assert RMSNorm(5, bias=False).bias is None


def test_activations():
    x = torch.linspace(-3, 3, 13)
    assert torch.equal(Relu(power=2)(x), torch.clamp(x, min=0) ** 2)
    assert torch.equal(Relu(power=3)(x), torch.clamp(x, min=0) ** 3)
    assert torch.equal(Relu()(x), torch.clamp(x, min=0))
    ref = 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
    assert torch.allclose(GeluTanh()(x), ref, atol=1e-6)


def test_glu_first_half_activated():
    glu = Glu(4, 3, lambda _: torch.nn.GELU(), bias_in=False, bias_out=False)
    x = torch.randn(2, 4)
    w = glu.wi.weight
    ref = (F.gelu(x @ w[:3].T) * (x @ w[3:].T)) @ glu.wo.weight.T
    assert torch.allclose(glu(x), ref, atol=1e-6)


def _spec(*overrides):
    return registry.compose("modernbert-tiny", ["model.n_layers=4", *overrides])


@pytest.mark.parametrize("init", ["bert_normal", "megatron", "full_megatron"])
def test_init_schemes(init):
    spec = _spec(f"model/init={init}", "model.d_model=512", "model.n_heads=8")
    model = registry.build(spec, head="classification")
    layer = model.encoder.layers[1]
    std_in = layer.attn.qkv.weight.std().item()
    std_out = layer.attn.out.weight.std().item()
    out_expected = 0.02 if init == "bert_normal" else 0.02 / math.sqrt(8)
    assert std_in == pytest.approx(0.02 if init != "full_megatron" else 0.02 * 0.88, rel=0.06)
    assert std_out == pytest.approx(out_expected * (0.88 if init == "full_megatron" else 1), rel=0.06)
    if init == "full_megatron":
        assert layer.attn.qkv.weight.abs().max().item() <= 2 * 0.02 + 1e-7
        cls = model.head.classifier.weight
        assert cls.abs().max().item() <= 2 * 512**-0.5 + 1e-7
    assert torch.equal(layer.mlp_norm.weight, torch.ones(512))


def test_mlm_head_sparse_equals_dense_rows():
    emb = torch.nn.Embedding(11, 8)
    head = MlmHead(
        8,
        11,
        lambda n: torch.nn.GELU(),
        lambda: torch.nn.LayerNorm(8),
        emb,
        dense_bias=True,
        decoder_bias=True,
    )
    torch.nn.init.normal_(head.bias)
    h = torch.randn(6, 8)
    pick = torch.tensor([0, 1, 0, 0, 1, 1], dtype=torch.bool)
    dense = head(h, None)["logits"]
    sparse = head(h, None, pick)["logits"]
    assert sparse.shape == (3, 11)
    assert torch.allclose(sparse, dense[pick])
    ref = torch.nn.functional.layer_norm(F.gelu(head.dense(h)), (8,), head.norm.weight, head.norm.bias)
    assert torch.allclose(dense, ref @ emb.weight.T + head.bias, atol=1e-6)
    assert head.decoder.weight is emb.weight


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_classification_pooling(pooling):
    head = ClassificationHead(
        4,
        lambda n: torch.nn.Identity(),
        lambda: torch.nn.Identity(),
        dense_bias=False,
        num_labels=3,
        pooling=pooling,
        norm=False,
    )
    stream = stream_from_cu_seqlens(torch.tensor([0, 2, 5]))
    h = torch.randn(5, 4)
    pooled = h[[0, 2]] if pooling == "cls" else torch.stack([h[:2].mean(0), h[2:].mean(0)])
    ref = head.classifier(head.dense(pooled))
    assert torch.allclose(head(h, stream)["logits"], ref, atol=1e-6)
    assert torch.allclose(mean_tokens(h, stream)[1], h[2:].mean(0), atol=1e-6)


def test_padded_output_zero_at_padding_and_sparse_logits():
    spec = _spec()
    model = registry.build(spec).eval()
    ids = torch.randint(3, 8000, (2, 20))
    mask = torch.ones_like(ids)
    mask[1, 12:] = 0
    predict = torch.zeros_like(ids, dtype=torch.bool)
    predict[0, 3] = predict[1, 5] = True
    with torch.no_grad():
        full = model(ids, mask)
        sparse = model(ids, mask, predict=predict)
    assert torch.count_nonzero(full.last_hidden_state[1, 12:]) == 0
    assert torch.allclose(sparse.logits, full.logits[predict], atol=1e-5)
