"""Family recipes ARE their reference models.

BERT, RoBERTa and ModernBERT: a tiny random ``transformers`` model (fp32, eager attention) is
saved, imported with ``train.interop.hf.import_hf`` and compared with our model -- as returned by the
import, as reloaded by ``registry.load`` and as rebuilt with every registered kernel -- on a
right-padded batch of several lengths, at real-token positions.

MosaicBERT has no transformers class, so its reference is written here from the paper-level
description (post-LN BERT layers, fused Wqkv, symmetric ALiBi, GeGLU) with plain torch ops in
float64, one sequence at a time, and fed our model's own weights.

Weights are re-drawn with a large spread before any comparison: at the usual 0.02 init the
attention is nearly uniform, and a wrong window, RoPE theta or ALiBi slope would hide under
the tolerance. ``test_modernbert_comparison_is_sensitive`` shows that it does not.
"""

from __future__ import annotations

import math

import pytest
import torch
from helpers import TINY_BERT, TINY_MODERNBERT, max_diff, randomize_, with_kernel

from bertsmith import registry
from bertsmith.blocks.positional import alibi_slopes
from bertsmith.train.interop.hf import import_hf

TOL = 1e-5
LENGTHS = [40, 31, 17, 6, 1]  # right padding to 40; ModernBERT's window (16 -> ±8) is shorter


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These tensors are tiny: a second intra-op thread only adds synchronisation, which
    costs whole milliseconds per op when the cores are shared."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def kernel_names() -> list[str]:
    """Every kernel that runs on CPU (the CUDA-only ones: tests/test_gpu_kernels.py)."""
    return [k for k, e in registry.REGISTRY.entries["kernel"].items() if "device:cpu" in e.provides]


def padded_batch(vocab: int, pad: int, lengths=LENGTHS, seed: int = 0):
    """``input_ids [B, L]`` with real tokens drawn from the vocabulary minus ``pad``, pad ids
    after each sequence, and the matching ``attention_mask``."""
    g = torch.Generator().manual_seed(seed)
    L = max(lengths)
    ids = torch.randint(0, vocab - 1, (len(lengths), L), generator=g)
    ids = ids + (ids >= pad).long()  # never the pad id inside a sequence (RoBERTa positions)
    mask = (torch.arange(L)[None, :] < torch.tensor(lengths)[:, None]).long()
    return ids.masked_fill(mask == 0, pad), mask


# --- transformers references -------------------------------------------------------------


def _bert(cls_name: str, **cfg):
    import transformers

    base = dict(
        TINY_BERT,
        type_vocab_size=2,
        hidden_dropout_prob=0.1,  # imported as dropout; eval() must switch it off
        attention_probs_dropout_prob=0.1,
    )
    base.update(cfg)
    config_cls = transformers.RobertaConfig if cls_name.startswith("Roberta") else transformers.BertConfig
    return getattr(transformers, cls_name)(config_cls(**base, attn_implementation="eager"))


def _modernbert(cls_name: str, **cfg):
    import transformers

    base = dict(TINY_MODERNBERT)
    base.update(cfg)
    return getattr(transformers, cls_name)(transformers.ModernBertConfig(**base, attn_implementation="eager"))


# name -> (builder, base-model attribute or None for a base class, pad id, uses token types)
CASES = {
    "bert-mlm": (lambda: _bert("BertForMaskedLM"), "bert", 0, True),
    "bert-base-gelu_new": (lambda: _bert("BertModel", hidden_act="gelu_new"), None, 0, True),
    "roberta-mlm": (
        lambda: _bert(
            "RobertaForMaskedLM",
            pad_token_id=1,
            type_vocab_size=1,
            layer_norm_eps=1e-5,
            max_position_embeddings=64 + 2,
        ),
        "roberta",
        1,
        False,
    ),
    "modernbert-mlm": (lambda: _modernbert("ModernBertForMaskedLM"), "model", 0, False),
    "modernbert-base-biases": (
        lambda: _modernbert(
            "ModernBertModel",
            attention_bias=True,
            mlp_bias=True,
            norm_bias=True,
            global_rope_theta=5000.0,
            local_rope_theta=77.0,
        ),
        None,
        0,
        False,
    ),
    "modernbert-mlm-untied": (
        lambda: _modernbert("ModernBertForMaskedLM", tie_word_embeddings=False),
        "model",
        0,
        False,
    ),
    "modernbert-mlm-silu": (
        lambda: _modernbert(
            "ModernBertForMaskedLM",
            hidden_activation="silu",
            classifier_activation="gelu_pytorch_tanh",
            classifier_bias=True,
            norm_bias=True,
        ),
        "model",
        0,
        False,
    ),
}


