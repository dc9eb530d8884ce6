"""The ``logger`` group (TensorBoard, MLflow, wandb besides metrics.csv), plain progress lines
when stdout is not a terminal, and model FLOP/s and MFU in the summary (``train.loggers``,
``train.utilisation``)."""

from __future__ import annotations

import csv
import json
import math
import sys

import pytest
import torch
import yaml
from helpers import TINY_TRAIN, run_main

from bertsmith import registry
from bertsmith.train.callbacks import read_metrics
from bertsmith.train.utilisation import known_gpu_peak, train_flops_per_token

STEPS, EVERY = 6, 2
# TINY_TRAIN with progress on: stdout is a StringIO here, not a terminal -> plain lines
TRAIN = [
    *(a for a in TINY_TRAIN if not a.startswith(("trainer.progress", "trainer.log_every"))),
    f"trainer.max_steps={STEPS}",
    f"trainer.log_every={EVERY}",
    "trainer.val_every=3",
]


@pytest.fixture(scope="module")
def three(tmp_path_factory):
    """One tiny run with ``logger=[csv,tensorboard,mlflow]``: (run dir, what it printed)."""
    run_dir = tmp_path_factory.mktemp("loggers") / "run"
    r = run_main("train", *TRAIN, "logger=[csv,tensorboard,mlflow]", f"hydra.run.dir={run_dir}")
    assert r.returncode == 0, r.stderr
    return run_dir, r


def _train_rows(run_dir):
    return [r for r in read_metrics(run_dir / "metrics.csv") if "train_loss" in r]


def test_metrics_csv_keeps_its_columns(three):
    run_dir, _ = three
    with (run_dir / "metrics.csv").open() as f:
        header = next(csv.reader(f))
    assert header == ["step", "train_loss", "lr", "tokens_per_s", "val_loss", "val_mlm_acc", "val_nsp_acc"]
    assert [r["step"] for r in _train_rows(run_dir)] == [1, 2, 4, 6]


def test_tensorboard_holds_the_metrics_csv_values_and_the_config(three):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir, _ = three
    acc = EventAccumulator(str(run_dir / "tensorboard"))
    acc.Reload()
    scalars = acc.Tags()["scalars"]
    rows = read_metrics(run_dir / "metrics.csv")
    for key in ("train_loss", "lr", "tokens_per_s", "val_loss", "val_mlm_acc"):
        want = [(r["step"], r[key]) for r in rows if key in r]
        got = [(e.step, e.value) for e in acc.Scalars(key)]
        assert [s for s, _ in got] == [s for s, _ in want], key
        assert [v for _, v in got] == pytest.approx([v for _, v in want], rel=1e-6), key
    assert {"model_flops_per_s", "mfu", "summary/mfu", "summary/val_loss"} <= set(scalars)
    hparams = (run_dir / "tensorboard" / "hparams.yaml").read_text()
    assert "d_model" in hparams and "log_every: 2" in hparams  # the spec and the config


def test_mlflow_holds_the_metrics_csv_values_and_the_config(three):
    from mlflow.tracking import MlflowClient

    run_dir, _ = three
    client = MlflowClient(f"sqlite:///{run_dir / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("bertsmith").experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    rows = read_metrics(run_dir / "metrics.csv")
    for key in ("train_loss", "tokens_per_s", "val_loss"):
        want = [(r["step"], r[key]) for r in rows if key in r]
        got = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
        assert [s for s, _ in got] == [s for s, _ in want], key
        assert [v for _, v in got] == pytest.approx([v for _, v in want], rel=1e-6), key
    params = run.data.params
    assert params["trainer/log_every"] == str(EVERY) and int(params["model/d_model"]) > 0
    assert float(run.data.metrics["summary/mfu"]) > 0


def test_no_tty_means_one_plain_line_per_log_every_and_no_carriage_return(three):
    _, r = three
    assert "\r" not in r.stdout and "\r" not in r.stderr
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("step ") and " loss " in ln]
    assert [ln.split()[1] for ln in lines] == ["1/6", "2/6", "4/6", "6/6"]
    assert all("tokens/s" in ln and "MFU" in ln for ln in lines[1:])
    assert sum(ln.startswith("step ") and "val_loss" in ln for ln in r.stdout.splitlines()) == 2


def test_summary_flops_and_mfu_follow_the_cost_model(three):
    run_dir, r = three
    s = json.loads((run_dir / "summary.json").read_text())
    spec = registry.load_spec(run_dir / "spec.yaml")
    f = registry.cost(spec, 64)["flops_per_token"]
    ratio = yaml.safe_load((run_dir / "config.yaml").read_text())["objective"]["mask_ratio"]
    assert spec.head.sparse and ratio == 0.3  # ModernBERT's: the head decodes the masked 30% only
    forward = f["encoder"] + ratio * f["head"]
    assert s["train_flops_per_token"] == round(3 * forward)
    assert s["model_flops_per_s"] == pytest.approx(3 * forward * s["tokens_per_s"], rel=1e-9)
    assert s["mfu"] == pytest.approx(s["model_flops_per_s"] / s["peak_flops"], rel=1e-9)
    assert 0 < s["mfu"] < 1 and "measured fp32 GEMM" in s["peak_flops_source"]
    assert f"MFU {s['mfu']:.1%}" in r.stdout


