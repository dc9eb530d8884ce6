"""DeBERTa-v3 as a recipe: disentangled attention, log buckets, the enhanced mask decoder.

Parity: tiny random ``DebertaV2ForMaskedLM`` / ``DebertaV2Model`` (fp32; eager is the only
attention transformers has for DeBERTa) are saved, imported with ``train.interop.hf.import_hf`` and
compared with our model -- as imported, as reloaded by ``registry.load`` and rebuilt with the
``eager`` and ``sdpa`` kernels -- at the real tokens of a right-padded batch. The longest
sequence (40) is far longer than ``position_buckets`` (16: mid 8, so distances 9..39 fall in
log buckets); weights are redrawn with a large spread so that attention is far from uniform.

The enhanced mask decoder has no transformers class; its reference here is DeBERTa's own
algorithm (``EnhancedMaskDecoder.emd_context_layer``) written with transformers' DeBERTa
layer, which takes separate ``query_states``.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from helpers import max_diff, randomize_, run_main, with_kernel

from bertsmith import registry
from bertsmith.blocks.positional import log_bucket
from bertsmith.registry import SpecError
from bertsmith.train.interop.hf import import_hf

TOL = 1e-5
LENGTHS = [40, 31, 17, 6, 1]
BUCKETS = 16


def padded_batch(vocab: int, lengths=LENGTHS, seed: int = 0):
    """Right-padded ``input_ids [B, L]`` (pad id 0, never inside a sequence) and its mask."""
    g = torch.Generator().manual_seed(seed)
    L = max(lengths)
    ids = torch.randint(1, vocab, (len(lengths), L), generator=g)
    mask = (torch.arange(L)[None, :] < torch.tensor(lengths)[:, None]).long()
    return ids.masked_fill(mask == 0, 0), mask


# --- log buckets -------------------------------------------------------------------------


def bucket_by_hand(r: int, buckets: int, max_position: int) -> int:
    """DeBERTa-v2's bucket of distance r, from the formula, in float64."""
    mid = buckets // 2
    if abs(r) <= mid:
        return r
    far = mid + math.ceil(math.log(abs(r) / mid) / math.log((max_position - 1) / mid) * (mid - 1))
    return int(math.copysign(far, r))


@pytest.mark.parametrize("buckets, max_position", [(256, 512), (16, 64), (8, 24), (256, 8192)])
def test_log_bucket_matches_the_formula_and_transformers(buckets, max_position):
    from transformers.models.deberta_v2.modeling_deberta_v2 import make_log_bucket_position

    rel = torch.arange(-2 * max_position, 2 * max_position + 1)
    ours = log_bucket(rel, buckets, max_position)
    assert torch.equal(ours, make_log_bucket_position(rel, buckets, max_position).long())
    assert ours.tolist() == [bucket_by_hand(r, buckets, max_position) for r in rel.tolist()]


def test_log_bucket_hand_values():
    # mid 8; log(63/8) spreads distances 9..63 over buckets 9..15
    got = log_bucket(torch.tensor([0, 1, -8, 8, 9, 10, 63, -63, 64, 200]), 16, 64).tolist()
    assert got == [0, 1, -8, 8, 9, 9, 15, -15, 16, 19]


# --- parity with transformers ------------------------------------------------------------

BASE_CONFIG = dict(
    vocab_size=89,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=48,
    max_position_embeddings=64,
    type_vocab_size=0,
    relative_attention=True,
    position_biased_input=False,
    pos_att_type=["p2c", "c2p"],
    position_buckets=BUCKETS,
    norm_rel_ebd="layer_norm",
    share_att_key=True,
    hidden_dropout_prob=0.1,  # imported as dropout; eval() must switch it off
    attention_probs_dropout_prob=0.1,
)

