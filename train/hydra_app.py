"""The Hydra entry shared by ``bertsmith train`` and ``bertsmith finetune``: run an app of
``recipes/`` with a list of overrides, each job guarded so that a user error is one line
(exit 2) and, in a sweep, a ``FAILED`` file in the job's directory while the sweep goes on.

Also what both commands do to a command line before Hydra sees it: group choices checked
against ``recipes/<group>/``, any key of a typed section let in (``++``), an unknown key
named with its nearest known one, a recipe file made an option on a search path, and the
config composed with a Hydra error as one line.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from omegaconf import DictConfig

from bertsmith.registry.composer import (
    RECIPES,
    file_option_name,
    missing_slots,
    prepare,
    recipe_path,
    swappable_copy,
)
from bertsmith.registry.errors import SpecError, choice, nearest

HELP = ("--help", "-h", "--hydra-help", "--info", "--cfg", "-c")  # Hydra answers; nothing is run
CHOICE = re.compile(r"^(?P<group>[a-z_]+)=(?P<value>[^=]*)$")
DOTTED = re.compile(r"^(?P<group>[a-z_]+)\.(?P<rest>[^=]+)=(?P<value>.*)$", re.S)


def hydra_line(msg: str) -> str:
    """One line from a Hydra or OmegaConf error message."""
    msg = " ".join(msg.split())
    if m := re.search(r"Could not override '([^']+)'.*?Key '([^']+)' is not in struct", msg):
        return f"{m[1]}: unknown key"
    if m := re.search(r"Could not find '([^']+)'", msg):
        return f"{m[1]}: not found"
    return f"config: {msg[:300]}"


def is_help(args: list[str]) -> bool:
    return any(a in HELP for a in args)


def is_multirun(args: list[str]) -> bool:
    return any(a in ("-m", "--multirun") for a in args)


def options(group: str) -> list[str]:
    """The options of a config group: the recipes under ``recipes/<group>/``."""
    return sorted(p.stem for p in (RECIPES / group).glob("*.yaml"))


def check_choice(group: str, value: str) -> None:
    """Each of ``value``'s comma-separated options (a sweep, or a list ``[a,b]`` of options
    chosen together, e.g. ``logger=[csv,tensorboard]``) is one of ``group``'s."""
    for one in value.replace("[", "").replace("]", "").split(","):
        if one not in options(group):
            raise SpecError(choice(group, one, options(group)))


def group_override(ov: str, groups, sections) -> str | None:
    """``group=a[,b]`` of ``groups`` (checked, as given) or ``section.key=value`` of
    ``sections`` (as ``++``: any key of a typed section may be set; its type checks it);
    None for anything else."""
    if (m := CHOICE.match(ov)) and m["group"] in groups:
        check_choice(m["group"], m["value"])
        return ov
    if (m := DOTTED.match(ov)) and m["group"] in sections:
        return f"++{ov}"
    return None


def unknown_key(key: str, known) -> SpecError:
    known = list(dict.fromkeys(known))
    return SpecError(f"{key}: unknown key; allowed: {', '.join(known)}{nearest(key, known)}")


def recipe_choice(value: str, tmp: Path) -> list[str]:
    """``model=`` for Hydra: a recipe file (or a sweep of several) becomes an option in a
    search path entry ``tmp``; so does a recipe whose defaults tree leaves a slot unselected
    (a standalone recipe), with ``<slot>: null`` added so ``model/<slot>=`` applies to it too."""
    names, search = [], False
    for one in value.split(","):
        if one.endswith((".yaml", ".yml")) or "/" in one:
            path = recipe_path(one)
            names.append(swappable_copy(path, tmp, file_option_name(path)))
            search = True
        elif one not in options("model"):
            raise SpecError(choice("model", one, options("model")))
        elif missing_slots(one):
            names.append(swappable_copy(RECIPES / "model" / f"{one}.yaml", tmp, f"_file_{one}"))
            search = True
        else:
            names.append(one)
    return [f"model={','.join(names)}", *([f"hydra.searchpath=[file://{tmp}]"] if search else [])]


def compose(config_name: str, overrides: list[str], hydra_config: bool = False) -> DictConfig:
    """``recipes/<config_name>.yaml`` composed with ``overrides`` (outside a job, or inside
    one on Hydra's own set-up); a Hydra error is one line."""
    from contextlib import nullcontext

    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    ready = GlobalHydra.instance().is_initialized()  # inside a job: on the same recipes folder
    try:
        with nullcontext() if ready else initialize_config_dir(config_dir=str(RECIPES), version_base="1.3"):
            return hydra_compose(
                config_name=config_name, overrides=overrides, return_hydra_config=hydra_config
            )
    except (HydraException, OmegaConfBaseException, ValueError) as e:
        raise SpecError(hydra_line(str(e))) from None
    except RecursionError:  # a recipe whose defaults reach itself
        raise SpecError(
            "defaults: a recipe includes itself (directly or through another), allowed: a tree"
        ) from None


def hydra_main(config_name: str, prog: str, args: list[str], checked, job) -> int:
    """A command's entry: ``checked(args)`` turns its command line into Hydra overrides,
    checking them first (a mistake is one line and exit code 2, and nothing is written);
    then ``hydra_app``. Returns the exit code."""
    try:
        prepare()  # plugins and the slot options, before anything is composed (--help too)
        overrides = checked(args)
    except SpecError as e:
        for line in e.lines:
            print(f"error: {line}", file=sys.stderr)
        return 2
    return hydra_app(config_name, prog, overrides, job)


def hydra_app(config_name: str, prog: str, overrides: list[str], job) -> int:
    """Run the Hydra app ``recipes/<config_name>.yaml`` with ``overrides``; ``job(cfg)`` runs
    each job, guarded so a user error is one line. Returns the exit code."""
    import hydra

    @hydra.main(config_path=str(RECIPES), config_name=config_name, version_base="1.3")
    def _entry(cfg: DictConfig):
        return _guarded(job, cfg)

    saved = sys.argv
    sys.argv = [prog, *overrides]
    try:
        _entry()
    except SystemExit as e:
        return int(e.code or 0)
    finally:
        sys.argv = saved
    return 0


def _guarded(job, cfg: DictConfig):
    """One job: a user error or a numerical stop is printed as one line and exits (2, or 1);
    in a sweep the job's directory gets a FAILED file saying why and the sweep goes on."""
    from hydra.core.hydra_config import HydraConfig

    hc = HydraConfig.get()
    try:
        return job(cfg)
    except SpecError as e:
        lines, failed, code = e.lines, "\n".join(e.lines), 2
    except FloatingPointError as e:
        lines, failed, code = [f"{e}; the last good checkpoint is kept in checkpoints/"], str(e), 1
    for line in lines:
        print(f"error: {line}", file=sys.stderr)
    if hc.mode.name == "MULTIRUN":  # one bad job must not end the sweep; its run dir says why
        (Path(hc.runtime.output_dir) / "FAILED").write_text(failed + "\n")
        return None
    sys.exit(code)