# transformers 5.x unties *both* of BERT's/RoBERTa's head ties when tie_word_embeddings is
# false: the forward then adds ``decoder.bias``, and ``predictions.bias`` / ``lm_head.bias``
# is a separate, unused parameter (it stays at zero in training while decoder.bias learns).
UNTIED = {
    "bert-mlm-untied": (lambda: _bert("BertForMaskedLM", tie_word_embeddings=False), "bert", 0, True),
    "roberta-mlm-untied": (
        lambda: _bert(
            "RobertaForMaskedLM",
            pad_token_id=1,
            type_vocab_size=1,
            layer_norm_eps=1e-5,
            max_position_embeddings=64 + 2,
            tie_word_embeddings=False,
        ),
        "roberta",
        1,
        False,
    ),
}


class Imported:
    """A reference model, its outputs on the padded batch, and our imported model."""

    def __init__(self, name: str, tmp_path_factory):
        make, base_attr, self.pad, types = {**CASES, **UNTIED}[name]
        torch.manual_seed(0)
        ref = make().eval()
        randomize_(ref, seed=1)
        cfg = ref.config
        self.ids, self.mask = padded_batch(cfg.vocab_size, self.pad)
        self.types = (self.ids % 2) * self.mask if types else None
        kwargs = dict(input_ids=self.ids, attention_mask=self.mask)
        if self.types is not None:
            kwargs["token_type_ids"] = self.types
        with torch.no_grad():
            if base_attr is None:
                self.ref_hidden, self.ref_logits = ref(**kwargs).last_hidden_state, None
            else:
                out = ref(**kwargs, output_hidden_states=True)
                self.ref_logits = out.logits
                self.ref_hidden = getattr(ref, base_attr)(**kwargs).last_hidden_state
                # the MLM class's own last hidden state is the base model's
                assert max_diff(out.hidden_states[-1], self.ref_hidden, self.mask) == 0.0
        root = tmp_path_factory.mktemp(name)
        ref.save_pretrained(root / "hf")
        self.out_dir = root / "ours"
        self.model = import_hf(root / "hf", self.out_dir).eval()

    def run(self, model):
        with torch.no_grad():
            return model(self.ids, self.mask, token_type_ids=self.types)

    def check(self, model) -> tuple[float, float | None]:
        """Max |ours - reference| over real tokens: (hidden states, logits)."""
        out = self.run(model)
        dh = max_diff(out.last_hidden_state, self.ref_hidden, self.mask)
        dl = None
        if self.ref_logits is not None:
            assert out.logits is not None, "the imported MLM model has no logits"
            dl = max_diff(out.logits, self.ref_logits, self.mask)
        else:
            assert out.logits is None
        print(f"hidden {dh:.2e} logits {dl if dl is None else f'{dl:.2e}'}")
        return dh, dl


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    cache: dict[str, Imported] = {}

    def get(name: str) -> Imported:
        if name not in cache:
            cache[name] = Imported(name, tmp_path_factory)
        return cache[name]

    return get


def _assert_parity(case: Imported, model) -> None:
    dh, dl = case.check(model)
    assert dh <= TOL, f"last hidden state differs by {dh:.3g}"
    if dl is not None:
        assert dl <= TOL, f"MLM logits differ by {dl:.3g}"