# name -> (transformers class, config changes)
CASES = {
    "v3-mlm": ("DebertaV2ForMaskedLM", {}),
    "v3-mlm-new-head": ("DebertaV2ForMaskedLM", {"legacy": False}),
    "separate-keys-mlm": ("DebertaV2ForMaskedLM", {"share_att_key": False}),
    "separate-keys-c2p-types": (
        "DebertaV2ForMaskedLM",
        {"share_att_key": False, "pos_att_type": ["c2p"], "type_vocab_size": 2},
    ),
    "shared-p2c-no-norm-base": ("DebertaV2Model", {"pos_att_type": "p2c", "norm_rel_ebd": "none"}),
    "no-buckets-clipped": ("DebertaV2ForMaskedLM", {"position_buckets": -1, "max_relative_positions": 24}),
    "untied-legacy-decoder": (
        "DebertaV2ForMaskedLM",
        {"tie_word_embeddings": False, "pos_att_type": ["c2p"]},
    ),
    "absolute-positions": (
        "DebertaV2ForMaskedLM",
        {"relative_attention": False, "position_biased_input": True, "pos_att_type": None},
    ),
}


class Imported:
    """A reference model, its outputs on the padded batch, and our imported model."""

    def __init__(self, name: str, root):
        import transformers

        cls_name, changes = CASES[name]
        torch.manual_seed(0)
        config = transformers.DebertaV2Config(**{**BASE_CONFIG, **changes}, attn_implementation="eager")
        self.ref = getattr(transformers, cls_name)(config).eval()
        randomize_(self.ref, seed=1)
        self.ids, self.mask = padded_batch(config.vocab_size)
        self.types = (self.ids % 2) * self.mask if config.type_vocab_size else None
        with torch.no_grad():
            out = self.ref(
                self.ids, attention_mask=self.mask, token_type_ids=self.types, output_hidden_states=True
            )
        self.ref_hidden = out.hidden_states[-1]
        self.ref_logits = getattr(out, "logits", None)
        self.ref.save_pretrained(root / "hf")
        self.out_dir = root / "ours"
        self.model = import_hf(root / "hf", self.out_dir).eval()

    def check(self, model, how: str = "") -> tuple[float, float | None]:
        """Max |ours - reference| over real tokens: (hidden states, logits or None)."""
        with torch.no_grad():
            out = model(self.ids, self.mask, token_type_ids=self.types)
        dh = max_diff(out.last_hidden_state, self.ref_hidden, self.mask)
        dl = None if self.ref_logits is None else max_diff(out.logits, self.ref_logits, self.mask)
        assert (out.logits is None) == (self.ref_logits is None)
        print(f"{how}: hidden {dh:.2e} logits {dl if dl is None else f'{dl:.2e}'}")
        return dh, dl


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    cache: dict[str, Imported] = {}

    def get(name: str) -> Imported:
        if name not in cache:
            cache[name] = Imported(name, tmp_path_factory.mktemp(name))
        return cache[name]

    return get


@pytest.mark.parametrize("case", list(CASES))
def test_imported_model_matches_transformers(imported, case):
    c = imported(case)
    models = {
        "imported": c.model,
        "loaded": registry.load(c.out_dir).eval(),
        "eager": with_kernel(c.model, "eager"),
        "sdpa": with_kernel(c.model, "sdpa"),
    }
    for how, model in models.items():
        dh, dl = c.check(model, f"{case} {how}")
        assert dh <= TOL, f"{how}: last hidden state differs by {dh:.3g}"
        assert dl is None or dl <= TOL, f"{how}: MLM logits differ by {dl:.3g}"


def test_imported_specs_say_what_the_configs_say(imported):
    spec = imported("v3-mlm").model.spec
    p = spec.positional
    assert (p.kind, p.pos_att_type, p.position_buckets, p.max_relative_positions) == (
        "disentangled",
        ("p2c", "c2p"),
        BUCKETS,
        None,
    )
    assert (p.norm_rel_ebd, p.share_att_key, p.dropout) == (True, True, 0.1)
    assert (spec.placement.kind, spec.norm.eps, spec.type_vocab_size) == ("post", 1e-7, 0)
    assert (spec.head.kind, spec.head.tied) == ("mlm", True)
    p = imported("shared-p2c-no-norm-base").model.spec.positional
    assert (p.pos_att_type, p.norm_rel_ebd) == (("p2c",), False)
    assert imported("shared-p2c-no-norm-base").model.spec.head is None
    p = imported("no-buckets-clipped").model.spec.positional
    assert (p.position_buckets, p.max_relative_positions) == (0, 24)
    assert imported("untied-legacy-decoder").model.spec.head.tied is False
    assert imported("absolute-positions").model.spec.positional.kind == "learned"


