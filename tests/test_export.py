"""`bertsmith export` and `init_from`: recipes that compose back, transformers directories that
load with no missing or unexpected weights and match our outputs, remote code that runs where
bertsmith is not installed, refusals that write nothing, and training that starts from a model.

Tiny runs of each family are trained once, in parallel subprocesses (module fixture); tiny
random transformers models give the byte-identical HF -> import-hf -> export round trips.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import torch
import transformers
import yaml
from helpers import TINY_BERT, TINY_MODERNBERT, max_diff, right_padded_batch
from safetensors.torch import load_file

from bertsmith import registry
from bertsmith.train.interop.export import export_hf, export_recipe, hf_family, read_remote_export
from bertsmith.train.interop.hf import import_hf

ROOT = Path(__file__).resolve().parent.parent
TOL = 1e-5
SMALL = [
    "data.max_docs=300",
    "data.max_val_docs=16",
    "data.seq_len=64",
    "data.batch_size=4",
    "tokenizer.vocab_size=512",
    "trainer.max_steps=2",
    "trainer.val_every=2",
    "trainer.progress=false",
    "trainer.threads=1",
]
FAMILY_RUNS = {  # each family's tiny run, and the transformers class its export must be
    "bert": (["pretrain=bert"], "BertForPreTraining"),  # BERT's MLM + NSP heads: both kept
    "roberta": (["pretrain=roberta"], "RobertaForMaskedLM"),
    "modernbert": (["pretrain=modernbert"], "ModernBertForMaskedLM"),
    "deberta": (["model=deberta-tiny", "model.n_layers=2"], "DebertaV2ForMaskedLM"),
}
BASE_PREFIX = {"bert": "bert.", "roberta": "roberta.", "modernbert": "model.", "deberta": "deberta."}


pytestmark = pytest.mark.usefixtures("quiet_transformers")


def _env(cache: Path) -> dict:
    return {**os.environ, "BERTSMITH_CACHE": str(cache), "PYTHONPATH": str(ROOT)}


def bertsmith(*argv, cache: Path, wait: bool = True):
    cmd = [sys.executable, "-m", "bertsmith.train.cli", *map(str, argv)]
    if not wait:
        return subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(cache)
        )
    return subprocess.run(cmd, capture_output=True, text=True, env=_env(cache), timeout=600)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, cache):
    """family -> a finished tiny run directory (trained in parallel)."""
    root = tmp_path_factory.mktemp("runs")
    procs = {
        family: bertsmith("train", *SMALL, *extra, f"hydra.run.dir={root / family}", cache=cache, wait=False)
        for family, (extra, _) in FAMILY_RUNS.items()
    }
    for family, proc in procs.items():
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, f"{family}: {err[-3000:]}"
    return {family: root / family for family in procs}


def no_leftovers(parent: Path, name: str) -> bool:
    return not any(p.name.startswith(f".{name}.") for p in parent.iterdir())


# --- trained runs -> their transformers class ----------------------------------------------------


@pytest.mark.parametrize("family", list(FAMILY_RUNS))
def test_trained_run_exports_to_its_transformers_class(family, runs, cache, tmp_path):
    run, arch = runs[family], FAMILY_RUNS[family][1]
    out = tmp_path / "hf"
    if family == "bert":  # one family through the command line
        done = bertsmith("export", run, "--to", "hf", "--out", out, cache=cache)
        assert done.returncode == 0, done.stderr[-2000:]
        assert f"as transformers {arch}" in done.stdout
    else:
        plan, _ = export_hf(run, out)
        assert (plan.kind, plan.arch) == ("native", arch)
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md",
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    assert no_leftovers(tmp_path, "hf")
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == [arch]
    ours = registry.load(run / "model").eval()
    spec = ours.spec

    # the class itself: every weight in the file has its place, and every place its weight
    own, info = getattr(transformers, arch).from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    saved = set(load_file(out / "model.safetensors"))
    head_keys = {k for k in saved if not k.startswith(BASE_PREFIX[family])}
    mlm, info = transformers.AutoModelForMaskedLM.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"]
    # BertForMaskedLM has no pooler and no NSP classifier: those are reported as unused
    expected_unused = {k for k in saved if "pooler" in k or "seq_relationship" in k}
    assert info["unexpected_keys"] == expected_unused
    kwargs = {"add_pooling_layer": False} if family == "roberta" else {}
    base, info = transformers.AutoModel.from_pretrained(out, output_loading_info=True, **kwargs)
    assert not info["missing_keys"], info  # BERT's pooler comes from its NSP head
    assert info["unexpected_keys"] <= head_keys  # only the head is left out of the bare encoder

    ids, mask = right_padded_batch(spec.vocab_size, spec.pad_token_id)
    types = (torch.arange(ids.shape[1])[None, :] >= 4).long() * mask if spec.type_vocab_size > 1 else None
    extra = {} if types is None else {"token_type_ids": types}
    with torch.no_grad():
        mine = ours(ids, mask, token_type_ids=types)
        hidden = base(input_ids=ids, attention_mask=mask, **extra).last_hidden_state
        logits = mlm(input_ids=ids, attention_mask=mask, **extra).logits
        dh, dl = max_diff(mine.last_hidden_state, hidden, mask), max_diff(mine.logits, logits, mask)
        print(f"{family}: {arch} hidden {dh:.2e} logits {dl:.2e}")
        assert dh <= TOL and dl <= TOL
        if family == "bert":
            nsp = own(input_ids=ids, attention_mask=mask, **extra).seq_relationship_logits
            assert max_diff(mine.nsp_logits, nsp) <= TOL

    # the tokenizer loads with its special tokens and encodes as ours does
    from tokenizers import Tokenizer

    tok = transformers.AutoTokenizer.from_pretrained(out)
    text = "Return the sum of a and b."
    assert tok(text)["input_ids"] == Tokenizer.from_file(str(run / "tokenizer.json")).encode(text).ids
    assert tok.pad_token_id == spec.pad_token_id and tok.mask_token in ("[MASK]", "<mask>")

    card = (out / "README.md").read_text()
    assert f"transformers.{arch}" in card and "## Recipe" in card and "## Metrics" in card
    assert f"{registry.cost(spec)['params']['total']:,}" in card
    assert "val_mlm_acc" in card and "max_docs 300" in card
    if family == "bert":
        assert "BertForPreTraining" in card and "NSP" in card


def test_modernbert_config_reads_in_both_forms(runs, tmp_path):
    """ModernBERT's config carries the 5.x keys and the legacy ones, and they agree."""
    export_hf(runs["modernbert"], tmp_path / "hf", check=False)
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    new = transformers.ModernBertConfig.from_dict(dict(config))
    legacy = {k: v for k, v in config.items() if k not in ("layer_types", "rope_parameters")}
    old = transformers.ModernBertConfig.from_dict(legacy)
    assert config["global_attn_every_n_layers"] == 3
    assert (
        new.layer_types == old.layer_types == ["full_attention", "sliding_attention", "sliding_attention"] * 2
    )
    for kind, theta in (("full_attention", 160000.0), ("sliding_attention", 10000.0)):
        assert new.rope_parameters[kind]["rope_theta"] == old.rope_parameters[kind]["rope_theta"] == theta


