"""Nothing a user has is replaced without asking (issue #15, item 3), and the files a command
is handed are what they claim to be.

- ``import-hf --out`` and ``export --to hf|recipe --out`` refuse an existing file or non-empty
  directory unless ``--force``, in one line naming the flag, before any work; with ``--force``
  the old content goes only once the new one is complete (``registry.outputs.new_dir``/``new_file``).
- A ``tokenizer.json`` that is a link to an unrelated file, a FIFO, a directory or too large is
  refused (``registry.io.read_tokenizer``), never copied or hung on.
- An unwritable ``BERTSMITH_CACHE`` and a recipe path that is a loop of symbolic links are one
  line, exit 2, before a run directory exists.

Every refusal: exit 2, one ``error:`` line naming what to change, no traceback, within seconds,
and the disk exactly as it was (listing and bytes, leftovers of temporary siblings included).
"""

from __future__ import annotations

import json
import os
import signal
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
import transformers
from helpers import TINY_BERT, TINY_TRAIN, run_main
from tokenizers import Tokenizer, models, pre_tokenizers

from bertsmith import registry
from bertsmith.registry import io, outputs
from bertsmith.registry.errors import SpecError

SECONDS = 20  # a refusal comes before any real work: well within this on 2 busy cores


@pytest.fixture(autouse=True, scope="module")
def _quiet():
    transformers.logging.set_verbosity_error()


def tokenizer_json(path: Path) -> Path:
    """A tiny valid ``tokenizer.json`` ([PAD] is id 0, as the specs below say)."""
    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "b"])}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.save(str(path))
    return path


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> dict[str, Path]:
    """A bertsmith model directory (with tokenizer.json) and a transformers directory (with
    tokenizer.json), built once: tiny, no training."""
    root = tmp_path_factory.mktemp("made")
    spec = registry.compose("bert-tiny", ["model.n_layers=1", "model.vocab_size=64"])
    registry.save(registry.build(spec), root / "model", tokenizer=tokenizer_json(root / "tok.json"))
    torch.manual_seed(0)
    ref = transformers.BertForMaskedLM(transformers.BertConfig(**TINY_BERT)).eval()
    ref.save_pretrained(root / "hf")
    tokenizer_json(root / "hf" / "tokenizer.json")
    return {"model": root / "model", "hf": root / "hf", "tokenizer": root / "tok.json"}


def snapshot(root: Path) -> dict[str, object]:
    """Every entry under ``root`` (itself included): a file's bytes, a link's target, a
    directory's presence; what 'the disk is unchanged' compares."""
    out: dict[str, object] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames, *([""] if dirpath == str(root) else [])]:
            p = Path(dirpath) / name if name else Path(dirpath)
            key = str(p.relative_to(root))
            if p.is_symlink():
                out[key] = ("link", os.readlink(p))
            elif p.is_dir():
                out[key] = ("dir",)
            elif p.is_file():
                out[key] = ("file", p.read_bytes())
            else:
                out[key] = ("other", p.stat().st_mode)
    return out


def refused(*argv, says: str) -> str:
    """Run ``bertsmith ARGV`` in-process; it must refuse in one line containing ``says``
    within ``SECONDS``. Returns the line."""
    start = time.time()
    ran = run_main(*argv)
    took = time.time() - start
    assert ran.returncode == 2, (ran.returncode, ran.stderr[-2000:])
    assert "Traceback" not in ran.stderr and ran.stdout == ""
    lines = ran.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert says in lines[0], lines[0]
    assert took < SECONDS, f"{took:.1f}s"
    return lines[0]


def no_leftovers(parent: Path) -> bool:
    """No temporary sibling (``.NAME.tmp-*``, ``.NAME.old-*``) left next to an output."""
    return not [p.name for p in parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name]


