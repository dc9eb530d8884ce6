"""The ``bertsmith`` command line: argparse only. Each command lives in a module of
``train/commands/`` that adds its own parser; ``train`` and ``finetune`` are Hydra apps whose
arguments are overrides, handed on whole.

Every command prints one line per problem and exits with code 2 for mistakes a user can
fix (bad recipe, bad override, bad file); bugs still raise with a traceback.
"""

from __future__ import annotations

import argparse
import sys

from bertsmith.registry.errors import SpecError
from bertsmith.train.commands import data, interop, model, tools, usage


def _hydra_apps(sub) -> None:
    """``train`` and ``finetune`` in the command list; their own ``--help`` is Hydra's."""
    sub.add_parser(
        "train",
        add_help=False,
        help="pre-train a recipe with Lightning (Hydra overrides; see `bertsmith train --help`)",
    )
    sub.add_parser(
        "finetune",
        add_help=False,
        help="fine-tune a run or model on a classification, regression or tagging task "
        "(Hydra overrides; see `bertsmith finetune --help`)",
    )


# in the order `bertsmith --help` lists them
COMMANDS = (
    model.add_blocks,
    model.add_schema,
    model.add_inspect,
    model.add_validate,
    tools.add_compare,
    _hydra_apps,
    tools.add_bench,
    data.add_data,
    interop.add_import_hf,
    interop.add_export,
    usage.add_fill_mask,
    usage.add_embed,
)


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage mistake as one ``error:`` line (exit 2) like every other."""

    def error(self, message: str):
        self.exit(2, f"error: {self.prog.removeprefix('bertsmith ')}: {message}\n")


def parser() -> argparse.ArgumentParser:
    ap = _Parser(
        prog="bertsmith",
        description="Compose BERT-family encoders from interchangeable blocks.",
    )
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return ap


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "train":  # a Hydra app: its arguments are overrides, not flags
        from bertsmith.train.pretrain.app import main as train_main

        return train_main(argv[1:])
    if argv and argv[0] == "finetune":  # a Hydra app too
        from bertsmith.train.finetune.app import main as finetune_main

        return finetune_main(argv[1:])
    try:
        args = parser().parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage mistake (2, its line printed): a return code
        return e.code if isinstance(e.code, int) else 2
    try:
        if getattr(args, "reads_recipes", True):
            from bertsmith.registry.composer import prepare

            prepare()  # plugins, and the slot options every recipe composes from
        args.fn(args)
    except SpecError as e:
        for line in e.lines:
            print(f"error: {line}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