def test_separate_position_projections_live_in_their_layer(imported):
    model = imported("separate-keys-mlm").model
    names = {n for n, _ in model.named_parameters()}
    for i in range(2):
        for proj in ("key", "query"):
            assert {
                f"encoder.layers.{i}.attn.positional.{proj}.weight",
                f"encoder.layers.{i}.attn.positional.{proj}.bias",
            } <= names
    assert "encoder.embeddings.positional.rel_embeddings.weight" in names
    assert "encoder.embeddings.positional.norm.weight" in names
    only_c2p = {n for n, _ in imported("separate-keys-c2p-types").model.named_parameters()}
    assert "encoder.layers.0.attn.positional.key.weight" in only_c2p
    assert not any(".positional.query." in n for n in only_c2p)
    ref = imported("separate-keys-mlm").ref.deberta
    ours = sum(p.numel() for p in model.encoder.parameters())
    assert ours == sum(p.numel() for p in ref.parameters())


@pytest.mark.parametrize(
    "update",
    [
        {"max_relative_positions": 200},  # moves every log-bucket boundary
        {"max_relative_positions": 40},
        {"pos_att_type": ("c2p",)},
        {"pos_att_type": ("p2c",)},
    ],
    ids=["bucket-reach", "bucket-reach-short", "no-p2c", "no-c2p"],
)
def test_comparison_is_sensitive(imported, update):
    """A model that gets one detail wrong misses the reference by far more than the tolerance."""
    c = imported("v3-mlm")
    data = c.model.spec.model_dump()
    data["positional"] = {**data["positional"], **update}
    wrong = registry.build(registry.parse_spec(data), init=False)
    wrong.load_state_dict(c.model.state_dict())
    dh, _ = c.check(wrong.eval())
    assert dh > 1e-3


def test_import_hf_cli_new_head_layout(imported, tmp_path):
    c = imported("v3-mlm-new-head")
    hf = c.out_dir.parent / "hf"
    run = run_main("import-hf", hf, "--out", tmp_path / "m")  # in-process
    assert run.returncode == 0, run.stderr
    assert "head: mlm" in run.stdout
    dh, dl = c.check(registry.load(tmp_path / "m").eval())
    assert dh <= TOL and dl <= TOL


@pytest.mark.parametrize(
    "changes, key",
    [
        ({"conv_kernel_size": 3}, "conv_kernel_size"),
        ({"position_biased_input": True}, "position_biased_input"),
        ({"embedding_size": 16}, "embedding_size"),
        ({"pos_att_type": ["p2c", "p2p"]}, "pos_att_type"),
    ],
)
def test_import_refuses_what_no_block_builds(tmp_path, changes, key):
    config = {**BASE_CONFIG, **changes, "model_type": "deberta-v2", "architectures": ["DebertaV2Model"]}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(SpecError) as e:
        import_hf(tmp_path, tmp_path / "out")
    assert len(e.value.lines) == 1 and e.value.lines[0].startswith(f"config.json {key}: given ")


# --- parameter counts --------------------------------------------------------------------

V3_PARAMS = {"deberta-v3-base": 183_831_552, "deberta-v3-large": 434_012_160}


@pytest.mark.parametrize("name", sorted(V3_PARAMS))
def test_v3_parameter_count(name):
    spec = registry.compose(name)
    p = registry.cost(spec)["params"]
    assert p["total"] == V3_PARAMS[name]
    D, S = spec.d_model, spec.positional.position_buckets
    rel = 2 * S * D + 2 * D  # relative embeddings and their LayerNorm
    assert p["embedding"] == spec.vocab_size * D + 2 * D + rel


def test_v3_base_count_equals_transformers_and_inspect():
    import transformers

    config = transformers.DebertaV2Config(
        vocab_size=128100,
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=3072,
        relative_attention=True,
        position_biased_input=False,
        pos_att_type=["p2c", "c2p"],
        position_buckets=256,
        norm_rel_ebd="layer_norm",
        share_att_key=True,
    )
    with torch.device("meta"):
        ref = transformers.DebertaV2Model(config)
    assert sum(p.numel() for p in ref.parameters()) == V3_PARAMS["deberta-v3-base"]
    run = run_main("inspect", "deberta-v3-base", "--json")  # in-process
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["params"]["total"] == V3_PARAMS["deberta-v3-base"]


