"""Pieces several test files share: tiny reference configs, comparisons, the CLI runner."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch

from bertsmith import registry

ROOT = Path(__file__).resolve().parent.parent

# tiny transformers configs (kwargs of BertConfig / ModernBertConfig)
TINY_BERT = dict(
    vocab_size=89,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=48,
    max_position_embeddings=64,
)
TINY_MODERNBERT = dict(
    vocab_size=89,
    hidden_size=32,
    intermediate_size=40,
    num_hidden_layers=4,
    num_attention_heads=4,
    local_attention=16,
    global_attn_every_n_layers=3,  # layers 0 and 3 global, 1 and 2 local
    global_rope_theta=1000.0,
    local_rope_theta=300.0,
    max_position_embeddings=128,
    pad_token_id=0,
    bos_token_id=None,
    eos_token_id=None,
    cls_token_id=None,
    sep_token_id=None,
)

# `bertsmith train` overrides that make a run take seconds
TINY_TRAIN = [
    "data.max_docs=300",
    "data.max_val_docs=16",
    "data.seq_len=64",
    "data.batch_size=4",
    "tokenizer.vocab_size=512",
    "trainer.progress=false",
    "trainer.log_every=1",
]


def max_diff(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    """Largest absolute difference, at real tokens when ``mask`` is given, in float64."""
    if mask is not None:
        a, b = a[mask.bool()], b[mask.bool()]
    return (a.double() - b.double()).abs().max().item()


def randomize_(module: torch.nn.Module, seed: int, scale: float = 0.14) -> None:
    """Redraw every parameter: norm weights around 1, everything else N(0, scale²).

    ``named_parameters`` lists a tied weight once, so tying survives."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            is_norm_weight = p.dim() == 1 and name.endswith("weight") and "norm" in name.lower()
            p.copy_(1.0 + 0.1 * noise if is_norm_weight else scale * noise)


def with_kernel(model, kernel: str):
    """Our model rebuilt with another kernel and the same weights."""
    spec = model.spec.model_copy(update={"kernel": registry.REGISTRY.get("kernel", kernel).params()})
    other = registry.build(spec, init=False)
    other.load_state_dict(model.state_dict())
    return other.eval()


def bertsmith(*args: str, cache: Path, wait: bool = True, timeout: int = 900):
    """Run ``bertsmith ARGS`` in a subprocess with its own tokenizer cache."""
    cmd = [sys.executable, "-m", "bertsmith.train.cli", *args]
    env = {**os.environ, "BERTSMITH_CACHE": str(cache), "PYTHONPATH": str(ROOT)}
    if not wait:
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)


def kill_when(proc, path: Path, timeout: float = 300) -> None:
    """SIGKILL ``proc`` as soon as ``path`` exists; fails if the process ended first."""
    deadline = time.time() + timeout
    while not path.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    if proc.poll() is not None:
        err = proc.communicate()[1] if proc.stderr else ""
        raise AssertionError(f"the process ended before {path.name} appeared: {(err or '')[-3000:]}")
    proc.send_signal(signal.SIGKILL)
    proc.wait()


@dataclasses.dataclass
class Ran:
    """What ``bertsmith ARGS`` gave, as ``subprocess.run`` reports it."""

    returncode: int
    stdout: str
    stderr: str


@contextlib.contextmanager
def warnings_as_a_fresh_process():
    """Warnings filtered and printed (to ``sys.stderr``) as in a fresh ``python``: not recorded
    by pytest nor hidden because this process showed them once already, so that a command run
    in-process prints every line the same command would print in its own process."""
    with warnings.catch_warnings():
        warnings.resetwarnings()
        for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning):
            warnings.simplefilter("ignore", category)

        def show(message, category, filename, lineno, file=None, line=None):
            sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))

        warnings.showwarning = show
        yield


def run_main(*args) -> Ran:
    """``bertsmith ARGS`` in this process (``bertsmith.train.cli.main``): the exit status it
    returns (or exits with, as argparse does) and what it printed. For error cases and quick
    commands, where a fresh process would only add seconds of start-up; an exception escaping
    ``main`` (a traceback at the command line) fails the test as it would."""
    from bertsmith.train.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings_as_a_fresh_process():
        try:
            rc = main([str(a) for a in args])
        except SystemExit as e:
            rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return Ran(rc, out.getvalue(), err.getvalue())


def left_padded(x: torch.Tensor, mask: torch.Tensor, fill=0) -> torch.Tensor:
    """``x [B, L, ...]`` right-padded as ``mask [B, L]`` says, with each row's real entries
    moved to the end (left padding, filled with ``fill``); ``left_padded(mask, mask)`` is
    the matching mask."""
    out = torch.full_like(x, fill)
    L = x.shape[1]
    for b, n in enumerate(mask.sum(1).tolist()):
        out[b, L - n :] = x[b, :n]
    return out


def per_sequence_positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids counted from each sequence's first real token (0 at and before it)."""
    return (mask.long().cumsum(1) - 1).clamp(min=0)


def hf_hidden_and_logits(ref, ids, mask, types=None, **kw) -> tuple[torch.Tensor, torch.Tensor]:
    """transformers' last hidden state and logits (``token_type_ids`` only where given:
    ModernBERT takes none)."""
    extra = {} if types is None else {"token_type_ids": types}
    with torch.no_grad():
        out = ref(input_ids=ids, attention_mask=mask, output_hidden_states=True, **extra, **kw)
    return out.hidden_states[-1], out.logits


def diff_from(model, ids, mask, types, hidden, logits) -> float:
    """Our model's largest difference from ``hidden`` and ``logits`` at the real tokens."""
    with torch.no_grad():
        out = model(ids, mask, token_type_ids=types)
    return max(max_diff(out.last_hidden_state, hidden, mask), max_diff(out.logits, logits, mask))


def right_padded_batch(vocab: int, pad: int, lengths=(150, 97, 13, 1), seed: int = 0):
    """Right-padded ``input_ids`` (never the pad id inside a sequence) and ``attention_mask``."""
    g = torch.Generator().manual_seed(seed)
    L = max(lengths)
    ids = torch.randint(0, vocab - 1, (len(lengths), L), generator=g)
    ids = ids + (ids >= pad).long()
    mask = (torch.arange(L)[None, :] < torch.tensor(lengths)[:, None]).long()
    return ids.masked_fill(mask == 0, pad), mask