@contextmanager
def deadline(seconds: int):
    """Fail (instead of hanging the suite) if the block runs longer than ``seconds``."""

    def fail(*_):
        raise AssertionError(f"still running after {seconds}s (a read that hangs?)")

    old = signal.signal(signal.SIGALRM, fail)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


# --- refusing an existing output ------------------------------------------------------------------


def test_import_hf_into_an_existing_model_directory_is_refused(made, tmp_path):
    target = tmp_path / "mine"
    registry.save(registry.load(made["model"]), target)
    (target / "notes.txt").write_text("my notes")
    before = snapshot(tmp_path)
    line = refused("import-hf", made["hf"], "--out", target, says="--force")
    assert line == (
        f"error: import-hf --out: given {str(target)!r}, which exists; allowed: a new or empty "
        "directory (it holds model.safetensors, notes.txt, spec.yaml; pass --force to replace it)"
    )
    assert snapshot(tmp_path) == before


def test_import_hf_refuses_a_file_a_link_and_a_path_under_a_file(made, tmp_path):
    (tmp_path / "afile").write_text("keep")
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere")  # dangling: still something there
    before = snapshot(tmp_path)
    refused("import-hf", made["hf"], "--out", tmp_path / "afile", says="(a file; pass --force")
    refused("import-hf", made["hf"], "--out", tmp_path / "link", says="a symbolic link to")
    refused("import-hf", made["hf"], "--out", tmp_path / "afile" / "sub", says="is not a directory")
    assert snapshot(tmp_path) == before


def test_import_hf_writes_a_new_or_an_empty_directory(made, tmp_path):
    (tmp_path / "empty").mkdir()
    for out in (tmp_path / "empty", tmp_path / "new" / "deeper"):
        ran = run_main("import-hf", made["hf"], "--out", out)
        assert ran.returncode == 0, ran.stderr[-2000:]
        assert sorted(p.name for p in out.iterdir()) == ["model.safetensors", "spec.yaml", "tokenizer.json"]
        assert (out / "tokenizer.json").read_bytes() == (made["hf"] / "tokenizer.json").read_bytes()
        assert no_leftovers(out.parent)


def test_import_hf_force_replaces_only_once_the_new_one_is_complete(made, tmp_path):
    target = tmp_path / "mine"
    target.mkdir()
    (target / "notes.txt").write_text("my notes")
    # an import that fails with --force leaves the old directory as it was
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    before = snapshot(tmp_path)
    ran = run_main("import-hf", tmp_path / "broken", "--out", target, "--force")
    assert ran.returncode == 2 and len(ran.stderr.strip().splitlines()) == 1, ran.stderr[-2000:]
    assert snapshot(tmp_path) == before
    # one that succeeds replaces it whole
    ran = run_main("import-hf", made["hf"], "--out", target, "--force")
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert sorted(p.name for p in target.iterdir()) == ["model.safetensors", "spec.yaml", "tokenizer.json"]
    assert registry.load(target).spec.d_model == TINY_BERT["hidden_size"]
    assert no_leftovers(tmp_path)


def test_export_hf_refuses_an_existing_directory_unless_force(made, tmp_path):
    target = tmp_path / "hf"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    before = snapshot(tmp_path)
    line = refused("export", made["model"], "--to", "hf", "--out", target, says="--force")
    assert line.startswith(
        f"error: export --out: given {str(target)!r}, which exists; allowed: a new or empty"
    )
    assert snapshot(tmp_path) == before
    ran = run_main("export", made["model"], "--to", "hf", "--out", target, "--force")
    assert ran.returncode == 0, ran.stderr[-2000:]
    names = {p.name for p in target.iterdir()}
    assert "keep.txt" not in names and {"config.json", "model.safetensors", "tokenizer.json"} <= names
    assert (target / "tokenizer.json").read_bytes() == made["tokenizer"].read_bytes()
    assert no_leftovers(tmp_path)