# --- recipes -----------------------------------------------------------------------------------


@pytest.mark.parametrize("family", list(FAMILY_RUNS))
def test_recipe_export_composes_back_to_the_same_spec(family, runs, cache, tmp_path):
    spec = registry.load_spec(runs[family] / "spec.yaml")
    path = tmp_path / "chosen.yaml"
    if family == "modernbert":
        done = bertsmith("export", runs[family], "--to", "recipe", "--out", path, cache=cache)
        assert done.returncode == 0, done.stderr
        assert f"bertsmith train model={path}" in done.stdout
    else:
        export_recipe(runs[family], path)
    data = yaml.safe_load(path.read_text())
    for slot in ("positional", "attention", "kernel", "mlp", "norm", "head", "init"):
        assert list(data[slot])[0] == "kind", slot  # every slot stated in full, kind first
        assert {slot: data[slot]["kind"]} in data["defaults"]  # and named, for command-line swaps
    assert data["defaults"][0] == "_self_"
    assert registry.compose(str(path)) == spec
    # a slot swapped on the command line replaces the stated block (its own settings dropped)
    swapped = registry.compose(str(path), ["model/positional=alibi"])
    assert swapped.positional.kind == "alibi"
    assert swapped.model_copy(update={"positional": spec.positional}) == spec

    # usable as `bertsmith train model=<path>`: the train config composes to the same spec
    from hydra import compose, initialize_config_dir

    from bertsmith.registry.composer import RECIPES
    from bertsmith.train.pretrain.app import parse_config, prepare_overrides

    pretrain = FAMILY_RUNS[family][0][0] if family != "deberta" else "pretrain=modernbert"
    overrides = prepare_overrides([f"model={path}", pretrain], tmp_path)  # pretrain=bert swaps the head
    with initialize_config_dir(config_dir=str(RECIPES), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    assert parse_config(cfg, [o for o in overrides if not o.startswith("hydra.")])[0] == spec


# --- HF -> import-hf -> export: byte-identical -------------------------------------------------

_BERT, _MODERNBERT = TINY_BERT, TINY_MODERNBERT
_DEBERTA = dict(
    _BERT,
    relative_attention=True,
    position_buckets=16,
    norm_rel_ebd="layer_norm",
    share_att_key=True,
    pos_att_type=["p2c", "c2p"],
    position_biased_input=False,
    type_vocab_size=0,
    layer_norm_eps=1e-7,
)
_ROBERTA = dict(_BERT, max_position_embeddings=66, pad_token_id=1, type_vocab_size=1, layer_norm_eps=1e-5)
HF_CASES = {
    "bert-mlm": ("BertForMaskedLM", "BertConfig", _BERT),
    "bert-pretraining": ("BertForPreTraining", "BertConfig", _BERT),
    "roberta-mlm": ("RobertaForMaskedLM", "RobertaConfig", _ROBERTA),
    "modernbert-mlm": ("ModernBertForMaskedLM", "ModernBertConfig", _MODERNBERT),
    "modernbert-base": ("ModernBertModel", "ModernBertConfig", _MODERNBERT),
    "modernbert-mlm-untied": (
        "ModernBertForMaskedLM",
        "ModernBertConfig",
        dict(_MODERNBERT, tie_word_embeddings=False),
    ),
    "deberta-mlm": ("DebertaV2ForMaskedLM", "DebertaV2Config", _DEBERTA),
    "deberta-base": ("DebertaV2Model", "DebertaV2Config", _DEBERTA),
}


@pytest.mark.parametrize("case", list(HF_CASES))
def test_import_then_export_gives_identical_tensors(case, tmp_path):
    cls_name, config_name, kwargs = HF_CASES[case]
    torch.manual_seed(0)
    ref = getattr(transformers, cls_name)(getattr(transformers, config_name)(**kwargs)).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.normal_(0.0, 0.2)
    ref.save_pretrained(tmp_path / "hf")
    import_hf(tmp_path / "hf", tmp_path / "ours")
    plan, diffs = export_hf(tmp_path / "ours", tmp_path / "out")
    assert (plan.kind, plan.arch) == ("native", cls_name)
    a, b = load_file(tmp_path / "hf" / "model.safetensors"), load_file(tmp_path / "out" / "model.safetensors")
    assert sorted(a) == sorted(b)
    for key in a:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key
    original = json.loads((tmp_path / "hf" / "config.json").read_text())
    exported = json.loads((tmp_path / "out" / "config.json").read_text())
    skip = {"transformers_version", "_name_or_path", "dtype", "id2label", "label2id"}
    assert {k: exported.get(k) for k in original if k not in skip} == {
        k: v for k, v in original.items() if k not in skip
    }
    again = getattr(transformers, cls_name).from_pretrained(tmp_path / "out").eval()
    ids, mask = right_padded_batch(89, original.get("pad_token_id") or 0, lengths=(40, 31, 6, 1))
    with torch.no_grad():
        x, y = ref(input_ids=ids, attention_mask=mask), again(input_ids=ids, attention_mask=mask)
    key = (
        "prediction_logits"
        if cls_name == "BertForPreTraining"
        else "logits"
        if "ForMaskedLM" in cls_name
        else "last_hidden_state"
    )
    assert torch.equal(x[key], y[key])


# --- compositions no transformers class holds ----------------------------------------------------

REMOTE = {
    "modernbert-alibi": ("modernbert-tiny", ["model/positional=alibi", "model.n_layers=3"], "ModernBERT"),
    "bert-glu-nsp": ("bert-tiny", ["model/mlp=glu", "model/head=nsp", "model.n_layers=2"], "BERT"),
    "deberta-emd": (
        "deberta-tiny",
        ["model/head=emd", "model.n_layers=2", "model.positional.position_buckets=16"],
        "DeBERTa",
    ),
}

ISOLATED = r"""
import json, sys
sys.path.append(SITE)  # torch and transformers, without .pth files (bertsmith's editable hook)
for name in ("registry", "blocks", "train"):
    try:
        __import__(name)
    except ImportError:
        pass
    else:
        raise SystemExit(f"{name} is importable")
import torch, transformers
from transformers import AutoModel, AutoModelForMaskedLM
transformers.logging.set_verbosity_error()
results = {}
for directory in sys.argv[1:]:
    ref = torch.load(directory + ".pt")
    real = ref["mask"].bool()
    base, info = AutoModel.from_pretrained(directory, trust_remote_code=True, output_loading_info=True)
    mlm, info2 = AutoModelForMaskedLM.from_pretrained(directory, trust_remote_code=True, output_loading_info=True)
    with torch.no_grad():
        hidden = base(input_ids=ref["ids"], attention_mask=ref["mask"]).last_hidden_state
        out = mlm(input_ids=ref["ids"], attention_mask=ref["mask"])
    results[directory] = {
        "classes": [type(base).__name__, type(mlm).__name__],
        "loading": [sorted(k for k, v in i.items() if v) for i in (info, info2)],
        "hidden": (hidden[real] - ref["hidden"][real]).abs().max().item(),
        "logits": (out.logits[real] - ref["logits"][real]).abs().max().item(),
        "nsp": None if ref["nsp"] is None else (out.nsp_logits - ref["nsp"]).abs().max().item(),
    }
print(json.dumps(results))
"""


def test_remote_code_loads_without_bertsmith_and_matches(tmp_path):
    dirs = []
    for name, (recipe, overrides, closest) in REMOTE.items():
        spec = registry.compose(recipe, overrides)
        assert hf_family(spec)[0] is None
        model = registry.build(spec)
        with torch.no_grad():  # away from init, so every weight's place matters
            for p in model.parameters():
                p.add_(0.1 * torch.randn_like(p))
        registry.save(model.eval(), tmp_path / f"{name}-ours")
        plan, diffs = export_hf(tmp_path / f"{name}-ours", tmp_path / name)
        assert plan.kind == "remote" and plan.arch == "BertsmithForMaskedLM"
        assert plan.reason.startswith(f"closest is {closest}")
        config = json.loads((tmp_path / name / "config.json").read_text())
        assert config["auto_map"]["AutoModelForMaskedLM"] == "modeling_bertsmith.BertsmithForMaskedLM"
        ids, mask = right_padded_batch(spec.vocab_size, spec.pad_token_id)
        with torch.no_grad():
            out = model(ids, mask)
        torch.save(
            {
                "ids": ids,
                "mask": mask,
                "hidden": out.last_hidden_state,
                "logits": out.logits,
                "nsp": out.nsp_logits,
            },
            tmp_path / f"{name}.pt",
        )
        # and back: init_from and friends read a remote-code export without running it
        back = read_remote_export(tmp_path / name)
        assert back.spec == model.spec
        assert all(torch.equal(back.state_dict()[k], v) for k, v in model.state_dict().items())
        dirs.append(str(tmp_path / name))
    site = sysconfig.get_paths()["purelib"]
    run = subprocess.run(
        [sys.executable, "-I", "-S", "-c", ISOLATED.replace("SITE", repr(site)), *dirs],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={
            "HF_MODULES_CACHE": str(tmp_path / "modules"),
            "HF_HUB_OFFLINE": "1",
            "PATH": os.environ["PATH"],
        },
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads(run.stdout.strip().splitlines()[-1])
    for directory, r in results.items():
        print(Path(directory).name, r)
        assert r["classes"] == ["BertsmithModel", "BertsmithForMaskedLM"]
        assert r["loading"] == [[], []]
        assert r["hidden"] <= TOL and r["logits"] <= TOL
        assert r["nsp"] is None or r["nsp"] <= TOL


def test_native_spec_can_still_be_exported_as_remote_code(runs, tmp_path):
    plan, diffs = export_hf(runs["roberta"], tmp_path / "rc", remote_code=True)
    assert (plan.kind, plan.arch, plan.reason) == ("remote", "BertsmithForMaskedLM", "")
    assert max(diffs.values()) == 0.0  # the same code as ours, run by transformers
    assert "trust_remote_code=True" in (tmp_path / "rc" / "README.md").read_text()


def test_hf_family_says_why_a_spec_is_not_native():
    cases = {
        ("bert-tiny", ("model/mlp=glu",)): "closest is BERT: mlp is 'glu', BERT has 'mlp'",
        ("roberta-tiny", ("model/head=nsp",)): "closest is RoBERTa: head is 'nsp', RoBERTa has None",
        ("bert-tiny", ("model.mlp.activation=relu2",)): "mlp.activation is relu(power=2), BERT has 'gelu'",
        ("roberta-tiny", ("model.type_vocab_size=0",)): "closest is RoBERTa: type_vocab_size is 0",
        ("modernbert-tiny", ("model.bias.attn_out=true",)): "bias.attn_out is True, ModernBERT has False",
    }
    for (recipe, overrides), why in cases.items():
        family, reason = hf_family(registry.compose(recipe, list(overrides)))
        assert family is None and why in reason, (recipe, overrides, reason)
    # what only training sees (kernel, dropout, init) does not stop a native export
    spec = registry.compose(
        "bert-tiny", ["model/kernel=eager", "model.dropout.mlp=0.3", "model/init=megatron"]
    )
    assert hf_family(spec) == ("bert", "")
    # every layer global is ModernBERT with global_attn_every_n_layers=1
    assert hf_family(registry.compose("modernbert-tiny", ["model/attention=global"])) == ("modernbert", "")
    # BERT without token types is exactly DeBERTa-v2 with absolute positions and no relative terms
    assert hf_family(registry.compose("bert-tiny", ["model.type_vocab_size=0"])) == ("deberta-v2", "")


# --- refusals ----------------------------------------------------------------------------------


@pytest.fixture
def plugin_activation():
    """An activation registered by code outside blocks/ (as a user's plugin would be)."""
    from bertsmith.registry.core import REGISTRY, register

    @register("activation", "test_export_square")
    class Square(torch.nn.Module):
        """x² (a test plugin)."""

        def forward(self, x):
            return x * x

    yield "test_export_square"
    REGISTRY.remove("activation", "test_export_square")


def test_unrepresentable_export_is_one_line_exit_2_and_writes_nothing(plugin_activation, tmp_path, capsys):
    from bertsmith.train.cli import main

    spec = registry.compose("bert-tiny", ["model.n_layers=1", f"model.mlp.activation={plugin_activation}"])
    registry.save(registry.build(spec), tmp_path / "model")
    out = tmp_path / "exports" / "hf"
    capsys.readouterr()
    assert main(["export", str(tmp_path / "model"), "--to", "hf", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(f"error: model.mlp.activation: given {plugin_activation!r}")
    assert "outside bertsmith's blocks/" in err[0]
    assert not (tmp_path / "exports").exists()
    # a recipe is always representable (the plugin is a registered name)
    assert main(["export", str(tmp_path / "model"), "--to", "recipe", "--out", str(tmp_path / "r.yaml")]) == 0


def test_bad_sources_and_outputs_are_one_line_exit_2(runs, tmp_path, capsys):
    from bertsmith.train.cli import main

    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    cases = [
        (["export", str(tmp_path), "--to", "hf", "--out", str(tmp_path / "x")], "a run directory"),
        (["export", str(runs["bert"]), "--to", "hf", "--out", str(tmp_path / "taken")], "which exists"),
        (
            ["export", str(runs["bert"]), "--to", "recipe", "--out", str(tmp_path / "r.txt")],
            "ending in .yaml",
        ),
    ]
    for argv, why in cases:
        capsys.readouterr()
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and why in err[0], err
    assert not (tmp_path / "x").exists() and not (tmp_path / "r.txt").exists()
    assert [p.name for p in (tmp_path / "taken").iterdir()] == ["keep.txt"]


# --- init_from ---------------------------------------------------------------------------------


def test_init_from_an_exported_model_continues_training(runs, cache, tmp_path):
    export_hf(runs["modernbert"], tmp_path / "hf", check=False)
    run = tmp_path / "again"
    done = bertsmith(
        "train",
        *SMALL,
        f"init_from={tmp_path / 'hf'}",
        "trainer.max_steps=1",
        "trainer.val_every=1",
        "optim.lr=1e-12",  # the weights barely move: what comes out is what went in
        "optim.weight_decay=0",
        f"hydra.run.dir={run}",
        cache=cache,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    start = registry.load(runs["modernbert"] / "model")
    end = registry.load(run / "model")
    assert end.spec == start.spec.model_copy(update={"name": "hf"})
    for key, value in start.state_dict().items():
        assert max_diff(value, end.state_dict()[key]) < 1e-6, key
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["init_from"] == str(tmp_path / "hf")
    assert config["tokenizer"]["kind"] == "file" and config["tokenizer"]["path"] == str(
        tmp_path / "hf" / "tokenizer.json"
    )


def test_init_from_a_model_without_head_starts_a_new_one(tmp_path):
    from bertsmith.train.pretrain import init_from
    from bertsmith.train.pretrain.config import TrainConfig

    spec = registry.compose("bert-tiny", ["model.n_layers=1"])
    bare = registry.build(spec, head="none")
    registry.save(bare, tmp_path / "bare")
    model, tcfg = init_from.load(TrainConfig(init_from=str(tmp_path / "bare")))
    assert model.spec.head.kind == "mlm" and tcfg.tokenizer.kind == "bpe"  # no tokenizer.json there
    for key, value in bare.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    assert model.head.decoder.weight is model.encoder.embeddings.tok.weight
    with pytest.raises(registry.SpecError, match="init_from: given"):
        init_from.spec_of(TrainConfig(init_from=str(tmp_path / "nothing")))
