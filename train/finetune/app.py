"""``bertsmith finetune``: the Hydra app that fine-tunes an encoder on a downstream task.

    bertsmith finetune init_from=DIR [task=NAME] [group.key=value ...] [sift=true] [-m]

``init_from`` is a pre-training run, a model directory, a transformers directory or a sweep
(see ``train.sources``). Without ``hydra.run.dir``, fine-tuning a pre-training run
writes into ``RUN/finetune/<task>`` (where ``bertsmith compare`` finds it), a sweep into
each of its runs, anything else into ``runs/finetune/<task>/<time>``. As with ``train``, the
configuration is composed and checked before Hydra starts a single run, so a mistake costs
one line and exit code 2 and writes nothing.
"""

from __future__ import annotations

import re
import time
from contextlib import contextmanager
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from bertsmith.registry.composer import reject_targets
from bertsmith.registry.errors import SpecError
from bertsmith.train import hydra_app

GROUPS = ("task", "optim", "schedule", "logger", "launcher")
SECTIONS = ("task", "data", "sift", "optim", "schedule", "trainer", "logger")  # any of their keys may be set
TOP = ("init_from", "tokenizer", "seed", "resume")
# ``tokenizer=FILE`` would be read by Hydra as a choice of the pre-training group
# recipes/tokenizer/ (the same search path); it reaches the config under this key instead
TOKENIZER_KEY = "tokenizer_file"


def prepare_overrides(args: list[str]) -> list[str]:
    """Check group choices, let any key of a section be set (``++``), and read ``sift=true``
    as ``sift.enabled=true``."""
    out = []
    for a in args:
        if a.startswith("-") or a.startswith("hydra.") or a.startswith("hydra/"):
            out.append(a)
        elif (known := hydra_app.group_override(a, GROUPS, SECTIONS)) is not None:
            out.append(known)
        elif a.startswith("sift="):  # also a sweep: sift=false,true
            out.append(f"sift.enabled={a.split('=', 1)[1]}")
        elif a.startswith("tokenizer="):
            out.append(f"++{TOKENIZER_KEY}={a.split('=', 1)[1]}")
        elif (m := hydra_app.CHOICE.match(a)) and m["group"] in TOP:
            out.append(a)
        elif a.startswith(("model.", "model/", "model=")):
            raise SpecError(
                f"{a.split('=')[0]}: given {a!r}, allowed: nothing; the model is init_from's "
                "(fine-tune another model with init_from=DIR)"
            )
        else:
            key = re.split(r"[.=]", a.lstrip("+~"), maxsplit=1)[0]
            raise hydra_app.unknown_key(key, [*GROUPS, *SECTIONS[1:], *TOP])
    return out


def parse_config(cfg: DictConfig):
    from omegaconf.errors import OmegaConfBaseException

    from bertsmith.train.finetune.config import parse_finetune_config

    try:
        data = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    except OmegaConfBaseException as e:
        raise SpecError(f"config: interpolation failed: {' '.join(str(e).split())[:200]}") from None
    data.pop("hydra", None)
    if TOKENIZER_KEY in data:
        data["tokenizer"] = data.pop(TOKENIZER_KEY)
    if data.get("init_from") == "???":
        data.pop("init_from")
    reject_targets(data, "")
    return parse_finetune_config(data)


def precheck(overrides: list[str]) -> list[str]:
    """Compose and check one run's config before Hydra starts it; returns the overrides with
    the default run directory filled in (``RUN/finetune/<task>`` for a pre-training run)."""
    plain = [o for o in overrides if not o.startswith("-")]
    cfg = hydra_app.compose("finetune", plain)
    fcfg = parse_config(cfg)
    from bertsmith.train.finetune import data
    from bertsmith.train.finetune.source import tokenizer_path
    from bertsmith.train.sources import start_source

    source = start_source(fcfg.init_from)
    if source.kind != "sweep":
        tokenizer_path(source, fcfg.tokenizer)
    if fcfg.data.source == "files":  # local files are cheap to read twice; a Hub dataset is not
        data.check_labels(*data.load_examples(fcfg.data), fcfg.task, fcfg.data)
    if any(o.startswith("hydra.run.dir=") for o in plain):
        return overrides
    if source.kind == "run":
        return [*overrides, f"hydra.run.dir={source.path / 'finetune' / fcfg.task.name}"]
    if source.kind == "sweep":  # each run gets its own RUN/finetune/<task>; nothing at the top
        return [*overrides, f"hydra.run.dir={source.path}", "hydra.output_subdir=null"]
    return overrides


def chained_config(text: str, init_from: str, resume: bool = False):
    """(config, resolved dict) of the fine-tuning that ``bertsmith train finetune="..."`` runs
    on its final model: ``text`` holds ``bertsmith finetune`` overrides; the model is the run's."""
    import shlex

    try:
        args = shlex.split(text)
    except ValueError as e:
        raise SpecError(f"finetune: given {text!r}, allowed: finetune overrides ({e})") from None
    for a in args:
        if a.startswith(("init_from=", "resume=", "hydra.", "hydra/", "-")):
            raise SpecError(
                f"finetune: given {a!r}, allowed: task, data, sift, optim, schedule, trainer and seed "
                "settings (the model, run directory and resume come from the pre-training run)"
            )
    with _about_finetune():
        overrides = [*prepare_overrides(args), f"init_from={init_from}", f"resume={str(resume).lower()}"]
        cfg = hydra_app.compose("finetune", overrides)  # inside `train`'s job: on its Hydra set-up
        return parse_config(cfg), OmegaConf.to_container(cfg, resolve=True)


@contextmanager
def _about_finetune():
    """Prefix error lines with ``finetune:``: they are about that setting of ``train``."""
    try:
        yield
    except SpecError as e:
        raise SpecError([f"finetune: {line}" for line in e.lines]) from None


def check_chained(text: str) -> None:
    """Catch a mistake in ``train``'s ``finetune`` setting before pre-training starts."""
    from bertsmith.train.finetune import data

    fcfg, _ = chained_config(text, "the-pre-training-run")  # not resolved here
    if fcfg.data.source == "files":
        with _about_finetune():
            data.check_labels(*data.load_examples(fcfg.data), fcfg.task, fcfg.data)


def run_chained(text: str, run_dir: Path, resume: bool) -> dict:
    """Fine-tune a finished pre-training run into ``RUN/finetune/<task>``."""
    from bertsmith.train.finetune.run import finetune

    fcfg, resolved = chained_config(text, str(run_dir), resume)
    return finetune(fcfg, run_dir / "finetune" / fcfg.task.name, resolved, started=time.time())


def main(args: list[str]) -> int:
    """Entry point of ``bertsmith finetune``; returns the exit code."""
    return hydra_app.hydra_main("finetune", "bertsmith finetune", args, _checked, _finetune_job)


def _checked(args: list[str]) -> list[str]:
    """The overrides for Hydra; a single run's configuration checked first."""
    overrides = prepare_overrides(args)
    return overrides if hydra_app.is_help(args) or hydra_app.is_multirun(args) else precheck(overrides)


def _finetune_job(cfg: DictConfig):
    from hydra.core.hydra_config import HydraConfig

    from bertsmith.registry.composer import prepare
    from bertsmith.train.finetune.run import finetune

    prepare()  # a job in another process (a launcher's) loads the plugins too
    out = Path(HydraConfig.get().runtime.output_dir)
    return finetune(parse_config(cfg), out, OmegaConf.to_container(cfg, resolve=True), started=time.time())
