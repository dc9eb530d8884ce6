"""What ``scripts/gpu-check`` decides from its runs: the test verdict and the bench table.

    python scripts/gpu_check_report.py skips JUNIT_XML [--allow KERNELS]
    python scripts/gpu_check_report.py table KERNEL:HF_ATTN:BENCH_JSON ...

``skips`` reads pytest's ``--junitxml`` report and fails (exit 1, one ``gpu-check: FAIL`` line
per cause) when

* a kernel's tests were skipped because its package is missing or unusable -- the reason
  tests/test_gpu_kernels.py gives them, ``"<kernel>: needs CUDA and the <dist> package ..."``
  (``CudaKernel.needs``) -- and ``--allow`` (``BERTSMITH_GPU_SKIP`` in gpu-check) does not name
  that kernel (or its distribution: ``flash-attn`` is ``flash_attn``);
* no test ran at all (none collected, or every one skipped).

Other skips are what a kernel does not provide (a window, a bias) or a configuration that
validation refuses: legitimate, counted and let through. Exit 2: the report is missing or
unreadable. Standard library only.

``table`` prints one table of every bench run: kernel, transformers' attention, case,
tokens/s on each side and their ratio; a run whose JSON is missing or unreadable is one line
saying so (exit 0 either way: the bench's exit status is gpu-check's to judge).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

# the reason tests/test_gpu_kernels.py skips a CUDA-only kernel's tests with: f"{name}: {why}"
# where why starts with CudaKernel.needs(): "needs CUDA and the flash-attn package (...)"
MISSING = re.compile(
    r"^(?:Skipped: )?(?P<kernel>[\w.-]+): (?P<why>needs CUDA and the (?P<dist>[\w.-]+) package.*)$"
)


def norm(name: str) -> str:
    """``flash-attn``, ``Flash_Attn`` -> ``flash_attn``: kernel and distribution names alike."""
    return name.strip().lower().replace("-", "_")


def parse_allowed(text: str | None) -> set[str]:
    """``"xformers, flash-attn"`` -> {"xformers", "flash_attn"} (commas or spaces)."""
    return {norm(x) for x in re.split(r"[,\s]+", text or "") if x.strip()}


@dataclass
class Verdict:
    ran: int = 0  # passed, failed or errored
    failed: int = 0
    legit: Counter = field(default_factory=Counter)  # skip reason -> count
    missing: dict = field(default_factory=dict)  # kernel -> (count, why)
    lines: list = field(default_factory=list)  # what to print
    ok: bool = True


def decide(junit: Path, allowed: set[str]) -> Verdict:
    """Read ``junit`` (raises OSError / ET.ParseError when it cannot) and judge it."""
    v = Verdict()
    for case in ET.parse(junit).getroot().iter("testcase"):
        skipped = case.find("skipped")
        if skipped is None:
            v.ran += 1
            v.failed += case.find("failure") is not None or case.find("error") is not None
            continue
        reason = (skipped.get("message") or skipped.text or "").strip()
        m = MISSING.match(reason.splitlines()[0] if reason else "")
        if m:
            count, why = v.missing.get(m["kernel"], (0, m["why"]))
            v.missing[m["kernel"]] = (count + 1, why)
        else:
            v.legit[reason[:120] or "(no reason)"] += 1
    for kernel, (count, why) in sorted(v.missing.items()):
        dist = MISSING.match(f"{kernel}: {why}")["dist"]
        if norm(kernel) in allowed or norm(dist) in allowed:
            v.lines.append(f"{kernel}: {count} test(s) skipped, allowed by BERTSMITH_GPU_SKIP ({why})")
        else:
            v.ok = False
            v.lines.append(
                f"FAIL: {kernel}: {count} test(s) skipped, the kernel cannot run here: {why} "
                f"(carry its wheel in BERTSMITH_WHEELS, or allow it: BERTSMITH_GPU_SKIP={kernel})"
            )
    if v.ran == 0:
        v.ok = False
        total = sum(v.legit.values()) + sum(c for c, _ in v.missing.values())
        v.lines.append(f"FAIL: no test ran ({total} collected, all skipped)")
    skipped = sum(v.legit.values()) + sum(c for c, _ in v.missing.values())
    v.lines.append(
        f"{v.ran - v.failed} passed, {v.failed} failed, {skipped} skipped "
        f"({sum(v.legit.values())} for what a kernel or configuration does not provide)"
    )
    return v


def skips(args) -> int:
    try:
        v = decide(Path(args.junit), parse_allowed(args.allow))
    except (OSError, ET.ParseError) as e:
        print(f"gpu-check: FAIL: cannot read the test report {args.junit}: {e}")
        return 2
    for line in v.lines:
        print(f"gpu-check: {line}")
    return 0 if v.ok else 1


def table(args) -> int:
    head = ("kernel", "hf-attn", "case", "ours tok/s", "hf tok/s", "ratio")
    rows = []
    for run in args.runs:
        kernel, attn, path = run.split(":", 2)
        try:
            result = json.loads(Path(path).read_text())
            found = list(result["rows"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            rows.append(
                (kernel, attn, f"(no results: {type(e).__name__}; see {Path(path).with_suffix('.log')})")
            )
            continue
        if not found:
            rows.append((kernel, attn, "(no rows)"))
        for r in found:
            case = (
                r["case"] if r.get("family", "modernbert") == "modernbert" else f"{r['family']}/{r['case']}"
            )
            rows.append(
                (kernel, attn, case, f"{r['ours_tok_s']:,.0f}", f"{r['hf_tok_s']:,.0f}", f"{r['ratio']:.2f}x")
            )
    widths = [
        max([len(head[i])] + [len(r[i]) for r in rows if len(r) == len(head)]) for i in range(len(head))
    ]
    fmt = lambda r: "  ".join(  # noqa: E731
        (c.ljust if i < 3 else c.rjust)(widths[i]) for i, c in enumerate(r)
    )
    print(fmt(head))
    for r in rows:
        print(
            fmt(r) if len(r) == len(head) else "  ".join([r[0].ljust(widths[0]), r[1].ljust(widths[1]), r[2]])
        )
    print("ratio = ours tokens/s / transformers tokens/s (bf16, modernbert)")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("skips", help="judge pytest's junit XML")
    s.add_argument("junit")
    s.add_argument("--allow", default="", help="kernels allowed to be missing (commas or spaces)")
    s.set_defaults(fn=skips)
    t = sub.add_parser("table", help="one table of the bench runs")
    t.add_argument("runs", nargs="*", metavar="KERNEL:HF_ATTN:JSON")
    t.set_defaults(fn=table)
    args = ap.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
