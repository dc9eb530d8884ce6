"""``bertsmith data``: ``prepare`` (a corpus to tokenised, packed shards) and ``bench`` (the
shard reader's tokens/s). The code is ``train.pretrain.shards``'s."""

from __future__ import annotations

import re

GROUPS = ("data", "tokenizer", "pretrain")  # what decides the rows; the rest is training's
_KEY = re.compile(r"^\+{0,2}(?P<group>[a-z_]+)[./=]")


def prepare_config(overrides: list[str]):
    """The ``TrainConfig`` that ``bertsmith train OVERRIDES`` would run with, from overrides of
    ``data``, ``tokenizer`` and ``pretrain`` only (one line naming any other key)."""
    import shutil
    import tempfile
    from pathlib import Path

    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from bertsmith.registry.errors import SpecError
    from bertsmith.train.hydra_app import compose
    from bertsmith.train.pretrain.app import prepare_overrides
    from bertsmith.train.pretrain.config import parse_train_config

    for ov in overrides:
        m = _KEY.match(ov)
        if ov.startswith("-") or not m or m["group"] not in GROUPS:
            key = m["group"] if m else ov
            raise SpecError(
                f"{key}: not a setting of data prepare; allowed: data=NAME, data.KEY=VALUE, "
                "tokenizer=NAME, tokenizer.KEY=VALUE, pretrain=NAME"
            )
    tmp = Path(tempfile.mkdtemp(prefix="bertsmith-data-"))
    try:
        cfg = compose("train", prepare_overrides(overrides, tmp))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for key in sorted(OmegaConf.missing_keys(cfg)):
        if key.split(".")[0] in ("data", "tokenizer"):
            raise SpecError(f"{key}: missing; give {key}=...")
    try:
        data = {k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("data", "tokenizer", "objective")}
    except OmegaConfBaseException as e:
        raise SpecError(f"{getattr(e, 'full_key', None) or 'data'}: interpolation failed") from None
    return parse_train_config(data)


def _cmd_prepare(args) -> None:
    from bertsmith.registry.errors import SpecError
    from bertsmith.train.pretrain import shards

    for flag, value in (("--workers", args.workers), ("--pack-docs", args.pack_docs)):
        if value < 1:
            raise SpecError(f"{flag}: given {value}, allowed: at least 1")
    tcfg = prepare_config(args.overrides)
    m = shards.prepare(tcfg, args.out, workers=args.workers, pack_docs=args.pack_docs, force=args.force)
    t = m["train"]
    print(
        f"bertsmith: {t['rows']:,} rows of seq_len {m['seq_len']} ({t['tokens']:,} tokens, "
        f"{t['documents']:,} documents, packing efficiency {100 * t['packing_efficiency']:.1f}%) "
        f"+ {m['val']['rows']:,} validation rows in {m['prepare_s']:.1f} s\n"
        f"  shards:    {args.out} ({len(m['files'])} files; train with: bertsmith train data=shards "
        f"data.path={args.out} data.seq_len={m['seq_len']})\n"
        f"  tokenizer: {m['tokenizer_size']:,} tokens, sha256 {m['tokenizer_sha256'][:12]}"
    )


def _cmd_bench(args) -> None:
    from bertsmith.train.pretrain import shards

    r = shards.bench(args.dir, batch_size=args.batch_size, steps=args.steps)
    print(
        f"bertsmith: shard reader {r['tokens_per_s']:,.0f} tokens/s ({r['steps']} batches, "
        f"{r['tokens']:,} tokens in {r['seconds']:.2f} s; rows read, collated and masked, one process)"
    )


def add_data(sub) -> None:
    p = sub.add_parser(
        "data",
        help="tokenise and pack a corpus once into litdata shards (prepare); time the reader (bench)",
        description="Pre-training data as tokenised, packed shards (litdata): prepare them once, "
        "then train with `bertsmith train data=shards data.path=DIR`.",
    )
    dsub = p.add_subparsers(dest="data_command", required=True, metavar="SUBCOMMAND")
    pp = dsub.add_parser(
        "prepare",
        help="tokenise and pack a corpus into shards",
        description="Read the corpus `bertsmith train` would read with the same overrides "
        "(data=stdlib|files|hf and their keys, tokenizer=..., data.seq_len=..., pretrain=...), "
        "tokenise it with the tokenizer that run would use (trained and cached, or tokenizer=file), "
        "pack it to data.seq_len rows as the in-memory path does, and write litdata shards for "
        "the training and validation splits, tokenizer.json, token_counts.json and "
        "manifest.json to --out. Documents are streamed in groups of --pack-docs.",
    )
    pp.add_argument("overrides", nargs="*", help="data/tokenizer/pretrain overrides, as for bertsmith train")
    pp.add_argument("--out", required=True, help="the directory to write (new or empty)")
    pp.add_argument("--force", action="store_true", help="replace --out if it exists")
    pp.add_argument("--workers", type=int, default=1, help="tokenising worker processes (default 1)")
    pp.add_argument(
        "--pack-docs",
        type=int,
        default=10000,
        help="training documents packed together (default 10000); a corpus with no more "
        "makes exactly the rows of bertsmith train's in-memory path",
    )
    pp.set_defaults(fn=_cmd_prepare)
    pb = dsub.add_parser(
        "bench",
        help="tokens/s of the shard reader",
        description="Read DIR's training batches as training does (step-indexed rows, collated, "
        "masked at 30%%) in one process and print tokens/s.",
    )
    pb.add_argument("dir")
    pb.add_argument("--batch-size", type=int, default=16, help="rows per batch (default 16)")
    pb.add_argument("--steps", type=int, default=200, help="batches read (default 200)")
    pb.set_defaults(fn=_cmd_bench, reads_recipes=False)
