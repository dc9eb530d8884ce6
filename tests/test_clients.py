"""The chosen encoder where encoders are used, held to the real clients in-process:
transformers' ``pipeline("fill-mask")`` on a ``--to hf`` export against ``bertsmith fill-mask``;
``SentenceTransformer`` on a ``--to sentence-transformers`` export against ``bertsmith embed``;
ONNX Runtime on a ``--to onnx`` export against bertsmith's model, on batches other than the
ones the export checked itself with.

Two tiny runs are trained (BPE with <mask>: modernbert; WordPiece with [MASK] and BERT's NSP
head: bert); every family's tiny recipe and two non-native compositions (MosaicBERT's ALiBi +
GLU, BERT with local windows) are model directories with random weights and the BPE run's
tokenizer.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import transformers
from helpers import TINY_TRAIN, bertsmith, max_diff, randomize_, right_padded_batch

from bertsmith import registry
from bertsmith.train.cli import main
from bertsmith.train.interop.export import export_hf
from bertsmith.train.interop.onnx_export import export_onnx, worst
from bertsmith.train.interop.sentence import export_sentence_transformers
from bertsmith.train.interop.usage import embed_texts, fill_mask, load_for_use

ort = pytest.importorskip("onnxruntime", reason="the onnx extra (scripts/setup installs it)")
st = pytest.importorskip("sentence_transformers", reason="the sentence-transformers extra")

RUNS = {"modernbert": ["pretrain=modernbert"], "bert": ["pretrain=bert"]}
MODELS = {  # name -> (recipe, overrides, native in transformers)
    "bert": ("bert-tiny", []),
    "roberta": ("roberta-tiny", []),
    "deberta": ("deberta-tiny", []),
    "modernbert": ("modernbert-tiny", ["model.n_layers=3"]),  # a local layer between globals
    "mosaicbert": ("mosaicbert-tiny", []),  # ALiBi + GLU: remote code
    "bert-local": ("bert-tiny", ["model/attention=alternating"]),  # local windows: remote code
}
TEXTS = [
    "Return the number of items in the list.",
    "Open the file and read it.",
    " ".join(["Split the string at each separator and return a list of the parts."] * 25),
    "",
    "x",
]


pytestmark = pytest.mark.usefixtures("quiet_transformers")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, cache):
    """family -> a finished tiny run (trained for 30 steps, in parallel)."""
    root = tmp_path_factory.mktemp("runs")
    procs = {
        name: bertsmith(
            "train",
            *TINY_TRAIN,
            *extra,
            "trainer.max_steps=30",
            "trainer.val_every=30",
            "trainer.threads=1",
            f"hydra.run.dir={root / name}",
            cache=cache,
            wait=False,
        )
        for name, extra in RUNS.items()
    }
    for name, proc in procs.items():
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, f"{name}: {err[-3000:]}"
    return {name: root / name for name in procs}


@pytest.fixture(scope="module")
def models(runs, tmp_path_factory):
    """name -> a model directory: the recipe at 2 layers with random weights (N(0, 0.14²)) and
    the modernbert run's tokenizer."""
    root = tmp_path_factory.mktemp("models")
    tokenizer = runs["modernbert"] / "model" / "tokenizer.json"
    pad = registry.load_spec(runs["modernbert"] / "model" / "spec.yaml").pad_token_id
    out = {}
    for i, (name, (recipe, extra)) in enumerate(MODELS.items()):
        overrides = ["model.n_layers=2", *extra, "model.vocab_size=512", f"model.pad_token_id={pad}"]
        model = registry.build(registry.compose(recipe, overrides))
        randomize_(model, seed=i)
        out[name] = registry.save(model, root / name, tokenizer=tokenizer)
    return out


def same_predictions(ours: list[list[dict]], theirs, tol: float = 1e-5) -> None:
    """Equal scores (within ``tol``), and equal tokens, strings and sequences wherever the
    scores of neighbouring ranks are further apart than ``tol`` (a near-tie may swap)."""
    theirs = [theirs] if isinstance(theirs[0], dict) else theirs
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs, strict=True):
        assert len(a) == len(b)
        for k, (x, y) in enumerate(zip(a, b, strict=True)):
            assert abs(x["score"] - y["score"]) < tol, (k, x, y)
            gaps = [abs(x["score"] - a[j]["score"]) for j in (k - 1, k + 1) if 0 <= j < len(a)]
            if min(gaps, default=1.0) > tol:
                assert (x["token"], x["token_str"], x["sequence"]) == (
                    y["token"],
                    y["token_str"],
                    y["sequence"],
                )


