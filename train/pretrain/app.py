"""``bertsmith train``: the Hydra app that pre-trains any recipe with Lightning.

    bertsmith train [model=NAME] [pretrain=FAMILY] [group.key=value ...] [-m]

The run directory (``hydra.run.dir``; one per job under ``hydra.sweep.dir`` with ``-m``)
receives ``spec.yaml``, ``config.yaml`` (everything resolved), ``tokenizer.json``,
``checkpoints/`` (``step=N.ckpt`` every ``trainer.checkpoint.every_n_steps`` and ``last.ckpt``),
``metrics.csv`` and, at the end, ``model/`` in ``registry.save`` format. ``resume=true`` with
the same run directory continues from ``last.ckpt`` exactly (data order, schedule, RNG).

Before Hydra starts a single run, the whole configuration is composed and checked, so a
mistake costs one line and exit code 2 and writes nothing.
"""

from __future__ import annotations

import re
import shutil
import tempfile
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from bertsmith.registry.composer import (
    finish_model_config,
    hydra_overrides,
    model_overrides,
    prepare,
    reject_targets,
)
from bertsmith.registry.errors import SpecError
from bertsmith.train.hydra_app import (
    CHOICE,
    DOTTED,
    compose,
    group_override,
    hydra_main,
    is_help,
    is_multirun,
    recipe_choice,
    unknown_key,
)

SETTINGS = (
    "data",
    "tokenizer",
    "objective",
    "optim",
    "schedule",
    "trainer",
    "logger",
)  # typed in train.config
GROUPS = ("model", *SETTINGS, "pretrain", "ablation", "sweep", "launcher")
TOP = ("seed", "resume", "init_from", "init_spec", "finetune")
_FLAG_WITH_VALUE = {
    "--cfg",
    "-c",
    "--package",
    "-p",
    "--config-path",
    "-cp",
    "--config-name",
    "-cn",
    "--config-dir",
    "-cd",
    "--experimental-rerun",
}


def prepare_overrides(args: list[str], tmp: Path) -> list[str]:
    """Check group choices, let any key of a training group be set (``++``), and turn
    ``model=PATH.yaml`` into a search path entry."""
    flags, plain = [], []
    it = iter(args)
    for a in it:
        if a.startswith("-"):
            flags.append(a)
            if a in _FLAG_WITH_VALUE:
                flags.append(next(it, ""))
        elif a.startswith("finetune=") and a[len("finetune=") :][:1] not in ("'", '"', ""):
            # overrides of another command: one quoted string to Hydra, not a sweep or a key
            value = a[len("finetune=") :].replace("\\", "\\\\").replace("'", "\\'")
            plain.append(f"finetune='{value}'")
        else:
            plain.append(a)
    prepare()  # plugins and the slot options: what the names below are checked against
    ovs, _ = hydra_overrides(plain, others=True)
    model_overrides(plain, sweep=True)  # a slot swapped twice, or also by its kind: one line
    init = any(a.startswith("init_from=") and a != "init_from=null" for a in plain)
    out = []
    for ov in ovs:
        if (m := CHOICE.match(ov)) and m["group"] == "model":
            out += recipe_choice(m["value"], tmp)
        elif init and (m := DOTTED.match(ov.lstrip("+"))) and m["group"] == "model":
            out.append(f"++init_spec.{m['rest']}={m['value']}")  # a change to init_from's spec
        elif (known := group_override(ov, GROUPS, (*SETTINGS, "init_spec"))) is not None:
            out.append(known)
        elif (m := CHOICE.match(ov)) and m["group"] not in TOP:
            raise unknown_key(m["group"], [*GROUPS, *TOP])
        else:
            out.append(ov)
    return out + flags


def parse_config(cfg: DictConfig, task_overrides: list[str]):
    """(EncoderSpec, TrainConfig) from a composed ``train`` config."""
    from omegaconf.errors import OmegaConfBaseException

    from bertsmith.registry.spec import parse_spec
    from bertsmith.train.pretrain.config import parse_train_config

    try:
        data = OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or "config"
        why = " ".join(str(e).split("\n    full_key:")[0].split())  # OmegaConf appends the key again
        raise SpecError(f"{key}: interpolation failed: {why[:200]}") from None
    data.pop("hydra", None)
    prepare()  # a job in another process (a launcher's) loads the plugins too
    swaps, explicit = model_overrides(list(task_overrides))
    model = finish_model_config(data.pop("model"), explicit, swaps)
    reject_targets(data, "")
    data.pop("pretrain", None)
    spec, tcfg = parse_spec(model), parse_train_config(data)
    if tcfg.init_from and any(re.match(r"^\+{0,2}model[./=]", o) for o in task_overrides):
        raise SpecError(
            f"init_from: given {tcfg.init_from!r} together with model overrides, allowed: "
            "init_from alone (its spec decides the architecture), model.KEY=VALUE on the command "
            "line next to init_from=... (a change to its spec: init_spec), or model overrides alone"
        )
    return spec, tcfg


