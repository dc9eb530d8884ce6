"""``bertsmith export --to onnx``: an ONNX graph with dynamic batch and sequence axes.

The graph is bertsmith's own model traced by torch's ONNX exporter (``torch.onnx.export``,
``dynamo=True``: ``torch.export`` then onnxscript), in a form with no shape that depends on the
values of the input:

- **padded batch**: every position of the right-padded ``[B, L]`` input is a token
  (``blocks.stream.padded_stream``); padding is masked out of attention as a key and never
  pooled. The training path's unpadding (``nonzero`` and per-batch lengths) has no fixed-size
  ONNX form.
- **eager attention**: the ``eager`` kernel (q·kᵀ, score bias, boolean mask, fp32 softmax, ·v)
  on the ``[B, H, L, L]`` layout; sliding windows are a band in that mask, ALiBi, T5 and
  DeBERTa's disentangled positions a dense score bias. Every composition's kernel is swapped
  for it: the CUDA kernels and sdpa's banded and per-sequence paths pick their layout from the
  batch's lengths.
- **inputs**: ``input_ids`` and ``attention_mask`` (int64, ``[batch, sequence]``), and
  ``token_type_ids`` where the model has token types; **outputs**: ``last_hidden_state``
  ``[batch, sequence, d_model]``, and with the head (unless ``--no-head``) its outputs
  (``logits``, ``nsp_logits``), at padding positions too (ignore them).
- **longest sequence**: the spec's ``max_seq_len`` (learned position tables end there; RoPE,
  ALiBi and relative positions would run further, untrained).

Before anything is written, ONNX Runtime runs the graph on right-padded batches of several
lengths and its outputs must equal bertsmith's (its own kernel, unpadded) within ``TOLERANCE``
× the output scale; a larger difference is a bug and raises. ``--fp16`` and ``--int8`` write
``model_fp16.onnx`` (weights and compute in fp16, fp32 inputs and outputs) and
``model_int8.onnx`` (ONNX Runtime's dynamic quantisation: int8 weights of the MatMuls,
activations quantised per batch) beside it; their measured differences are reported, not held
to fp32 tolerances. The directory also holds the tokenizer files, ``onnx.json`` (inputs,
outputs, limits, measured differences) and ``README.md``.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from bertsmith import registry
from bertsmith.blocks.stream import padded_stream
from bertsmith.registry.errors import SpecError
from bertsmith.registry.io import read_tokenizer
from bertsmith.registry.outputs import check_target, new_dir
from bertsmith.train.sources import finished_model

TOLERANCE = 1e-4  # ONNX Runtime vs bertsmith, relative to the output scale (fp32)
FLAG = "export --out"
KERNEL = "eager"  # the attention of the exported graph (see the module doc)
EXTRA = "pip install 'bertsmith[onnx]'"


def require_onnx() -> None:
    """One line, before any work, when the ``onnx`` extra is not installed."""
    import importlib.util

    missing = [m for m in ("onnx", "onnxruntime", "onnxscript") if importlib.util.find_spec(m) is None]
    if missing:
        raise SpecError(
            f"export --to onnx: needs {', '.join(missing)}, not installed; allowed: after {EXTRA}"
        )


class PaddedModel(nn.Module):
    """``model`` on right-padded ``[B, L]`` input with every position a token and attention in
    the eager kernel: the traceable form the ONNX graph is made from (same weights)."""

    def __init__(self, model: nn.Module, head: bool = True):
        super().__init__()
        spec = model.spec.model_copy(update={"kernel": registry.REGISTRY.get("kernel", KERNEL).params()})
        self.model = registry.build(spec, init=False)
        self.model.load_state_dict(model.state_dict())
        self.model.eval()
        self.with_head = head and self.model.head is not None
        self.types = bool(spec.type_vocab_size)
        self.outputs = ["last_hidden_state"]
        if self.with_head:
            ids, mask = probe_batches(spec)[0]
            with torch.no_grad():
                keys = sorted(
                    self.model.head(*self._encode(ids, mask), None), key=lambda k: (k != "logits", k)
                )
            self.outputs += keys

    @property
    def inputs(self) -> list[str]:
        return ["input_ids", "attention_mask", *(["token_type_ids"] if self.types else [])]

    def _encode(self, input_ids, attention_mask, token_type_ids=None):
        stream = padded_stream(attention_mask)
        types = None if token_type_ids is None else token_type_ids.reshape(-1)
        keep = getattr(self.model.head, "layer_inputs", ()) if self.with_head else ()
        return self.model.encoder(input_ids.reshape(-1), stream, types, keep=keep), stream

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        B, L = input_ids.shape
        h, stream = self._encode(input_ids, attention_mask, token_type_ids)
        outs = [h.view(B, L, -1)]
        if self.with_head:
            got = self.model.head(h, stream, None)
            per_token = getattr(self.model.head, "per_token", ())
            outs += [got[k].view(B, L, -1) if k in per_token else got[k] for k in self.outputs[1:]]
        return tuple(outs)


def probe_batches(spec) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Right-padded batches (ids never the pad id inside a sequence): lengths reaching past
    local windows and DeBERTa's log buckets, a one-token sequence, and a batch of one."""
    far = [w for w in registry.layer_plan(spec) if w] + [getattr(spec.positional, "position_buckets", 0) // 2]
    L = min(spec.max_seq_len, 24 + max(far))
    g = torch.Generator().manual_seed(0)
    batches = []
    for lengths in ((L, max(2, L - 7)), (max(2, L // 2 + 3), L // 3 + 1, 13 if L > 13 else 2, 1), (L,)):
        n = max(lengths)
        ids = torch.randint(0, spec.vocab_size - 1, (len(lengths), n), generator=g)
        ids = ids + (ids >= spec.pad_token_id).long()
        mask = (torch.arange(n)[None, :] < torch.tensor(lengths)[:, None]).long()
        batches.append((ids.masked_fill(mask == 0, spec.pad_token_id), mask))
    return batches


def _feed(wrapper: PaddedModel, ids, mask) -> dict:
    feed = {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}
    if wrapper.types:
        feed["token_type_ids"] = torch.zeros_like(ids).numpy()
    return feed


def _ours(model, wrapper: PaddedModel, ids, mask) -> dict[str, torch.Tensor]:
    """bertsmith's outputs as the graph names them (the model's own kernel, unpadded)."""
    with torch.no_grad():
        out = model(ids, mask)
    return {name: getattr(out, name) for name in wrapper.outputs}


def measure(session, model, wrapper: PaddedModel) -> dict[str, float]:
    """Max |ONNX Runtime − bertsmith| per output over the probe batches, at real tokens only;
    also ``scale``: the largest |output| seen."""
    diffs = {name: 0.0 for name in wrapper.outputs}
    scale = 0.0
    for ids, mask in probe_batches(model.spec):
        theirs = dict(
            zip(wrapper.outputs, session.run(wrapper.outputs, _feed(wrapper, ids, mask)), strict=True)
        )
        for name, ours in _ours(model, wrapper, ids, mask).items():
            got = torch.from_numpy(theirs[name]).double()
            if got.shape != ours.shape:
                raise RuntimeError(
                    f"export: the ONNX graph's {name} is {tuple(got.shape)}, not {tuple(ours.shape)}"
                )
            real = mask.bool() if ours.dim() >= 2 and ours.shape[:2] == ids.shape else slice(None)
            a, b = ours.double()[real], got[real]
            if not torch.isfinite(b).all():
                diffs[name] = float("inf")
                continue
            diffs[name] = max(diffs[name], (a - b).abs().max().item())
            scale = max(scale, a.abs().max().item())
    return {**diffs, "scale": scale}


def _session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def trace(wrapper: PaddedModel, path: Path) -> None:
    """``torch.onnx.export`` of ``wrapper`` to ``path``, batch and sequence dynamic."""
    spec = wrapper.model.spec
    ids, mask = probe_batches(spec)[0]
    args = (ids, mask) + ((torch.zeros_like(ids),) if wrapper.types else ())
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence", max=spec.max_seq_len)
    dynamic = {name: {0: batch, 1: seq} for name in wrapper.inputs}
    with _quiet():
        torch.onnx.export(
            wrapper,
            args,
            str(path),
            dynamo=True,
            input_names=wrapper.inputs,
            output_names=wrapper.outputs,
            dynamic_shapes=dynamic,
            optimize=True,
        )


@contextlib.contextmanager
def _quiet():
    """Without the exporters' progress lines, warnings and log records (torch's about
    torchvision's operators, ONNX Runtime's quantiser's advice): the command prints its own."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        logging.disable(logging.WARNING)
        try:
            yield
        finally:
            logging.disable(logging.NOTSET)


def _fp16(src: Path, dst: Path) -> None:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    with _quiet():
        onnx.save(convert_float_to_float16(onnx.load(str(src)), keep_io_types=True), str(dst))


def _int8(src: Path, dst: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _quiet():
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)


VARIANTS = {"fp16": _fp16, "int8": _int8}


@dataclass
class OnnxReport:
    """What was exported and how close it is (written as ``onnx.json``)."""

    inputs: list[str]
    outputs: list[str]
    kernel: str
    max_seq_len: int
    opset: int
    diffs: dict[str, float]
    variants: dict[str, dict[str, float]] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)


def _card(spec, report: OnnxReport, source) -> str:
    names = ", ".join(f"`{n}`" for n in report.inputs)
    feed = "\n".join(f'feed["{n}"] = enc["{n}"]' for n in report.inputs[2:])
    within = worst(report.diffs)
    lines = [
        "---",
        "library_name: onnx",
        "tags: [bertsmith, onnx]",
        "---",
        "",
        f"# {spec.name} (ONNX)",
        "",
        f"Exported by `bertsmith export --to onnx` from `{source.path}`: {spec.n_layers} layers, "
        f"d_model {spec.d_model}, {spec.n_heads} heads, vocabulary {spec.vocab_size}.",
        "",
        "## Run",
        "",
        "```python",
        "import numpy as np, onnxruntime as ort",
        "from transformers import AutoTokenizer",
        "",
        'tok = AutoTokenizer.from_pretrained(".")',
        'session = ort.InferenceSession("model.onnx")',
        'enc = tok(["a sentence", "another one"], padding=True, return_tensors="np")',
        'feed = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}',
        *([feed] if feed else []),
        f"{', '.join(report.outputs)} = session.run(None, feed)",
        "```",
        "",
        f"Inputs {names} (int64, `[batch, sequence]`, right-padded); outputs "
        + ", ".join(f"`{n}`" for n in report.outputs)
        + f". Sequences of up to {report.max_seq_len} tokens. Attention is bertsmith's `eager` "
        "kernel on the padded batch (opset "
        f"{report.opset}). ONNX Runtime matched bertsmith within {within:.1e} at export time.",
    ]
    for name, d in report.variants.items():
        lines += ["", f"`model_{name}.onnx`: max difference from bertsmith's fp32 outputs {worst(d):.3g}."]
    return "\n".join(lines) + "\n"


def worst(diffs: dict[str, float]) -> float:
    """The largest difference of a ``measure`` result (its ``scale`` aside)."""
    return max(v for k, v in diffs.items() if k != "scale")


def export_onnx(
    src: str | os.PathLike,
    out: str | os.PathLike,
    head: bool = True,
    variants: tuple[str, ...] = (),
    force: bool = False,
) -> OnnxReport:
    """Write ``src``'s model as an ONNX directory ``out`` (see the module doc); returns the report."""
    import onnx

    from bertsmith.train.interop.export import check_pad, tokenizer_config, tokenizer_specials

    out = Path(out).expanduser()
    check_target(out, FLAG, force)
    require_onnx()
    source = finished_model(src)
    model = registry.load(source.model_dir).eval()
    wrapper = PaddedModel(model, head)
    specials = tokenizer_specials(source.model_dir)
    if specials is not None:
        check_pad(model.spec, specials[1])
    with new_dir(out, FLAG, force) as tmp:
        trace(wrapper, tmp / "model.onnx")
        diffs = measure(_session(tmp / "model.onnx"), model, wrapper)
        for name in wrapper.outputs:
            if not diffs[name] <= TOLERANCE * max(1.0, diffs["scale"]):
                raise RuntimeError(
                    f"export: ONNX Runtime's {name} differs from bertsmith's by {diffs[name]:.3g}"
                )
        opset = next(
            (
                o.version
                for o in onnx.load(str(tmp / "model.onnx"), load_external_data=False).opset_import
                if o.domain in ("", "ai.onnx")
            ),
            0,
        )
        report = OnnxReport(wrapper.inputs, wrapper.outputs, KERNEL, model.spec.max_seq_len, opset, diffs)
        for name in variants:
            path = tmp / f"model_{name}.onnx"
            VARIANTS[name](tmp / "model.onnx", path)
            report.variants[name] = measure(_session(path), model, wrapper)
        if specials is not None:
            (tmp / "tokenizer.json").write_bytes(read_tokenizer(source.model_dir / "tokenizer.json")[0])
            config = tokenizer_config(model.spec, specials[0])
            (tmp / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
        report.files = sorted(p.name for p in tmp.iterdir()) + ["onnx.json", "README.md"]
        (tmp / "onnx.json").write_text(json.dumps(asdict(report), indent=2) + "\n")
        (tmp / "README.md").write_text(_card(model.spec, report, source), encoding="utf-8")
    return report