@pytest.mark.parametrize("case", list(CASES))
def test_imported_model_matches_reference(imported, case):
    _assert_parity(imported(case), imported(case).model)


@pytest.mark.parametrize("case", list(CASES))
def test_loaded_model_directory_matches_reference(imported, case):
    c = imported(case)
    loaded = registry.load(c.out_dir).eval()
    assert loaded.spec == c.model.spec
    _assert_parity(c, loaded)


@pytest.mark.parametrize("kernel", kernel_names())
@pytest.mark.parametrize("case", list(CASES))
def test_every_kernel_matches_reference(imported, case, kernel):
    c = imported(case)
    _assert_parity(c, with_kernel(c.model, kernel))


@pytest.mark.parametrize("case", list(UNTIED))
def test_untied_bert_family_body(imported, case):
    c = imported(case)
    assert not c.model.spec.head.tied
    dh, _ = c.check(c.model)
    assert dh <= TOL


@pytest.mark.parametrize("case", list(UNTIED))
def test_untied_bert_family_logits(imported, case):
    c = imported(case)
    _, dl = c.check(c.model)
    assert dl <= TOL, f"MLM logits differ by {dl:.3g}"


def test_imported_specs_say_what_the_configs_say(imported):
    spec = imported("modernbert-mlm").model.spec
    assert (spec.attention.kind, spec.attention.window, spec.attention.global_every) == ("alternating", 16, 3)
    assert registry.layer_plan(spec) == [None, 16, 16, None]
    assert (spec.positional.theta, spec.positional.local_theta) == (1000.0, 300.0)
    spec = imported("modernbert-base-biases").model.spec
    assert (spec.positional.theta, spec.positional.local_theta) == (5000.0, 77.0)
    assert spec.bias.qkv and spec.bias.attn_out and spec.bias.mlp_in and spec.bias.mlp_out and spec.bias.norm
    assert spec.head is None
    spec = imported("modernbert-mlm-silu").model.spec
    assert (spec.mlp.activation.kind, spec.head.activation.kind, spec.bias.head) == (
        "silu",
        "gelu_tanh",
        True,
    )
    spec = imported("roberta-mlm").model.spec
    assert (spec.positional.offset, spec.pad_token_id, spec.type_vocab_size) == (2, 1, 1)


@pytest.mark.parametrize(
    "update",
    [
        {"positional": {"kind": "rope", "theta": 1000.0, "local_theta": 1000.0}},
        {"positional": {"kind": "rope", "theta": 300.0, "local_theta": 300.0}},
        {"attention": {"kind": "alternating", "window": 18, "global_every": 3}},
        {"attention": {"kind": "global"}},
    ],
    ids=["local-theta", "global-theta", "window", "no-local-layers"],
)
def test_modernbert_comparison_is_sensitive(imported, update):
    """The batch and weights make each ModernBERT detail visible: a model that gets one of
    them wrong misses the reference by far more than the tolerance."""
    c = imported("modernbert-mlm")
    data = c.model.spec.model_dump()
    data.update(update)
    wrong = registry.build(registry.parse_spec(data), init=False)
    wrong.load_state_dict(c.model.state_dict())
    dh, _ = c.check(wrong.eval())
    assert dh > 1e-3


# --- MosaicBERT: an independent reference ------------------------------------------------


def alibi_paper_slopes(n: int) -> list[float]:
    """Press et al. 2022: for a power of two n, the geometric sequence starting at and with
    ratio 2^(-8/n); otherwise that sequence for the largest power of two below n, followed
    by every other element of the sequence for twice that power."""

    def geometric(m: int) -> list[float]:
        start = 2.0 ** (-8.0 / m)
        return [start * start**i for i in range(m)]

    if n & (n - 1) == 0:
        return geometric(n)
    below = 2 ** int(math.log2(n))
    return geometric(below) + geometric(2 * below)[::2][: n - below]