def precheck(overrides: list[str]) -> None:
    """Compose and validate a single run's config before Hydra starts it."""
    plain = [o for o in overrides if not o.startswith("-")]
    cfg = compose("train", plain, hydra_config=True)
    from bertsmith.train.pretrain import corpus
    from bertsmith.train.pretrain.loop import cheap_checks, planned_run_dir

    run_dir = planned_run_dir(cfg)  # checked for room and permission before Hydra creates it
    spec, tcfg = parse_config(cfg, [o for o in plain if not o.startswith("hydra.")])
    cheap_checks(spec, tcfg, run_dir)
    corpus.check_cache(tcfg)  # the tokenizer and corpus caches: writable before the run dir exists
    if tcfg.finetune:
        from bertsmith.train.finetune.app import check_chained

        check_chained(tcfg.finetune)


def precheck_swaps(overrides: list[str]) -> None:
    """``-m``: before Hydra starts a job, every block a ``model/<slot>=a,b`` sweep on the
    command line names must apply to the recipe (the other sweeps at their first value), so
    an arm that would silently be the base, or fail to compose, is one line and no run dir."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    plain = [o for o in overrides if not o.startswith("-")]
    parsed = OverridesParser.create().parse_overrides(plain)

    def values(ov) -> list[str] | None:
        if not ov.is_sweep_override():
            return None
        try:
            return [str(v) for v in ov.sweep_string_iterator()]
        except (HydraException, TypeError, ValueError):  # e.g. glob(): its options are Hydra's
            return None

    sweeps = [(text, ov.get_key_element(), values(ov)) for text, ov in zip(plain, parsed, strict=True)]
    first = [f"{key}={vals[0]}" if vals else text for text, key, vals in sweeps]
    for i, (_, key, vals) in enumerate(sweeps):
        if not vals or not key.lstrip("+").startswith("model/"):
            continue
        for v in vals:
            one = [*first[:i], f"{key}={v}", *first[i + 1 :]]
            cfg = compose("train", one, hydra_config=True)
            try:
                data = OmegaConf.to_container(cfg.model, resolve=True)
            except OmegaConfBaseException:
                continue  # the job reports it (one line and a FAILED file)
            swaps, explicit = model_overrides([o for o in one if not o.startswith("hydra.")])
            finish_model_config(data, explicit, swaps)


def main(args: list[str]) -> int:
    """Entry point of ``bertsmith train``; returns the exit code."""
    tmp = Path(tempfile.mkdtemp(prefix="bertsmith-train-"))
    try:
        return hydra_main("train", "bertsmith train", args, lambda a: _checked(a, tmp), _train_job)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _checked(args: list[str], tmp: Path) -> list[str]:
    """The overrides for Hydra, the whole configuration checked first (each arm of a sweep
    of blocks with ``-m``)."""
    overrides = prepare_overrides(args, tmp)
    if is_help(args):
        pass
    elif is_multirun(args):
        precheck_swaps(overrides)
    else:
        precheck(overrides)
    return overrides


def _train_job(cfg: DictConfig):
    from hydra.core.hydra_config import HydraConfig

    summary = run(cfg)
    if "optuna" in str(HydraConfig.get().sweeper.get("_target_", "")):  # Optuna minimises one number
        return summary["val_loss"]
    return summary


def run(cfg: DictConfig) -> dict:
    """Train one job; returns its summary (also printed)."""
    from hydra.core.hydra_config import HydraConfig

    from bertsmith.train.pretrain.loop import train

    hc = HydraConfig.get()
    spec, tcfg = parse_config(cfg, list(hc.overrides.task))
    run_dir = Path(hc.runtime.output_dir)
    t0 = time.time()
    summary = train(spec, tcfg, run_dir, OmegaConf.to_container(cfg, resolve=True), started=t0)
    if tcfg.finetune and summary:  # rank 0 only; fine-tuning is single-device
        from bertsmith.train.finetune.app import run_chained

        run_chained(tcfg.finetune, run_dir, resume=tcfg.resume)
    return summary