def test_export_recipe_never_overwrites_without_force(made, tmp_path):
    target = tmp_path / "mine.yaml"
    target.write_text("# my recipe, by hand\n")
    (tmp_path / "adir.yaml").mkdir()
    before = snapshot(tmp_path)
    line = refused("export", made["model"], "--to", "recipe", "--out", target, says="--force")
    assert line == (
        f"error: export --out: given {str(target)!r}, which exists; allowed: a new file "
        "(a file; pass --force to replace it)"
    )
    for force in ((), ("--force",)):  # a directory is never replaced by a recipe file
        refused(
            "export",
            made["model"],
            "--to",
            "recipe",
            "--out",
            tmp_path / "adir.yaml",
            *force,
            says="a directory",
        )
    assert snapshot(tmp_path) == before
    ran = run_main("export", made["model"], "--to", "recipe", "--out", target, "--force")
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert registry.compose(str(target)) == registry.load_spec(made["model"] / "spec.yaml")
    assert no_leftovers(tmp_path)


def test_force_is_in_the_help_of_every_command_that_writes(capsys):
    for command in ("import-hf", "export"):
        ran = run_main(command, "--help")
        assert ran.returncode == 0 and "--force" in ran.stdout, command


def test_a_failed_publish_puts_the_old_content_back(tmp_path, monkeypatch):
    """The rename of the new directory fails after the old one was moved aside: the old one is
    renamed back and the temporary directory removed."""
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    before = snapshot(tmp_path)
    real = os.rename

    def flaky(src, dst):
        if Path(dst) == target and ".tmp-" in Path(src).name:
            raise OSError(28, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(os, "rename", flaky)
    with (
        pytest.raises(SpecError, match="could not be replaced"),
        outputs.new_dir(target, "test --out", force=True) as tmp,
    ):
        (tmp / "new.txt").write_text("new")
    assert snapshot(tmp_path) == before


# --- tokenizer.json: followed, checked, bounded ---------------------------------------------------


def test_a_tokenizer_link_to_an_unrelated_file_is_refused(made, tmp_path):
    hf = tmp_path / "hf"
    hf.mkdir()
    for f in made["hf"].iterdir():
        if f.name != "tokenizer.json":
            (hf / f.name).write_bytes(f.read_bytes())
    secret = tmp_path / "unrelated.txt"
    secret.write_text("not a tokenizer, and not to be copied\n")
    (hf / "tokenizer.json").symlink_to(secret)
    before = snapshot(tmp_path)
    line = refused("import-hf", hf, "--out", tmp_path / "out", says="tokenizer.json: given")
    assert f"(a link to {str(secret)!r})" in line and "allowed: a valid tokenizer.json" in line
    assert snapshot(tmp_path) == before
    with pytest.raises(SpecError, match="a link to"):
        registry.save(registry.load(made["model"]), tmp_path / "saved", tokenizer=hf / "tokenizer.json")
    assert snapshot(tmp_path) == before  # save checks the tokenizer before it writes anything
    # a link to a real tokenizer is followed: the copy is a regular file with its bytes
    (hf / "tokenizer.json").unlink()
    (hf / "tokenizer.json").symlink_to(made["tokenizer"])
    assert run_main("import-hf", hf, "--out", tmp_path / "out").returncode == 0
    assert not (tmp_path / "out" / "tokenizer.json").is_symlink()
    assert (tmp_path / "out" / "tokenizer.json").read_bytes() == made["tokenizer"].read_bytes()


def bad_tokenizer(path: Path, kind: str) -> Path:
    """A ``tokenizer.json`` that is not a regular file (or, ``too large``, is a real one)."""
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "directory":
        path.mkdir()
    elif kind == "loop":
        path.symlink_to(path)
    else:
        tokenizer_json(path)
    return path


@pytest.mark.parametrize("kind", ["fifo", "directory", "loop", "too large"])
def test_a_tokenizer_that_is_not_a_regular_file_is_refused_without_hanging(made, tmp_path, kind, monkeypatch):
    tok = bad_tokenizer(tmp_path / "tokenizer.json", kind)
    if kind == "too large":
        monkeypatch.setattr(io, "TOKENIZER_MAX_BYTES", 100)
    says = {
        "fifo": "not a special file \\(FIFO",
        "directory": "not a directory",
        "loop": "Too many levels of symbolic links",
        "too large": "at most",
    }[kind]
    with deadline(SECONDS):
        with pytest.raises(SpecError, match=says) as e:
            io.read_tokenizer(tok)
        assert len(e.value.lines) == 1
        with pytest.raises(SpecError, match=says):
            registry.save(registry.load(made["model"]), tmp_path / "saved", tokenizer=tok)
        assert not (tmp_path / "saved").exists()
        # the same as a model directory's own tokenizer.json, read by export
        model = tmp_path / "model"
        model.mkdir()
        for f in made["model"].iterdir():
            if f.name != "tokenizer.json":
                (model / f.name).write_bytes(f.read_bytes())
        bad_tokenizer(model / "tokenizer.json", kind)
        before = snapshot(tmp_path)
        refused("export", model, "--to", "hf", "--out", tmp_path / "hf", says="tokenizer.json: given")
        assert snapshot(tmp_path) == before


# --- checked before a run directory exists ---------------------------------------------------------


def test_a_cache_under_a_file_is_one_line_before_the_run_dir(tmp_path, monkeypatch):
    """Works as root too: nobody writes under a regular file."""
    (tmp_path / "afile").write_text("x")
    monkeypatch.setenv("BERTSMITH_CACHE", str(tmp_path / "afile" / "cache"))
    before = snapshot(tmp_path)
    run_dir = tmp_path / "run"
    line = refused(
        "train", *TINY_TRAIN, "trainer.max_steps=1", f"hydra.run.dir={run_dir}", says="BERTSMITH_CACHE"
    )
    assert line == (
        f"error: BERTSMITH_CACHE: given {str(tmp_path / 'afile' / 'cache')!r}, allowed: a path of "
        f"directories ({str(tmp_path / 'afile')!r} is not a directory)"
    )
    assert snapshot(tmp_path) == before and not run_dir.exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only directory")
def test_a_read_only_cache_is_one_line_before_the_run_dir(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    cache.mkdir()
    cache.chmod(0o500)
    try:
        monkeypatch.setenv("BERTSMITH_CACHE", str(cache))
        run_dir = tmp_path / "run"
        refused(
            "train", *TINY_TRAIN, "trainer.max_steps=1", f"hydra.run.dir={run_dir}", says="is not writable"
        )
        assert not run_dir.exists() and list(cache.iterdir()) == []
    finally:
        cache.chmod(0o700)


def test_a_recipe_path_that_is_a_loop_of_links_is_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("loop.yaml").symlink_to("loop.yaml")
    Path("loop").symlink_to("loop")
    before = snapshot(tmp_path)
    for recipe in ("./loop.yaml", "./loop", str(tmp_path / "loop.yaml")):
        for command in ("validate", "inspect"):
            refused(command, recipe, says="a loop of symbolic links")
        refused(
            "train", f"model={recipe}", f"hydra.run.dir={tmp_path / 'run'}", says="a loop of symbolic links"
        )
    assert snapshot(tmp_path) == before


def test_schema_out_never_overwrites_without_force(tmp_path):
    target = tmp_path / "recipe.schema.json"
    target.write_text("{}\n")
    before = snapshot(tmp_path)
    line = refused("schema", "--out", target, says="--force")
    assert line.startswith(f"error: schema --out: given {str(target)!r}, which exists; allowed: a new file")
    assert snapshot(tmp_path) == before
    assert run_main("schema", "--out", target, "--force").returncode == 0
    assert json.loads(target.read_text())["$schema"].startswith("https://json-schema.org/")
    assert no_leftovers(tmp_path)