@pytest.mark.parametrize(
    "n, expected",
    [
        (1, [1 / 256]),
        (8, [1 / 2, 1 / 4, 1 / 8, 1 / 16, 1 / 32, 1 / 64, 1 / 128, 1 / 256]),
        (6, [1 / 4, 1 / 16, 1 / 64, 1 / 256, 1 / 2, 1 / 8]),
        (
            12,
            # 2^-1 .. 2^-8, then every other one of 2^-0.5, 2^-1, ..., 2^-8: 2^-0.5, 2^-1.5, ...
            [1 / 2, 1 / 4, 1 / 8, 1 / 16, 1 / 32, 1 / 64, 1 / 128, 1 / 256]
            + [0.7071067811865476, 0.35355339059327373, 0.17677669529663687, 0.08838834764831845],
        ),
    ],
)
def test_alibi_slopes_hand_derived(n, expected):
    got = alibi_slopes(n)
    assert got.shape == (n,)
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float32), rtol=1e-7, atol=0)
    torch.testing.assert_close(
        got, torch.tensor(alibi_paper_slopes(n), dtype=torch.float32), rtol=1e-7, atol=0
    )


def _layer_norm(x, w, prefix, eps):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * w.pop(f"{prefix}.weight") + w.pop(f"{prefix}.bias")


def _gelu(x):
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def mosaic_reference(state: dict, spec, ids: torch.Tensor, slopes: list[float] | None = None):
    """One MosaicBERT forward for ONE sequence ``ids [n]``, float64, written from the paper.

    Returns (hidden [n, D], logits [n, V]). Every weight is popped from a copy of ``state`` as
    it is used; the caller checks that none is left over."""
    w = {k: v.double() for k, v in state.items()}
    D, H, d_ff, eps = spec.d_model, spec.n_heads, spec.d_ff, spec.norm.eps
    d = D // H
    n = ids.numel()
    slopes = torch.tensor(alibi_paper_slopes(H) if slopes is None else slopes, dtype=torch.float64)
    i = torch.arange(n, dtype=torch.float64)
    distance = (i[:, None] - i[None, :]).abs()  # |i - j|

    emb = w.pop("encoder.embeddings.tok.weight")
    x = emb[ids] + w.pop("encoder.embeddings.types.weight")[0]  # no position embeddings
    x = _layer_norm(x, w, "encoder.embeddings.norm", eps)
    for layer in range(spec.n_layers):
        p = f"encoder.layers.{layer}"
        qkv = x @ w.pop(f"{p}.attn.qkv.weight").T + w.pop(f"{p}.attn.qkv.bias")
        q, k, v = qkv[:, :D], qkv[:, D : 2 * D], qkv[:, 2 * D :]
        heads = []
        for h in range(H):
            cols = slice(h * d, (h + 1) * d)
            scores = q[:, cols] @ k[:, cols].T / math.sqrt(d) - slopes[h] * distance
            heads.append(torch.softmax(scores, dim=-1) @ v[:, cols])
        attn = torch.cat(heads, dim=-1) @ w.pop(f"{p}.attn.out.weight").T + w.pop(f"{p}.attn.out.bias")
        x = _layer_norm(x + attn, w, f"{p}.attn_norm", eps)  # post-LN
        wi = w.pop(f"{p}.mlp.wi.weight")  # [2·d_ff, D], no bias
        gated = _gelu(x @ wi[:d_ff].T) * (x @ wi[d_ff:].T)
        mlp = gated @ w.pop(f"{p}.mlp.wo.weight").T + w.pop(f"{p}.mlp.wo.bias")
        x = _layer_norm(x + mlp, w, f"{p}.mlp_norm", eps)
    t = _gelu(x @ w.pop("head.dense.weight").T + w.pop("head.dense.bias"))
    t = _layer_norm(t, w, "head.norm", eps)
    w.pop("head.decoder.weight")  # tied: the same tensor as the token embedding
    logits = t @ emb.T + w.pop("head.bias")
    assert not w, f"weights the reference did not use: {sorted(w)}"
    return x, logits