def test_separate_keys_add_their_projections_to_the_count():
    shared = registry.cost(registry.compose("deberta-tiny"))["params"]
    separate = registry.cost(registry.compose("deberta-tiny", ["model.positional.share_att_key=false"]))[
        "params"
    ]
    D, L = 256, 4
    assert separate["non_embedding"] - shared["non_embedding"] == L * 2 * (D * D + D)
    assert separate["embedding"] == shared["embedding"]


def test_flops_count_the_relative_terms_once_per_query():
    """Per query and layer: q·kᵀ and p·v (4·D per key) plus, per term, a product with all
    2S relative rows (2·2S·D); separate position projections act on the table, not per token."""
    L = 512
    shared = registry.cost(registry.compose("deberta-v3-base"), seq_len=L)["flops_per_token"]
    assert shared["attention"] == 12 * (4 * 768 * L + 2 * 2 * (2 * 256) * 768)
    assert shared["linear"] == 12 * 2 * (4 * 768 * 768 + 2 * 768 * 3072)
    separate = registry.compose("deberta-v3-base", ["model.positional.share_att_key=false"])
    assert registry.cost(separate, seq_len=L)["flops_per_token"] == shared


# --- kernels -----------------------------------------------------------------------------


def _grads(model, ids, mask):
    model.zero_grad()
    out = model(ids, mask)
    real = mask.bool()
    # a loss that touches every real output, weighted so no direction cancels
    w = torch.linspace(-1, 1, out.last_hidden_state.shape[-1])
    loss = (out.last_hidden_state[real] * w).sum() + out.logits[real].logsumexp(-1).sum()
    loss.backward()
    return out.last_hidden_state, {
        n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None
    }


@pytest.mark.parametrize(
    "recipe, overrides",
    [
        ("deberta-tiny", ["model.n_layers=2", "model.positional.position_buckets=16"]),
        (
            "deberta-tiny",
            [
                "model.n_layers=2",
                "model.positional.share_att_key=false",
                "model.positional.pos_att_type=[c2p]",
            ],
        ),
        (
            "modernbert-tiny",
            [
                "model/positional=disentangled",
                "model/norm=rmsnorm",
                "model.n_layers=3",
                "model.attention.window=16",
                "model.positional.position_buckets=16",
            ],
        ),
    ],
    ids=["deberta-shared", "deberta-separate-c2p", "modernbert-rmsnorm-window"],
)
def test_eager_equals_sdpa_forward_and_backward(recipe, overrides):
    spec = registry.compose(
        recipe,
        [
            "model.dropout.embedding=0",
            "model.dropout.attention=0",
            "model.dropout.attn_out=0",
            "model.dropout.mlp=0",
            "model.positional.dropout=0",
            *overrides,
        ],
    )
    base = registry.build(spec)
    randomize_(base, seed=2, scale=0.08)
    ids, mask = padded_batch(spec.vocab_size)
    results = {k: _grads(with_kernel(base, k).train(), ids, mask) for k in ("eager", "sdpa")}
    (h_e, g_e), (h_s, g_s) = results["eager"], results["sdpa"]
    assert max_diff(h_e, h_s, mask) <= TOL
    assert g_e.keys() == g_s.keys() == {n for n, _ in base.named_parameters()}
    for name in g_e:
        scale = g_e[name].abs().max().item()
        diff = (g_e[name] - g_s[name]).abs().max().item()
        assert diff <= 1e-4 * max(1.0, scale), (name, diff, scale)


# --- compatibility -----------------------------------------------------------------------


@pytest.mark.parametrize("recipe", ["deberta-tiny", "modernbert-tiny model/positional=disentangled"])
def test_flex_is_refused_by_validation(recipe):
    name, *overrides = recipe.split()
    with pytest.raises(SpecError) as e:
        registry.validate(name, [*overrides, "model/kernel=flex"])
    assert e.value.lines == [
        "model.kernel: given 'flex', but positional 'disentangled' needs a kernel with bias "
        "(disentangled attention adds a dense c2p/p2c score bias); allowed: eager, sdpa"
    ]