# --- fill-mask -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", RUNS)
def test_fill_mask_agrees_with_transformers_pipeline_on_the_export(name, runs, tmp_path):
    used = load_for_use(runs[name], "fill-mask")
    mask = used.tokens["mask"]
    export_hf(runs[name], tmp_path / "hf")
    pipe = transformers.pipeline("fill-mask", model=str(tmp_path / "hf"), device="cpu")
    assert pipe.tokenizer.mask_token == mask
    for text in (f"Return the {mask} of the list.", f"Open {mask} file and {mask} it.", f"{mask}"):
        ours = fill_mask(used, text, top_k=7)
        assert len(ours) == text.count(mask) and all(len(row) == 7 for row in ours)
        for row in ours:  # probabilities, in order, below 1
            scores = [r["score"] for r in row]
            assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1 + 1e-6
        same_predictions(ours, pipe(text, top_k=7))


def test_fill_mask_command_prints_what_the_function_returns(runs, capsys):
    used = load_for_use(runs["bert"], "fill-mask")
    text = "The [MASK] is [MASK]."
    capsys.readouterr()
    assert main(["fill-mask", str(runs["bert"]), text, "--top-k", "3", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(json.dumps(fill_mask(used, text, 3)))
    assert main(["fill-mask", str(runs["bert"]), "The [MASK] is here.", "--top-k", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    best = fill_mask(used, "The [MASK] is here.", 2)[0]
    assert len(lines) == 2 and lines[0].split()[0] == f"{best[0]['score']:.4f}"
    assert lines[1].endswith(best[1]["sequence"])


def test_bpe_mask_takes_the_space_before_it(runs):
    """<mask> strips the space before it (as RoBERTa's): "the <mask>" masks " word", the token
    the model learnt to predict, not a lone space followed by a word."""
    used = load_for_use(runs["modernbert"], "fill-mask")
    ids = used.tokenizer.encode("Return the <mask> of it.").ids
    at = ids.index(used.ids["mask"])
    assert used.tokenizer.decode(ids[at - 1 : at]).strip() == "the"
    top = fill_mask(used, "Return the <mask> of it.", 1)[0][0]
    assert top["sequence"].count("  ") == 0  # a word with its space, not a doubled space


# --- embed and sentence-transformers -------------------------------------------------------------


SOURCES = [*(f"run-{r}" for r in RUNS), *MODELS]


def source(name: str, runs, models):
    return runs[name.removeprefix("run-")] if name.startswith("run-") else models[name]


def load_model(src):
    """The model of a run (its model/) or of a model directory."""
    return registry.load(src / "model" if (src / "model").is_dir() else src).eval()


@pytest.mark.parametrize("name", SOURCES)
def test_sentence_transformers_export_gives_bertsmith_embed_vectors(name, runs, models, tmp_path):
    src = source(name, runs, models)
    pooling, normalize = ("cls", True) if name == "run-bert" else ("mean", False)
    got = export_sentence_transformers(src, tmp_path / "st", pooling=pooling, normalize=normalize)
    remote = got["kind"] == "remote"
    assert remote == (name in ("mosaicbert", "bert-local"))
    spec = registry.load_spec(src / "spec.yaml")
    model = st.SentenceTransformer(str(tmp_path / "st"), device="cpu", trust_remote_code=remote)
    assert model.max_seq_length == spec.max_seq_len
    theirs = model.encode(TEXTS, batch_size=3, convert_to_numpy=True)
    out = tmp_path / "vectors.npy"
    (tmp_path / "in.txt").write_text("\n".join(TEXTS) + "\n")
    argv = ["embed", str(src), str(tmp_path / "in.txt"), "--out", str(out), "--pooling", pooling]
    assert main(argv + (["--normalize"] if normalize else [])) == 0
    ours = np.load(out)
    assert ours.shape == theirs.shape == (len(TEXTS), spec.d_model)
    scale = max(1.0, float(np.abs(ours).max()))
    assert float(np.abs(ours - theirs).max()) <= 1e-5 * scale
    assert got["diff"] <= 1e-5 * scale
    if normalize:
        assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-6)
    # the vectors are this model's pooled states, computed here by hand for one text
    used = load_for_use(src, "embed")
    ids = torch.tensor([used.tokenizer.encode(TEXTS[0]).ids])
    with torch.no_grad():
        hidden = used.model(ids).last_hidden_state[0]
    direct = hidden[0] if pooling == "cls" else hidden.mean(0)
    direct = torch.nn.functional.normalize(direct, dim=0) if normalize else direct
    assert max_diff(torch.from_numpy(ours[0]), direct) < 1e-5 * scale


def test_a_fine_tuned_classifier_embeds_with_its_own_pooling(runs, tmp_path, capsys):
    """Without --pooling, the pooling the classifier was fine-tuned with ([CLS] here), both in
    the sentence-transformers export and in `embed`."""
    tokenizer = runs["bert"] / "model" / "tokenizer.json"
    run_spec = registry.load_spec(runs["bert"] / "model" / "spec.yaml")
    overrides = ["model.n_layers=2", "model/head=classification", "model.head.pooling=cls"]
    overrides += [f"model.vocab_size={run_spec.vocab_size}", f"model.pad_token_id={run_spec.pad_token_id}"]
    model = registry.build(registry.compose("bert-tiny", overrides))
    randomize_(model, seed=5)
    src = registry.save(model, tmp_path / "clf", tokenizer=tokenizer)
    got = export_sentence_transformers(src, tmp_path / "st")
    assert got["pooling"] == "cls"
    used = load_for_use(src, "embed")
    cls_vectors = embed_texts(used, TEXTS, "cls")
    assert max_diff(cls_vectors, embed_texts(used, TEXTS, "mean")) > 1e-2  # the choice matters
    theirs = st.SentenceTransformer(
        str(tmp_path / "st"), device="cpu", trust_remote_code=got["kind"] == "remote"
    )
    assert max_diff(torch.from_numpy(theirs.encode(TEXTS, convert_to_numpy=True)), cls_vectors) < 1e-5 * max(
        1.0, cls_vectors.abs().max().item()
    )
    (tmp_path / "in.txt").write_text("\n".join(TEXTS) + "\n")
    capsys.readouterr()
    assert main(["embed", str(src), str(tmp_path / "in.txt"), "--out", str(tmp_path / "v.npy")]) == 0
    assert "cls pooling" in capsys.readouterr().out
    assert max_diff(torch.from_numpy(np.load(tmp_path / "v.npy")), cls_vectors) < 1e-6


def test_embed_writes_json_lines_in_input_order(runs, tmp_path, capsys, monkeypatch):
    import io

    src = runs["modernbert"]
    used = load_for_use(src, "embed")
    expected = embed_texts(used, TEXTS, "mean", False, batch_size=2)
    monkeypatch.setattr("sys.stdin", io.StringIO("\n".join(TEXTS) + "\n"))
    capsys.readouterr()
    assert main(["embed", str(src), "-", "--batch-size", "2"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["text"] for r in rows] == TEXTS
    assert max_diff(torch.tensor([r["embedding"] for r in rows]), expected) < 1e-6
    # batching and order do not change a vector
    one = embed_texts(used, TEXTS[2:3], "mean", False)
    assert max_diff(one[0], expected[2]) < 1e-5


# --- ONNX ------------------------------------------------------------------------------------------


HEADS = [
    ("bert-tiny", ["model/head=nsp"]),
    ("bert-tiny", ["model/head=classification", "model.head.pooling=mean"]),
    ("modernbert-tiny", ["model/head=classification", "model.head.pooling=cls"]),
    ("roberta-tiny", ["model/head=token_classification"]),
    ("deberta-tiny", ["model/head=emd"]),
    ("mosaicbert-tiny", ["model/attention=alternating"]),
]


@pytest.mark.parametrize("recipe, overrides", HEADS, ids=[" ".join(o) for _, o in HEADS])
def test_padded_model_is_the_model_for_every_head(recipe, overrides):
    """The form the ONNX graph is traced from (every position a token, eager attention) gives
    the model's outputs at real tokens — mean pooling skips padding, EMD re-runs its layer — as
    close to the float64 model as the fp32 model itself is (the wide init amplifies rounding:
    EMD's logits are ~1e-4 from float64 on either path)."""
    import copy

    from bertsmith.train.interop.onnx_export import PaddedModel

    model = registry.build(registry.compose(recipe, ["model.n_layers=3", *overrides])).eval()
    randomize_(model, seed=1)
    padded = PaddedModel(model)
    ids, mask = right_padded_batch(model.spec.vocab_size, model.spec.pad_token_id, (140, 57, 1), seed=3)
    with torch.no_grad():
        ours, got = model(ids, mask), dict(zip(padded.outputs, padded(ids, mask), strict=True))
        exact = copy.deepcopy(model).double()(ids, mask)
    assert padded.outputs[1:] == sorted(k for k in ours.keys() if k != "last_hidden_state")
    for key, value in got.items():
        a, ref = getattr(ours, key), getattr(exact, key)
        real = mask.bool() if a.dim() == 3 else slice(None)
        scale = max(1.0, ref.abs().max().item())
        own = max_diff(a[real].double(), ref[real])  # the fp32 model's own rounding
        assert max_diff(value[real].double(), ref[real]) <= 2 * own + 2e-6 * scale, key


@pytest.mark.parametrize("name", MODELS)  # the trained BERT run: the test after this one
def test_onnx_export_runs_in_onnxruntime_like_bertsmith(name, runs, models, tmp_path):
    src = source(name, runs, models)
    head = name != "deberta"  # one encoder-only graph
    report = export_onnx(src, tmp_path / "onnx", head=head)
    model = load_model(src)
    spec = model.spec
    assert json.loads((tmp_path / "onnx" / "onnx.json").read_text())["outputs"] == report.outputs
    assert report.outputs[0] == "last_hidden_state" and ("logits" in report.outputs) == head
    assert report.inputs[2:] == (["token_type_ids"] if spec.type_vocab_size else [])
    session = ort.InferenceSession(str(tmp_path / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"])
    for seed, lengths in enumerate([(150, 131, 7), (1,), (200, 2)]):  # not the export's own probe
        ids, mask = right_padded_batch(spec.vocab_size, spec.pad_token_id, lengths, seed)
        feed = {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}
        if "token_type_ids" in report.inputs:
            feed["token_type_ids"] = np.zeros_like(feed["input_ids"])
        got = dict(zip(report.outputs, session.run(report.outputs, feed), strict=True))
        with torch.no_grad():
            ours = model(ids, mask)
        for key in report.outputs:
            a, b = getattr(ours, key), torch.from_numpy(got[key])
            real = mask.bool() if a.dim() == 3 else slice(None)
            assert a.shape == b.shape, key
            assert max_diff(a[real], b[real]) <= 1e-4 * max(1.0, a.abs().max().item()), (key, lengths)


def test_onnx_of_a_trained_run_with_tokenizer_and_variants(runs, tmp_path):
    """The trained BERT run (token types, NSP head) through its own tokenizer files, as a user
    would run the graph; fp16 and int8 variants run and their stated errors are what they are."""
    src = runs["bert"]
    report = export_onnx(src, tmp_path / "onnx", variants=("fp16", "int8"))
    assert report.outputs == ["last_hidden_state", "logits", "nsp_logits"]
    tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "onnx"))
    enc = tok(TEXTS[:3], padding=True, truncation=True, return_tensors="np")  # to max_seq_len
    feed = {k: enc[k].astype(np.int64) for k in report.inputs}
    model = registry.load(src / "model").eval()
    with torch.no_grad():
        ours = model(torch.from_numpy(feed["input_ids"]), torch.from_numpy(feed["attention_mask"]))
    real = torch.from_numpy(enc["attention_mask"]).bool()
    for variant, bound in (("", 1e-4), ("_fp16", None), ("_int8", None)):
        session = ort.InferenceSession(str(tmp_path / "onnx" / f"model{variant}.onnx"))
        hidden, logits, nsp = (torch.from_numpy(x) for x in session.run(None, feed))
        err = max(max_diff(ours.last_hidden_state[real], hidden[real]), max_diff(ours.nsp_logits, nsp))
        assert torch.isfinite(logits).all()
        if bound is not None:
            assert err <= bound * max(1.0, ours.logits.abs().max().item())
        else:  # lossy, but the same model: far closer than the outputs' own spread
            stated = report.variants[variant[1:]]
            assert 0 < err <= 1.5 * worst(stated) + 1e-6
            assert err < 0.5 * ours.last_hidden_state[real].std().item()


# --- refusals ------------------------------------------------------------------------------------


def one_line(capsys, argv, *needles) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    for needle in needles:
        assert needle in err[0], err
    return err[0]


def test_bad_input_is_one_line_exit_2_and_leaves_nothing(runs, models, tmp_path, capsys, monkeypatch):
    import importlib.util

    run = str(runs["modernbert"])
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    out = tmp_path / "new"
    one_line(capsys, ["export", run, "--to", "tflite", "--out", str(out)], "--to", "tflite")
    one_line(
        capsys,
        ["export", str(tmp_path), "--to", "onnx", "--out", str(out)],
        "export: given",
        "a run directory",
    )
    for to in ("onnx", "sentence-transformers"):
        one_line(capsys, ["export", run, "--to", to, "--out", str(taken)], "which exists", "--force")
    one_line(
        capsys, ["export", run, "--to", "hf", "--int8", "--out", str(out)], "--int8", "only with --to onnx"
    )
    one_line(capsys, ["fill-mask", run, "Return the [MASK] of it."], "has no mask", "<mask>")
    one_line(capsys, ["fill-mask", str(tmp_path / "nothing"), "a <mask>"], "fill-mask: given")
    one_line(capsys, ["embed", run, str(tmp_path / "missing.txt")], "embed: given")
    one_line(capsys, ["embed", run, "-", "--out", str(tmp_path / "v.csv")], ".npy or .jsonl")
    # a model without a masked-LM head, and a model without a tokenizer
    spec = registry.compose("bert-tiny", ["model.n_layers=1", "model/head=classification"])
    registry.save(registry.build(spec), tmp_path / "clf", tokenizer=runs["bert"] / "model" / "tokenizer.json")
    one_line(
        capsys, ["fill-mask", str(tmp_path / "clf"), "a [MASK]"], "without a masked-LM head", "classification"
    )
    registry.save(registry.build(registry.compose("bert-tiny", ["model.n_layers=1"])), tmp_path / "bare")
    one_line(capsys, ["embed", str(tmp_path / "bare"), "-"], "without tokenizer.json")
    # an unreadable model: weights that are not safetensors
    import shutil

    shutil.copytree(models["bert"], tmp_path / "broken")
    (tmp_path / "broken" / "model.safetensors").write_bytes(b"not a safetensors file")
    for argv in (
        ["export", str(tmp_path / "broken"), "--to", "sentence-transformers"],
        ["fill-mask", str(tmp_path / "broken"), "a <mask>"],
    ):
        one_line(
            capsys, argv + (["--out", str(out)] if argv[0] == "export" else []), "model.safetensors: given"
        )
    # a missing extra, named with how to install it
    real = importlib.util.find_spec
    for to, module, extra in (
        ("onnx", "onnxruntime", "onnx"),
        ("sentence-transformers", "sentence_transformers", "sentence-transformers"),
    ):
        monkeypatch.setattr(
            importlib.util, "find_spec", lambda n, *a, m=module: None if n == m else real(n, *a)
        )
        one_line(
            capsys,
            ["export", run, "--to", to, "--out", str(out)],
            module.replace("_", "-") if to != "onnx" else module,
            f"bertsmith[{extra}]",
        )
        monkeypatch.setattr(importlib.util, "find_spec", real)
    assert not out.exists() and [p.name for p in taken.iterdir()] == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bare", "broken", "clf", "taken"]
    # with --force the old directory is replaced once the new one is complete
    assert (
        main(["export", str(models["bert"]), "--to", "onnx", "--no-head", "--out", str(taken), "--force"])
        == 0
    )
    assert (taken / "model.onnx").is_file() and not (taken / "keep.txt").exists()
