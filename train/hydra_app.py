"""The Hydra entry shared by ``bertsmith train`` and ``bertsmith finetune``: run an app of
``recipes/`` with a list of overrides, each job guarded so that a user error is one line
(exit 2) and, in a sweep, a ``FAILED`` file in the job's directory while the sweep goes on."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from omegaconf import DictConfig

from bertsmith.registry.composer import RECIPES
from bertsmith.registry.errors import SpecError


def hydra_line(msg: str) -> str:
    """One line from a Hydra or OmegaConf error message."""
    msg = " ".join(msg.split())
    if m := re.search(r"Could not override '([^']+)'.*?Key '([^']+)' is not in struct", msg):
        return f"{m[1]}: unknown key"
    if m := re.search(r"Could not find '([^']+)'", msg):
        return f"{m[1]}: not found"
    return f"config: {msg[:300]}"


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