def test_flex_refusal_on_the_command_line():
    run = run_main("validate", "deberta-tiny", "model/kernel=flex")  # in-process
    assert run.returncode == 2
    assert "Traceback" not in run.stderr
    assert run.stderr.startswith("error: model.kernel: given 'flex', but positional 'disentangled'")


@pytest.mark.parametrize(
    "overrides, line",
    [
        (
            ["model.max_seq_len=100"],
            "model.max_seq_len: given 100, allowed: at least position_buckets // 2 + 2 = 130",
        ),
        (
            ["model.positional.max_relative_positions=64"],
            "model.positional.max_relative_positions: given 64, allowed: at least",
        ),
        (
            ["model.positional.position_buckets=1"],
            "model.positional.position_buckets: given 1, allowed: 0 (no buckets) or at least 2",
        ),
        (
            ["model.positional.pos_att_type=[c2p,c2p]"],
            "model.positional.pos_att_type: given ['c2p', 'c2p'], allowed: distinct",
        ),
    ],
)
def test_bucket_settings_are_checked(overrides, line):
    with pytest.raises(SpecError) as e:
        registry.validate("deberta-tiny", overrides)
    assert len(e.value.lines) == 1 and e.value.lines[0].startswith(line), e.value.lines


def reference_local_disentangled(
    attn, x: torch.Tensor, rel: torch.Tensor, window: int, buckets: int, reach: int
):
    """One sequence's disentangled attention with a window, float64, from the formulas."""
    w = {k: v.double() for k, v in attn.state_dict().items()}
    x, rel = x.double(), rel.double()
    n, D = x.shape
    H = attn.n_heads
    d = D // H
    qkv = x @ w["qkv.weight"].T  # modernbert: no qkv bias
    q, k, v = qkv[:, :D], qkv[:, D : 2 * D], qkv[:, 2 * D :]
    q_rel, k_rel = rel @ w["qkv.weight"][:D].T, rel @ w["qkv.weight"][D : 2 * D].T  # shared keys
    span = buckets
    out = torch.zeros(n, D, dtype=torch.float64)
    for h in range(H):
        c = slice(h * d, (h + 1) * d)
        scores = torch.full((n, n), -math.inf, dtype=torch.float64)
        for i in range(n):
            for j in range(n):
                if abs(i - j) > window // 2:
                    continue
                r = min(max(bucket_by_hand(i - j, buckets, reach) + span, 0), 2 * span - 1)
                s = q[i, c] @ k[j, c] + q[i, c] @ k_rel[r, c] + k[j, c] @ q_rel[r, c]
                scores[i, j] = s / math.sqrt(d * 3)
        out[:, c] = torch.softmax(scores, -1) @ v[:, c]
    return out @ w["out.weight"].T


def test_modernbert_with_disentangled_trains_and_windows_the_bias(tmp_path):
    run = run_main("validate", "modernbert-tiny", "model/positional=disentangled")  # in-process
    assert run.returncode == 0, run.stderr
    spec = registry.validate(
        "modernbert-tiny", ["model/positional=disentangled"], device="cpu", training=True
    )
    assert (spec.placement.kind, spec.mlp.kind, spec.positional.kind) == ("pre", "glu", "disentangled")
    model = registry.build(spec).train()
    assert registry.layer_plan(spec)[1] == 128  # local: window ±64
    lengths = [150, 97]  # longer than the window, so local layers mask part of the bias
    ids, mask = padded_batch(spec.vocab_size, lengths)
    out = model(ids, mask)
    real = mask.bool()
    loss = F.cross_entropy(out.logits[real], ids[real])
    assert torch.isfinite(loss)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    # and it learns: a few steps on one batch lower the loss
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(4):
        opt.step()
        opt.zero_grad()
        loss = F.cross_entropy(model(ids, mask).logits[real], ids[real])
        loss.backward()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.1, losses

    # a local layer applies the window and the relative bias together (independent reference)
    small = registry.build(
        registry.compose(
            "modernbert-tiny",
            [
                "model/positional=disentangled",
                "model.attention.window=8",
                "model.positional.position_buckets=8",
                "model.max_seq_len=64",
                "model.n_layers=2",
                "model.d_model=64",
                "model.n_heads=2",
            ],
        )
    ).eval()
    randomize_(small, seed=5, scale=0.3)
    attn = small.encoder.layers[1].attn
    assert attn.window == 8
    from bertsmith.blocks.stream import unpad

    sl = [23, 11]
    x = torch.randn(sum(sl), 64, generator=torch.Generator().manual_seed(0))
    _, stream = unpad((torch.arange(23)[None] < torch.tensor(sl)[:, None]).long())
    ctx = small.encoder.embeddings.positional.prepare(stream)
    with torch.no_grad():
        got = attn(x, stream, ctx)
        for start, n in zip([0, 23], sl, strict=True):
            ref = reference_local_disentangled(attn, x[start : start + n], ctx.rel, 8, 8, 64)
            torch.testing.assert_close(got[start : start + n].double(), ref, rtol=1e-5, atol=1e-5)
            unwindowed = reference_local_disentangled(attn, x[start : start + n], ctx.rel, 10**6, 8, 64)
            assert (unwindowed - ref).abs().max() > 1e-3  # the window is visible in this test


