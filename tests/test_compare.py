"""A real 2x2 grid, end to end: train -m, then compare; the table against the runs' metrics."""

import csv
import json
import statistics

import pytest
from helpers import TINY_TRAIN, bertsmith, run_main

from bertsmith import registry
from bertsmith.train.callbacks import read_metrics

TINY = [*TINY_TRAIN, "trainer.max_steps=4", "trainer.val_every=2", "model.n_layers=2"]


def cli(*args, cache):
    return bertsmith(*args, cache=cache)


@pytest.fixture(scope="module")
def grid(tmp_path_factory, cache):
    root = tmp_path_factory.mktemp("grid")
    sweep = root / "sweep"
    run = cli(
        "train",
        "-m",
        *TINY,
        f"hydra.sweep.dir={sweep}",
        "model/positional=rope,alibi",
        "seed=0,1",
        cache=cache,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return sweep, cache


def test_table_rows_match_the_runs(grid):
    sweep, cache = grid
    out = cli("compare", str(sweep), cache=cache)
    assert out.returncode == 0, out.stderr
    with (sweep / "summary.csv").open() as f:
        rows = {r["variant"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"model/positional=rope", "model/positional=alibi"}
    for positional, row in rows.items():
        runs = [
            d
            for d in sweep.iterdir()
            if d.is_dir() and f"- {positional}" in (d / ".hydra" / "overrides.yaml").read_text()
        ]
        assert len(runs) == 2 and row["runs"] == "2" and row["status"] == "finished"
        losses = [
            [r for r in read_metrics(d / "metrics.csv") if "val_loss" in r][-1]["val_loss"] for d in runs
        ]
        assert float(row["val_loss"]) == pytest.approx(statistics.fmean(losses), rel=1e-9)
        assert float(row["val_loss_std"]) == pytest.approx(statistics.stdev(losses), rel=1e-6)
        spec = registry.load_spec(runs[0] / "spec.yaml")
        assert int(row["params"]) == registry.cost(spec)["params"]["total"]
        assert int(row["flops_per_token"]) == registry.cost(spec, 64)["flops_per_token"]["encoder"]
    # every job of the grid trained on one tokenizer, and the table says which
    hashes = {json.loads((d / "summary.json").read_text())["tokenizer_sha256"] for d in _jobs(sweep)}
    (sha,) = hashes
    assert {row["tokenizer"] for row in rows.values()} == {sha[:12]}
    assert f"| {sha[:12]} |" in (sweep / "summary.md").read_text() and sha[:12] in out.stdout
    # "best" only where the lowest mean is distinguishable from the runner-up (Welch, alpha
    # 0.05); a 4-step grid at n=2 is usually tied within noise, and then no row is best
    best = min(rows.values(), key=lambda r: float(r["val_loss"]))
    # two variants: the comparison with the base is the one of best vs runner-up
    (p,) = (float(r["vs_base_p"]) for r in rows.values() if r["vs_base_p"])
    separated = p < 0.05
    table = (sweep / "summary.md").read_text()
    assert sum(r["best"] == "True" for r in rows.values()) == (1 if separated else 0)
    if separated:
        assert best["best"] == "True" and "(best)" in table
        assert "bertsmith export" in out.stdout and "--to recipe" in out.stdout
    else:
        assert "(best)" not in table and "tied within noise" in table and "seeds per variant" in table
        assert "tied within noise" in out.stdout


def _jobs(sweep):
    return sorted((d for d in sweep.iterdir() if (d / ".hydra").is_dir()), key=lambda d: int(d.name))


def test_runs_of_a_variant_on_different_tokenizers_show_each(grid, tmp_path):
    """A run still going has no summary.json: its hash comes from its tokenizer.json. Seeds of
    one variant that trained on different tokenizers are told apart in the column."""
    import shutil

    from bertsmith.train.pretrain.tokenizer import file_sha256

    sweep, cache = grid
    copy = tmp_path / "sweep"
    shutil.copytree(sweep, copy)
    runs = [d for d in _jobs(copy) if "positional=rope" in (d / ".hydra" / "overrides.yaml").read_text()]
    assert len(runs) == 2
    other = runs[1] / "tokenizer.json"
    state = json.loads(other.read_text())
    vocab = state["model"]["vocab"]
    a, b = list(vocab)[-6:-4]  # two ordinary tokens swap ids
    vocab[a], vocab[b] = vocab[b], vocab[a]
    other.write_text(json.dumps(state))
    (runs[1] / "summary.json").unlink()
    out = cli("compare", str(copy), cache=cache)
    assert out.returncode == 0, out.stderr
    with (copy / "summary.csv").open() as f:
        rows = {r["variant"]: r for r in csv.DictReader(f)}
    first, second = file_sha256(runs[0] / "tokenizer.json"), file_sha256(other)
    assert first != second
    assert rows["model/positional=rope"]["tokenizer"] == f"{first[:12]}/{second[:12]}"
    assert rows["model/positional=alibi"]["tokenizer"] == first[:12]


def test_plots_are_real_images(grid):
    import matplotlib.image as mpimg

    sweep, cache = grid
    assert cli("compare", str(sweep), cache=cache).returncode == 0  # alone, not after another test
    for name in ("val_loss.png", "quality_vs_throughput.png"):
        img = mpimg.imread(sweep / name)
        assert img.shape[0] > 200 and img.shape[1] > 200
        assert img[..., :3].std() > 0.01  # not a blank canvas


def test_failed_and_running_runs_are_marked_not_fatal(grid, tmp_path):
    import shutil

    sweep, cache = grid
    copy = tmp_path / "sweep"
    shutil.copytree(sweep, copy)
    failed, running = copy / "0", copy / "1"
    (failed / "FAILED").write_text("data.path: missing\n")
    (running / "summary.json").unlink()
    with (running / "metrics.csv").open("a") as f:
        f.write("5,1.0")  # a half-written row of a job still running
    out = cli("compare", str(copy), cache=cache)
    assert out.returncode == 0, out.stderr
    table = (copy / "summary.md").read_text()
    assert "failed:1" in table and "running:1" in table


def test_compare_bad_directory_is_one_line(tmp_path):
    out = run_main("compare", tmp_path / "nope")  # in-process
    assert out.returncode == 2 and out.stderr.strip().count("\n") == 0 and "compare:" in out.stderr


@pytest.mark.slow
def test_parallel_launcher_and_identical_seeds(tmp_path, cache):
    """Two jobs with the same seed in parallel processes (joblib) give identical metrics."""
    sweep = tmp_path / "sweep"
    run = cli(
        "train",
        "-m",
        "launcher=parallel",
        *TINY,
        f"hydra.sweep.dir={sweep}",
        "trainer.checkpoint.every_n_steps=2,4",
        "seed=7",
        cache=cache,
    )
    assert run.returncode == 0, run.stderr[-3000:]

    def comparable(d):
        return [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in read_metrics(d / "metrics.csv")]

    a, b = comparable(sweep / "0"), comparable(sweep / "1")
    assert a and a == b


@pytest.mark.slow
def test_optuna_sweeper_minimises_val_loss(tmp_path, cache):
    """Fails if the sweep maximised: each trial's job ran with direction ``minimize``, and the
    best trial Optuna reports is the trial with the lowest val_loss (its summary.json), with
    that trial's learning rate; the two trials' losses differ, so max and min tell apart."""
    import yaml

    sweep = tmp_path / "sweep"
    run = cli(
        "train",
        "-m",
        "sweep=optuna-lr",
        "hydra.sweeper.n_trials=2",
        *TINY,
        f"hydra.sweep.dir={sweep}",
        cache=cache,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    trials = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert [p.name for p in trials] == ["0", "1"]
    loss, lr = {}, {}
    for trial in trials:
        hydra_cfg = yaml.safe_load((trial / ".hydra" / "hydra.yaml").read_text())["hydra"]
        assert hydra_cfg["sweeper"]["direction"] == "minimize"
        loss[trial.name] = json.loads((trial / "summary.json").read_text())["val_loss"]
        overrides = yaml.safe_load((trial / ".hydra" / "overrides.yaml").read_text())
        (lr[trial.name],) = (float(o.split("=", 1)[1]) for o in overrides if o.startswith("++optim.lr="))
    lowest = min(loss, key=loss.get)
    assert min(loss.values()) < max(loss.values()), loss
    assert best["best_value"] == pytest.approx(loss[lowest], abs=1e-9), (best, loss)
    assert best["best_params"]["++optim.lr"] == pytest.approx(lr[lowest], rel=1e-12), (best, lr)


def test_rerun_of_a_finished_grid_with_resume_skips_every_run(grid):
    sweep, cache = grid
    before = {p: p.stat().st_mtime_ns for p in sweep.rglob("metrics.csv")}
    run = cli(
        "train",
        "-m",
        *TINY,
        f"hydra.sweep.dir={sweep}",
        "model/positional=rope,alibi",
        "seed=0,1",
        "resume=true",
        cache=cache,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.count("already finished") == 4
    assert before == {p: p.stat().st_mtime_ns for p in sweep.rglob("metrics.csv")}


def test_downstream_scores_become_columns_and_rank_the_grid(grid, tmp_path):
    """Fine-tuning summaries (as `bertsmith finetune` writes them into RUN/finetune/<task>)
    give one column per score, averaged over seeds; --metric ranks by one of them, higher
    is better except for mse. The real fine-tuning end to end is in test_finetune."""
    import json
    import shutil

    sweep, cache = grid
    copy = tmp_path / "sweep"
    shutil.copytree(sweep, copy)
    by_pos: dict[str, list[float]] = {}
    for d in sorted(p for p in copy.iterdir() if p.is_dir()):
        pos = "rope" if "positional=rope" in (d / ".hydra" / "overrides.yaml").read_text() else "alibi"
        acc = {"rope": 0.9, "alibi": 0.6}[pos] + 0.01 * len(by_pos.get(pos, []))
        by_pos.setdefault(pos, []).append(acc)
        ft = d / "finetune" / "topic"
        ft.mkdir(parents=True)
        (ft / ".hydra").mkdir()  # a fine-tuning run inside a run is not a run of the grid
        (ft / ".hydra" / "overrides.yaml").write_text("- task.name=topic\n")
        metrics = {"accuracy": acc, "mse": 1 - acc}
        (ft / "summary.json").write_text(json.dumps({"task": "topic", "metrics": metrics, "val_loss": 0.5}))
    out = cli("compare", str(copy), "--metric", "finetune:topic/accuracy", cache=cache)
    assert out.returncode == 0, out.stderr
    with (copy / "summary.csv").open() as f:
        rows = {r["variant"]: r for r in csv.DictReader(f)}
    assert len(rows) == 2  # the finetune/ dirs added no variants
    for pos, accs in by_pos.items():
        row = rows[f"model/positional={pos}"]
        assert float(row["finetune:topic/accuracy"]) == pytest.approx(statistics.fmean(accs))
        assert float(row["finetune:topic/accuracy_std"]) == pytest.approx(statistics.stdev(accs))
    assert rows["model/positional=rope"]["best"] == "True"  # the higher accuracy
    assert "topic accuracy" in (copy / "summary.md").read_text()
    worst = cli("compare", str(copy), "--metric", "finetune:topic/mse", cache=cache)
    assert worst.returncode == 0
    with (copy / "summary.csv").open() as f:
        assert {r["variant"]: r["best"] for r in csv.DictReader(f)}["model/positional=rope"] == "True"
    bad = cli("compare", str(copy), "--metric", "finetune:topic/acc", cache=cache)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1
    assert "did you mean 'finetune:topic/accuracy'" in bad.stderr