@pytest.mark.parametrize("n_heads", [4, 6, 12])
def test_mosaicbert_matches_independent_reference(n_heads):
    spec = registry.compose(
        "mosaicbert-tiny",
        [
            f"model.d_model={8 * n_heads}",
            f"model.n_heads={n_heads}",
            "model.n_layers=2",
            "model.d_ff=40",
            "model.vocab_size=89",
        ],
    )
    assert (spec.positional.kind, spec.mlp.kind, spec.placement.kind) == ("alibi", "glu", "post")
    model = registry.build(spec)
    randomize_(model, seed=n_heads)
    model.eval()
    state = model.state_dict()
    assert state["head.decoder.weight"].data_ptr() == state["encoder.embeddings.tok.weight"].data_ptr()
    ids, mask = padded_batch(spec.vocab_size, spec.pad_token_id, lengths=[23, 16, 9, 2])
    ref_h = torch.zeros(ids.shape + (spec.d_model,), dtype=torch.float64)
    ref_l = torch.zeros(ids.shape + (spec.vocab_size,), dtype=torch.float64)
    for b, n in enumerate(mask.sum(1).tolist()):
        ref_h[b, :n], ref_l[b, :n] = mosaic_reference(state, spec, ids[b, :n])
    for kernel in kernel_names():
        with torch.no_grad():
            out = with_kernel(model, kernel)(ids, mask)
        dh, dl = max_diff(out.last_hidden_state, ref_h, mask), max_diff(out.logits, ref_l, mask)
        print(f"mosaic H={n_heads} {kernel}: hidden {dh:.2e} logits {dl:.2e}")
        assert dh <= TOL and dl <= TOL, (kernel, dh, dl)


def test_mosaicbert_reference_is_sensitive_to_slopes():
    """Swapping ALiBi slopes for a non-power-of-two head count (e.g. plain 2^(-8/n)·(1..n))
    must be caught: the reference and our model then disagree far beyond tolerance."""
    n = 6
    spec = registry.compose(
        "mosaicbert-tiny", ["model.d_model=48", "model.n_heads=6", "model.n_layers=1", "model.vocab_size=89"]
    )
    model = registry.build(spec)
    randomize_(model, seed=3)
    model.eval()
    ids = padded_batch(spec.vocab_size, 0, lengths=[20])[0][0]
    with torch.no_grad():
        ours = model(ids[None]).last_hidden_state[0].double()
    good, _ = mosaic_reference(model.state_dict(), spec, ids)
    naive = [2.0 ** (-8.0 * (h + 1) / n) for h in range(n)]
    assert naive != pytest.approx(alibi_paper_slopes(n))
    bad, _ = mosaic_reference(model.state_dict(), spec, ids, slopes=naive)
    assert (ours - good).abs().max() <= TOL
    assert (ours - bad).abs().max() > 1e-3


# --- left padding and head counts --------------------------------------------------------

# family -> (the MLM model with n heads, pad id, uses token types, first position id,
#            whether transformers counts a left-padded sequence's positions from its first
#            real token when given no position_ids)
LEFT = {
    "bert": (lambda heads: _bert("BertForMaskedLM", num_attention_heads=heads), 0, True, 0, False),
    "roberta": (
        lambda heads: _bert(
            "RobertaForMaskedLM",
            num_attention_heads=heads,
            pad_token_id=1,
            type_vocab_size=1,
            layer_norm_eps=1e-5,
            max_position_embeddings=64 + 2,
        ),
        1,
        False,
        2,  # padding_idx + 1
        True,
    ),
    "modernbert": (
        lambda heads: _modernbert("ModernBertForMaskedLM", num_attention_heads=heads),
        0,
        False,
        0,
        True,
    ),
}