# --- the enhanced mask decoder -----------------------------------------------------------


def emd_reference(hf_mlm, positions: torch.Tensor, ids, mask, steps: int = 2) -> torch.Tensor:
    """DeBERTa's EMD (``emd_context_layer`` then the MLM head) with transformers' modules:
    the last layer run ``steps`` times on the query stream H + P, keys/values H = the input of
    the last layer; then the MLM head."""
    deberta = hf_mlm.deberta
    enc = deberta.encoder
    hidden = deberta(ids, attention_mask=mask, output_hidden_states=True).hidden_states[-2]
    att_mask = enc.get_attention_mask(mask)
    rel_pos = enc.get_rel_pos(hidden)
    rel_emb = enc.get_rel_embedding()
    query = hidden + positions[: ids.shape[1]][None]
    for _ in range(steps):
        query = enc.layer[-1](
            hidden, att_mask, query_states=query, relative_pos=rel_pos, rel_embeddings=rel_emb
        )[0]
    return hf_mlm.cls(query)


def test_emd_head_matches_deberta_algorithm(imported, tmp_path):
    c = imported("v3-mlm")
    spec = c.model.spec.model_copy(update={"head": registry.REGISTRY.get("head", "emd").params()})
    model = registry.build(spec, init=False)
    missing = model.load_state_dict(c.model.state_dict(), strict=False).missing_keys
    assert missing == ["head.positions.weight"]  # the only weights EMD adds
    with torch.no_grad():
        model.head.positions.weight.normal_(0, 0.5)
    model.eval()
    with torch.no_grad():
        out = model(c.ids, c.mask)
        ref = emd_reference(c.ref, model.head.positions.weight, c.ids, c.mask)
        plain = c.model(c.ids, c.mask)
    assert max_diff(out.logits, ref, c.mask) <= TOL
    assert max_diff(out.last_hidden_state, c.ref_hidden, c.mask) <= TOL  # the encoder output is unchanged
    assert max_diff(out.logits, plain.logits, c.mask) > 1e-2  # EMD is not the plain head
    # positions matter: a shifted table changes the logits
    shifted = emd_reference(c.ref, model.head.positions.weight.roll(1, 0), c.ids, c.mask)
    assert max_diff(shifted, ref, c.mask) > 1e-3
    # sparse prediction decodes the same rows
    predict = torch.zeros_like(c.ids, dtype=torch.bool)
    predict[0, [3, 39]] = predict[2, 5] = True
    with torch.no_grad():
        sparse = model(c.ids, c.mask, predict=predict).logits
    assert (sparse - out.logits[predict]).abs().max() <= TOL
    # saved once: the shared last layer is not stored twice
    registry.save(model, tmp_path / "emd")
    from safetensors import safe_open

    with safe_open(str(tmp_path / "emd" / "model.safetensors"), framework="pt") as f:
        keys = set(f.keys())
    assert not any(k.startswith("head.") and ".attn." in k for k in keys)
    with torch.no_grad():
        again = registry.load(tmp_path / "emd").eval()(c.ids, c.mask).logits
    assert max_diff(again, out.logits, c.mask) == 0.0


