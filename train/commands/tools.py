"""The commands around runs: ``compare`` and ``bench``."""

from __future__ import annotations

from bertsmith.train.tools.bench_cases import ALIASES, CASES, HF_ATTENTION  # no torch: --help stays quick


def _cmd_compare(args) -> None:
    from bertsmith.train.tools.compare import compare

    result = compare(
        args.sweep_dir, args.metric, args.bench, args.bench_repeats, args.bench_device, args.bench_threads
    )
    print(result["table"], end="")
    if result["speed"]:
        print(f"\n{result['speed']}", end="")
    d = args.sweep_dir.rstrip("/")
    print(f"\nwrote {d}/summary.md, {d}/summary.csv, " + ", ".join(str(p) for p in result["images"]))
    # only a verdict of "best" (distinguishable from the runner-up) names a recipe to export:
    # not when tied within noise, at n=1, or with one variant or nothing to compare
    if result["verdict"].status == "best" and result["best_run"] is not None:
        print(
            f"export the best variant's recipe:\n  bertsmith export {result['best_run']} --to recipe --out best.yaml"
        )


def _cmd_bench(args) -> None:
    from bertsmith.train.tools.bench import main as bench_main

    bench_main(args)


def add_compare(sub) -> None:
    p = sub.add_parser(
        "compare",
        help="table and plots of a sweep (mean ± sd and 95%% interval over seeds; best marked only "
        "when Welch's t-test separates it from the runner-up, else tied within noise)",
        description="Read every run of SWEEP_DIR (finished, failed or still running) and write "
        "summary.md, summary.csv, val_loss.png, final_metric.png and quality_vs_throughput.png "
        "there: one row per variant (what its overrides change from the sweep's base), seeds "
        "averaged, each compared with the base and the best with the runner-up (Welch's t-test, "
        "alpha 0.05); a row of the baseline to beat (unigram loss, majority class), the training "
        "budget and the base recipe. val_loss.png: each variant's validation curve against tokens "
        "seen, with a band over seeds; final_metric.png: the final metric per variant with its "
        "interval, sorted, the base marked. The export hint is printed only for a best variant. "
        "The tokens/s column is what the runs logged, labelled with how many jobs ran at once "
        "(overlapping wall-clock times); --bench adds speed that compares the variants.",
    )
    p.add_argument("sweep_dir")
    p.add_argument(
        "--metric",
        default="val_loss",
        help="what picks the best variant: val_loss (default, lower is better), val_mlm_acc, or a "
        "downstream score finetune:TASK/METRIC (e.g. finetune:sst2/accuracy; see bertsmith finetune)",
    )
    p.add_argument(
        "--bench",
        action="store_true",
        help="also time each variant's training step alone (random weights, one shared batch of the "
        "base run's rows, 30%% masked, fp32), interleaved A B C A B C "
        "over --bench-repeats rounds: median tokens/s, min-max, ratio to the base and MFU as a "
        "'Speed (measured alone, interleaved)' section of summary.md and bench_* columns of summary.csv",
    )
    p.add_argument(
        "--bench-repeats",
        type=int,
        default=5,
        help="timed rounds of --bench, median taken (default 5; one warm-up step each before)",
    )
    p.add_argument(
        "--bench-device", default="cpu", choices=["cpu", "cuda"], help="where --bench times (default cpu)"
    )
    p.add_argument(
        "--bench-threads",
        type=int,
        default=None,
        help="torch CPU threads while --bench times (default: the process's default; 1 is steadier "
        "on a machine other work shares)",
    )
    p.set_defaults(fn=_cmd_compare, reads_recipes=False)


def add_bench(sub) -> None:
    p = sub.add_parser(
        "bench",
        help="speed and memory against transformers, same weights, side by side",
        description="Time bertsmith against the transformers model with the same config and "
        "weights (imported), in one process: fixed-length batches, variable lengths "
        "(64..512; padded for transformers, packed for bertsmith), 4096-token sequences with "
        "window 128 (ModernBERT), and a training step (`train`: forward, loss, backward, AdamW) "
        "at 30%% masking. Prints tokens/s, their ratio, peak memory, model FLOP/s (training: 3 x "
        "the forward) and MFU against a GEMM rate measured here for the dtype, and the largest "
        "output difference. --size tiny is the main job's shape (modernbert-tiny, 128-token "
        "sequences, 2048 tokens per batch).",
    )
    p.add_argument("--family", nargs="+", default=["modernbert", "bert"], choices=["modernbert", "bert"])
    p.add_argument(
        "--case",
        nargs="+",
        default=list(CASES),
        choices=[*CASES, *ALIASES],
        help="cases to run (default all; mlm is the old name of train)",
    )
    p.add_argument("--dtype", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    p.add_argument(
        "--size",
        default="base",
        choices=["tiny", "small", "base", "large"],
        help="width and depth (default base)",
    )
    p.add_argument("--layers", type=int, default=None, help="override the depth (fewer layers: faster)")
    p.add_argument(
        "--batch-tokens",
        type=int,
        default=None,
        help="real tokens per batch (default 4096; 2048 at --size tiny, the main job's batch)",
    )
    p.add_argument("--repeats", type=int, default=3, help="timed runs per side, median taken (default 3)")
    p.add_argument("--kernel", default="sdpa", help="bertsmith's attention kernel (default sdpa)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument(
        "--compile",
        default="no",
        choices=["no", "yes", "both"],
        help="torch.compile both sides (dynamic shapes, compile time excluded): no (default), "
        "yes, or both (each case eager and compiled)",
    )
    p.add_argument(
        "--same-gemm",
        action="store_true",
        help="run transformers' fp32 linear layers in bertsmith's CPU GEMM path too (oneDNN on "
        "x86; BERTSMITH_CPU_LINEAR), so the ratio compares the models and not the GEMM library",
    )
    p.add_argument(
        "--hf-attn",
        default="sdpa",
        choices=HF_ATTENTION,
        help="transformers' attention implementation (default sdpa)",
    )
    p.add_argument("--json", action="store_true", help="print the results as JSON (table to stderr)")
    p.add_argument("--out", default=None, help="also write the JSON results to this file")
    p.set_defaults(fn=_cmd_bench)