def test_a_dense_head_counts_every_token():
    spec = registry.compose("bert-tiny", ["model/head=mlm", "model.head.sparse=false"])
    f = registry.cost(spec, 64)["flops_per_token"]
    assert train_flops_per_token(spec, 64, 0.15)["train"] == 3 * (f["encoder"] + f["head"])


def test_peak_flops_setting_and_known_gpus(tmp_path):
    assert known_gpu_peak("NVIDIA H100 80GB HBM3") == 989e12
    assert known_gpu_peak("NVIDIA H100 PCIe") == 756e12
    assert known_gpu_peak("NVIDIA A100-SXM4-40GB") == 312e12
    assert known_gpu_peak("NVIDIA L4") == 121e12
    assert known_gpu_peak("NVIDIA A10G") == 125e12
    run_dir = tmp_path / "run"
    r = run_main(
        "train", *TINY_TRAIN, "trainer.max_steps=2", "trainer.peak_flops=1e12", f"hydra.run.dir={run_dir}"
    )
    assert r.returncode == 0, r.stderr
    s = json.loads((run_dir / "summary.json").read_text())
    assert s["peak_flops"] == 1e12 and s["peak_flops_source"] == "trainer.peak_flops"
    assert s["mfu"] == pytest.approx(s["model_flops_per_s"] / 1e12)
    assert "step " not in r.stdout  # trainer.progress=false: no lines at all
    assert not (run_dir / "tensorboard").exists() and not (run_dir / "mlflow.db").exists()


@pytest.mark.parametrize(
    "command, extra, key",
    [
        ("train", ["logger=nope"], "logger"),
        ("train", ["logger=[csv,tensorbord]"], "logger"),
        ("train", ["logger.tensorboard.bogus=1"], "logger.tensorboard.bogus"),
        ("train", ["logger=mlflow", "block=mlflow"], "logger.mlflow"),
        ("train", ["logger=[csv,mlflow]", "block=alembic"], "logger.mlflow: given tracking_uri=null"),
        ("train", ["trainer.peak_flops=0"], "trainer.peak_flops"),
        ("finetune", ["init_from=x", "data.train=t.csv", "logger=nope"], "logger"),
        ("finetune", ["init_from=x", "data.train=t.csv", "logger=wandb", "block=wandb"], "logger.wandb"),
    ],
)
def test_bad_logger_is_one_line_exit_2_and_nothing_written(command, extra, key, tmp_path, monkeypatch):
    args = [a for a in extra if not a.startswith("block=")]
    for a in extra:
        if a.startswith("block="):  # the package is not installed
            monkeypatch.setitem(sys.modules, a[len("block=") :], None)
    run_dir = tmp_path / "run"
    r = run_main(command, *TINY_TRAIN[: 5 if command == "train" else 0], *args, f"hydra.run.dir={run_dir}")
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {key}"), r.stderr
    assert not run_dir.exists()


def test_finetuning_logs_to_wandb_offline(three, tmp_path):
    run_dir, _ = three
    rows = [("good fine text", "a"), ("bad poor text", "b")] * 12
    for name in ("t.csv", "v.csv"):
        with (tmp_path / name).open("w", newline="") as f:
            csv.writer(f).writerows([("text", "label"), *rows])
    out = tmp_path / "ft"
    r = run_main(
        "finetune",
        f"init_from={run_dir}",
        f"data.train={tmp_path / 't.csv'}",
        f"data.validation={tmp_path / 'v.csv'}",
        "trainer.max_steps=4",
        "trainer.val_every=4",
        "trainer.log_every=2",
        "logger=[csv,wandb]",
        f"hydra.run.dir={out}",
    )
    assert r.returncode == 0, r.stderr
    (offline,) = (out / "wandb").glob("offline-run-*")
    (log,) = offline.glob("run-*.wandb")
    assert log.stat().st_size > 0
    assert [ln.split()[1] for ln in r.stdout.splitlines() if ln.startswith("step ") and " loss " in ln] == [
        "1/4",
        "2/4",
        "4/4",
    ]
    assert math.isfinite(json.loads((out / "summary.json").read_text())["val_loss"])


def test_cpu_peak_is_a_measured_gemm_rate():
    from bertsmith.train.utilisation import peak_flops

    peak, source = peak_flops(None, "cpu")
    assert 1e8 < peak < 1e14 and f"{torch.get_num_threads()} threads" in source