@pytest.mark.parametrize("heads", [2, 8])
@pytest.mark.parametrize("family", list(LEFT))
def test_left_padded_batch_and_other_head_counts(family, heads, tmp_path):
    """Two more head counts per family (the cases above use 4), right- and left-padded.

    What bertsmith does: the encoder unpads the batch, so a sequence's positions count from
    its own first real token wherever its padding is; a left-padded batch gives, at the real
    tokens, the outputs of the same batch right-padded (every CPU kernel).

    Whether transformers agrees, per family, when given no ``position_ids``:
    - BERT: no. Its default position ids count from the padded start, so a left-padded
      sequence gets other learned position embeddings (measured: logits off by about 2).
      Given per-sequence ``position_ids`` it matches ours within TOL.
    - RoBERTa: yes. It derives positions from the padding (padding_idx + 1 + the count of
      real tokens so far).
    - ModernBERT: yes. Its default positions count from the padded start too, but RoPE and
      the local window depend only on distances, which left padding does not change."""
    from helpers import diff_from, hf_hidden_and_logits, left_padded, per_sequence_positions

    make, pad, types, first, counts_per_sequence = LEFT[family]
    torch.manual_seed(0)
    ref = make(heads).eval()
    randomize_(ref, seed=heads)
    assert ref.config.num_attention_heads == heads
    ids, mask = padded_batch(ref.config.vocab_size, pad)
    tt = (ids % 2) * mask if types else None
    lids, lmask = left_padded(ids, mask, pad), left_padded(mask, mask)
    ltt = left_padded(tt, mask) if types else None
    ref.save_pretrained(tmp_path / "hf")
    ours = import_hf(tmp_path / "hf", tmp_path / "ours").eval()
    assert ours.spec.n_heads == heads

    def reference(x, m, t, **kw):
        return hf_hidden_and_logits(ref, x, m, t, **kw)

    diff = diff_from

    right = reference(ids, mask, tt)
    assert diff(ours, ids, mask, tt, *right) <= TOL  # this head count, right-padded

    # ours: left padding changes nothing at the real tokens, with every kernel
    moved = tuple(left_padded(x, mask) for x in right)
    for kernel in kernel_names():
        d = diff(with_kernel(ours, kernel), lids, lmask, ltt, *moved)
        assert d <= TOL, f"{kernel}: left-padded batch differs by {d:.3g}"

    # transformers, told each sequence's positions, agrees with ours
    given = reference(lids, lmask, ltt, position_ids=per_sequence_positions(lmask) + first)
    assert diff(ours, lids, lmask, ltt, *given) <= TOL

    # transformers with its default positions: the same, or the documented difference
    d = diff(ours, lids, lmask, ltt, *reference(lids, lmask, ltt))
    if counts_per_sequence:
        assert d <= TOL, f"{family}: transformers' default positions differ by {d:.3g}"
    else:
        assert d > 0.1, f"{family}: transformers now counts positions per sequence ({d:.3g})"


@pytest.mark.parametrize("n_heads", [4, 6])
def test_mosaicbert_left_padded_matches_the_reference_per_sequence(n_heads):
    """ALiBi depends only on distances: a left-padded batch gives, at the real tokens, the
    independent reference's output for each sequence alone (every CPU kernel)."""
    from helpers import left_padded

    spec = registry.compose(
        "mosaicbert-tiny",
        [
            f"model.d_model={8 * n_heads}",
            f"model.n_heads={n_heads}",
            "model.n_layers=2",
            "model.vocab_size=89",
        ],
    )
    model = registry.build(spec)
    randomize_(model, seed=n_heads)
    model.eval()
    ids, mask = padded_batch(spec.vocab_size, spec.pad_token_id, lengths=[23, 16, 9, 2])
    lids, lmask = left_padded(ids, mask, spec.pad_token_id), left_padded(mask, mask)
    L = ids.shape[1]
    ref_h = torch.zeros(ids.shape + (spec.d_model,), dtype=torch.float64)
    for b, n in enumerate(mask.sum(1).tolist()):
        ref_h[b, L - n :], _ = mosaic_reference(model.state_dict(), spec, ids[b, :n])
    for kernel in kernel_names():
        with torch.no_grad():
            out = with_kernel(model, kernel)(lids, lmask)
        dh = max_diff(out.last_hidden_state, ref_h, lmask)
        assert dh <= TOL, (kernel, dh)
