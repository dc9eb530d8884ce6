"""What a path holds: the one resolver behind ``train init_from=``, ``finetune init_from=``
and ``export``.

    kind           what makes it                                  model_dir       run_dir
    bertsmith      spec.yaml + model.safetensors                  the path        its parent, if a run
    run            spec.yaml + (config.yaml or checkpoints/)      model/ if done  the path
    remote         config.json with model_type "bertsmith"        -               -
    transformers   any other config.json                          -               -
    sweep          runs below it (Hydra job directories)          -               -

They are tried in that order. Nothing found there is executed; a sweep is looked for only
where the caller asks (it walks the tree).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from bertsmith.registry.errors import SpecError
from bertsmith.registry.jsonfile import read_json


@dataclass(frozen=True)
class Source:
    """A resolved path: what it is (``kind``), its spec, the model directory (weights, in
    ``registry.save`` format) and the run directory (``config.yaml``, ``metrics.csv``)."""

    path: Path
    kind: str
    spec_path: Path | None = None
    model_dir: Path | None = None
    run_dir: Path | None = None


def is_model_dir(d: Path) -> bool:
    """A bertsmith model directory (a run's ``model/``, an ``import-hf`` output)."""
    return (d / "spec.yaml").is_file() and (d / "model.safetensors").is_file()


def is_run(d: Path) -> bool:
    """A pre-training (or fine-tuning) run directory, finished or not."""
    return (d / "spec.yaml").is_file() and ((d / "config.yaml").is_file() or (d / "checkpoints").is_dir())


def runs_in(d: Path) -> list[Path]:
    """The runs of a sweep directory (Hydra job dirs), not counting fine-tuning dirs inside runs."""
    from bertsmith.train.tools.compare import find_runs

    return [r for r in find_runs(d) if is_run(r)]


def _config_kind(d: Path) -> str:
    try:
        model_type = read_json(d / "config.json").get("model_type")
    except SpecError:  # reported by the reader of the kind it is taken for
        model_type = None
    return "remote" if model_type == "bertsmith" else "transformers"


def identify(d: Path, sweeps: bool = False) -> Source | None:
    """What ``d`` holds (see the module's table), or None; ``sweeps``: also look for runs
    below ``d``."""
    if is_model_dir(d):
        parent = d.parent
        run = parent if (parent / "config.yaml").is_file() and (parent / "spec.yaml").is_file() else None
        return Source(d, "bertsmith", d / "spec.yaml", d, run)
    if is_run(d):
        model = d / "model" if (d / "model" / "model.safetensors").is_file() else None
        return Source(d, "run", d / "spec.yaml", model, d)
    if (d / "config.json").is_file():
        return Source(d, _config_kind(d))
    if sweeps and d.is_dir() and runs_in(d):
        return Source(d, "sweep")
    return None


def model_or_run(path: str | os.PathLike, who: str = "export") -> Source:
    """The source of ``bertsmith export``, ``fill-mask`` and ``embed`` (``who``, which errors
    name): a run directory (``spec.yaml``, ``config.yaml``, maybe ``model/``) or a model
    directory (``spec.yaml``, ``model.safetensors``). ``path`` is taken as given (``~``
    expanded, not made absolute): it is quoted in the model card."""
    p = Path(path).expanduser()
    found = identify(p)
    if found is not None and (
        found.kind == "bertsmith" or found.kind == "run" and (p / "config.yaml").is_file()
    ):
        return found
    raise SpecError(
        f"{who}: given {str(p)!r}, allowed: a run directory (spec.yaml, config.yaml, model/) "
        "or a model directory (spec.yaml, model.safetensors)"
    )


def finished_model(path: str | os.PathLike, who: str = "export") -> Source:
    """``model_or_run`` of a path whose model exists (a model directory, or a finished run)."""
    source = model_or_run(path, who)
    if source.model_dir is None:
        raise SpecError(
            f"{who}: given {str(source.path)!r}, a run directory without model/ (the run has not "
            "finished); allowed: a finished run or a model directory"
        )
    return source


def model_source(init_from: str) -> Source:
    """``bertsmith train init_from=``: a model directory, a transformers directory or a
    remote-code export (absolute)."""
    found = identify(Path(init_from).expanduser().resolve())
    if found is not None and found.kind in ("bertsmith", "remote", "transformers"):
        return found
    raise SpecError(
        f"init_from: given {init_from!r}, allowed: a model directory (spec.yaml, "
        "model.safetensors; a run's model/ or an import-hf output) or a transformers directory "
        "(config.json; e.g. a bertsmith export)"
    )


def start_source(init_from: str) -> Source:
    """``bertsmith finetune init_from=``: any kind (absolute); a run must have finished."""
    d = Path(init_from).expanduser().resolve()
    found = identify(d, sweeps=True)
    if found is not None and found.kind == "run" and found.model_dir is None:
        raise SpecError(
            f"init_from: given {init_from!r}, a pre-training run that has not finished (no model/); "
            f"allowed: a finished run (continue it with: bertsmith train resume=true hydra.run.dir={d})"
        )
    if found is None:
        raise SpecError(
            f"init_from: given {init_from!r}, allowed: a pre-training run directory, a model directory "
            "(spec.yaml, model.safetensors), a transformers directory (config.json) or a sweep directory"
        )
    return found