def test_emd_head_on_a_pre_norm_model_trains():
    spec = registry.validate(
        "modernbert-tiny", ["model/positional=disentangled", "model/head=emd", "model.n_layers=3"]
    )
    model = registry.build(spec).train()
    mlm = registry.cost(spec.model_copy(update={"head": registry.REGISTRY.get("head", "mlm").params()}))
    # EMD adds only its absolute position table to the MLM head (the last layer is shared)
    assert registry.cost(spec)["params"]["head"] - mlm["params"]["head"] == spec.max_seq_len * spec.d_model
    ids, mask = padded_batch(spec.vocab_size, [30, 12])
    out = model(ids, mask)
    real = mask.bool()
    F.cross_entropy(out.logits[real], ids[real]).backward()
    for name, q in model.named_parameters():
        assert q.grad is not None and torch.isfinite(q.grad).all(), name
    assert model.head.positions.weight.grad.abs().sum() > 0


# --- left padding and head counts --------------------------------------------------------

# case -> whether transformers, given no position_ids, counts a left-padded sequence's
# positions from its first real token (or gives the same result as if it did)
LEFT_CASES = {"v3-mlm": True, "separate-keys-c2p-types": True, "absolute-positions": False}


@pytest.mark.parametrize("heads", [2, 8])
@pytest.mark.parametrize("case", list(LEFT_CASES))
def test_left_padded_batch_and_other_head_counts(case, heads, tmp_path):
    """Two more head counts (the cases above use 4), right- and left-padded.

    What bertsmith does: the encoder unpads the batch, so a sequence's positions count from
    its own first real token wherever its padding is; a left-padded batch gives, at the real
    tokens, the outputs of the same batch right-padded (eager and sdpa).

    Whether transformers agrees when given no ``position_ids``:
    - DeBERTa-v3 (relative attention, no absolute positions): yes. Its relative positions
      are differences of padded indices, which left padding does not change.
    - ``position_biased_input`` (absolute learned positions, ``absolute-positions``): no. The
      default position ids count from the padded start (measured: logits off by about 4);
      given per-sequence ``position_ids`` it matches ours within TOL."""
    import transformers
    from helpers import diff_from, hf_hidden_and_logits, left_padded, per_sequence_positions

    cls_name, changes = CASES[case]
    torch.manual_seed(0)
    config = transformers.DebertaV2Config(
        **{**BASE_CONFIG, **changes, "num_attention_heads": heads}, attn_implementation="eager"
    )
    ref = getattr(transformers, cls_name)(config).eval()
    randomize_(ref, seed=heads)
    ids, mask = padded_batch(config.vocab_size)
    tt = (ids % 2) * mask if config.type_vocab_size else None
    lids, lmask = left_padded(ids, mask), left_padded(mask, mask)
    ltt = None if tt is None else left_padded(tt, mask)
    ref.save_pretrained(tmp_path / "hf")
    ours = import_hf(tmp_path / "hf", tmp_path / "ours").eval()
    assert ours.spec.n_heads == heads

    def reference(x, m, t, **kw):
        return hf_hidden_and_logits(ref, x, m, t, **kw)

    diff = diff_from

    right = reference(ids, mask, tt)
    assert diff(ours, ids, mask, tt, *right) <= TOL  # this head count, right-padded

    moved = tuple(left_padded(x, mask) for x in right)
    for kernel in ("eager", "sdpa"):
        d = diff(with_kernel(ours, kernel), lids, lmask, ltt, *moved)
        assert d <= TOL, f"{kernel}: left-padded batch differs by {d:.3g}"

    given = reference(lids, lmask, ltt, position_ids=per_sequence_positions(lmask))
    assert diff(ours, lids, lmask, ltt, *given) <= TOL

    d = diff(ours, lids, lmask, ltt, *reference(lids, lmask, ltt))
    if LEFT_CASES[case]:
        assert d <= TOL, f"{case}: transformers' default positions differ by {d:.3g}"
    else:
        assert d > 0.1, f"{case}: transformers now counts positions per sequence ({d:.3g})"
