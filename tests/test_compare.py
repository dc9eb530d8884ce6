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
    for name in ("val_loss.png", "final_metric.png", "quality_vs_throughput.png"):
        img = mpimg.imread(sweep / name)
        assert img.shape[0] > 200 and img.shape[1] > 200
        assert img[..., :3].std() > 0.01  # not a blank canvas


def test_curves_and_baseline_of_a_real_grid(grid, tmp_path):
    """The real runs' validation points on tokens seen (data.seq_len 64 × data.batch_size 4 per
    step, validation at steps 2 and 4), averaged over the two seeds; the unigram baseline of
    their summary.json as the table's last row; the budget from their config."""
    import shutil

    from bertsmith.train.tools.compare import compare

    sweep, _ = grid
    copy = tmp_path / "sweep"
    shutil.copytree(sweep, copy)
    result = compare(copy)
    drawn = result["plots"]
    assert drawn.unit == "tokens" and len(drawn.curves) == 2
    for c in drawn.curves:
        pos = c.variant.split("=")[1]
        runs = [
            d for d in _jobs(copy) if f"positional={pos}" in (d / ".hydra" / "overrides.yaml").read_text()
        ]
        vals = [[r["val_loss"] for r in read_metrics(d / "metrics.csv") if "val_loss" in r] for d in runs]
        assert c.step == [2, 4] and c.x == [2 * 256, 4 * 256] and c.n == [2, 2]
        assert c.mean == pytest.approx([statistics.fmean(v) for v in zip(*vals, strict=True)])
    # the unigram loss is scored on each run's validation masks (drawn by its seed): the baseline
    # is its mean over a variant's seeds, the same for both variants (seeds 0 and 1 each)
    unigram = [json.loads((d / "summary.json").read_text())["unigram_val_loss"] for d in _jobs(copy)]
    u = statistics.fmean(unigram[:2])
    assert statistics.fmean(unigram[2:]) == u
    assert result["baselines"]["val_loss"].value == u and drawn.baseline["val_loss.png"] == [u]
    md = (copy / "summary.md").read_text()
    assert f"| *baseline: unigram loss* | – | – | – | – | – | {u:.3f} |" in md
    assert "Budget per run: 4 steps × 256 tokens/step (batch 4 × seq_len 64 × accumulate 1 × 1 device)" in md
    assert all(drawn.fits.values())


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


# --- curves, final values, baselines and budget on synthetic run directories (no training) -----

SEQ, BATCH, ACC = 64, 4, 2
PER_STEP = SEQ * BATCH * ACC  # 512 tokens per optimizer step


def _synthetic_run(d, overrides, val, *, max_steps=6, unigram=6.5, config=True, finished=True, finetune=None):
    """A pre-training run directory as `bertsmith train` writes it: ``val`` maps validation
    steps to val_loss; ``finetune`` (accuracy) adds ``finetune/topic`` with a majority baseline."""
    import yaml

    (d / ".hydra").mkdir(parents=True)
    (d / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    choices = {
        "launcher": None,
        "sweep": None,
        "trainer": "cpu",
        "optim": "adamw",
        "model": "modernbert-tiny",
    }
    choices["model/positional"] = "rope"
    hydra = {"hydra": {"runtime": {"choices": choices}}}  # in Hydra's order: the defaults reversed
    (d / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump(hydra, sort_keys=False))
    if config:
        cfg = {
            "data": {"seq_len": SEQ, "batch_size": BATCH},
            "trainer": {"max_steps": max_steps, "accumulate": ACC, "devices": 1},
            "optim": {"kind": "adamw", "lr": 0.001},
            "schedule": {"kind": "linear"},
        }
        (d / "config.yaml").write_text(yaml.safe_dump(cfg))
    lines = ["step,train_loss,lr,tokens_per_s,val_loss,val_mlm_acc"]
    for step in range(1, max(val) + 1):
        lines.append(f"{step},9.0,0.001,1000.0,,")
        if step in val:
            lines.append(f"{step},,,,{val[step]!r},0.1")
    (d / "metrics.csv").write_text("\n".join(lines) + "\n")
    if finished:
        last = val[max(val)]
        (d / "summary.json").write_text(json.dumps({"val_loss": last, "unigram_val_loss": unigram}))
        (d / "model").mkdir()
        (d / "model" / "model.safetensors").write_bytes(b"")
    if finetune is not None:
        ft = d / "finetune" / "topic"
        (ft / ".hydra").mkdir(parents=True)
        (ft / ".hydra" / "overrides.yaml").write_text("- task.name=topic\n")
        base = {"name": "the majority class", "metric": "accuracy", "value": 0.52}
        s = {"task": "topic", "metrics": {"accuracy": finetune}, "val_loss": 0.5, "baseline": base}
        (ft / "summary.json").write_text(json.dumps({**s, "majority_accuracy": 0.52}))


def _synthetic_grid(tmp_path, variants: dict, **kw):
    """``variants``: positional -> one ``{step: val_loss}`` per seed."""
    sweep = tmp_path / "sweep"
    i = 0
    for pos, seeds in variants.items():
        for seed, val in enumerate(seeds):
            opts = kw.get(pos, {}) if isinstance(kw.get(pos), dict) else {}
            _synthetic_run(
                sweep / str(i),
                ["trainer.val_every=2", f"model/positional={pos}", f"seed={seed}"],
                val,
                **opts,
            )
            i += 1
    return sweep


def _seeds(means, offsets=(0.0, 0.2, -0.2)):
    """One validation curve per offset: ``{2: means[0] + o, 4: means[1] + o, 6: means[2] + o}``."""
    return [{2 * (i + 1): m + o for i, m in enumerate(means)} for o in offsets]


def _t_interval(values):
    from scipy import stats

    m, s, n = statistics.fmean(values), statistics.stdev(values), len(values)
    half = stats.t.ppf(0.975, n - 1) * s / n**0.5
    return m - half, m + half


def test_learning_curves_share_an_axis_of_tokens_with_a_band_over_seeds(tmp_path):
    from bertsmith.train.tools.compare import compare

    rope = _seeds([8.0, 7.0, 6.0])
    alibi = _seeds([8.5, 7.5, 6.5])[:2] + [{2: 8.4}]  # the third seed is still running at step 2
    sweep = _synthetic_grid(tmp_path, {"rope": rope, "alibi": alibi})
    (sweep / "5" / "summary.json").unlink()
    drawn = compare(sweep)["plots"]
    assert drawn.unit == "tokens"
    by = {c.variant: c for c in drawn.curves}
    r, a = by["model/positional=rope"], by["model/positional=alibi"]
    assert r.step == [2, 4, 6] and r.x == [2 * PER_STEP, 4 * PER_STEP, 6 * PER_STEP]
    assert r.mean == pytest.approx([8.0, 7.0, 6.0]) and r.n == [3, 3, 3]
    for i, step in enumerate(r.step):
        lo, hi = _t_interval([s[step] for s in rope])
        assert (r.lo[i], r.hi[i]) == (pytest.approx(lo), pytest.approx(hi))
    # the running seed counts where it reached: n = 3 at step 2, then 2
    assert a.n == [3, 2, 2] and a.mean[0] == pytest.approx(statistics.fmean([8.5, 8.7, 8.4]))
    assert a.mean[1:] == pytest.approx([7.6, 6.6]) and a.lo[2] == pytest.approx(_t_interval([6.5, 6.7])[0])
    assert r.base and not a.base  # the first variant is the base
    assert drawn.baseline["val_loss.png"] == [6.5]
    assert "baseline: unigram loss 6.500" in drawn.labels["val_loss.png"]


def test_curves_fall_back_to_steps_without_a_config(tmp_path):
    from bertsmith.train.tools.compare import compare

    sweep = _synthetic_grid(tmp_path, {"rope": _seeds([8.0, 7.0, 6.0]), "alibi": _seeds([8.0, 7.0, 6.0])})
    (sweep / "4" / "config.yaml").unlink()
    drawn = compare(sweep)["plots"]
    assert drawn.unit == "step" and drawn.curves[0].x == [2, 4, 6]


def test_tokens_seen_follow_the_batch_size_warmup_of_the_data():
    """``Budget.tokens_at`` counts the rows ``PretrainBatches.rows_at`` gives each micro-step."""
    from types import SimpleNamespace

    from bertsmith.train.pretrain.data import PretrainBatches
    from bertsmith.train.tools.compare import Budget

    b = Budget(max_steps=6, batch=4, seq_len=8, accumulate=2, devices=2, warmup_steps=5, warmup_start=0.25)
    data = PretrainBatches(SimpleNamespace(rows=list(range(200))), 4, 8, None, None, 0, False, 5, 0.25)
    for step in range(7):
        micro = step * 2 * 2
        assert b.tokens_at(step) == 8 * sum(len(data.rows_at(m)) for m in range(micro)), step
    assert Budget(6, 4, 8, 2, 2).tokens_at(3) == 3 * 4 * 8 * 2 * 2 and b.tokens < 6 * 128


def test_final_values_sorted_best_first_with_the_base_marked(tmp_path):
    from bertsmith.train.tools.compare import compare

    sweep = _synthetic_grid(
        tmp_path,
        {
            "rope": _seeds([8.0, 7.0, 6.0]),  # the base, in the middle
            "alibi": _seeds([8.0, 7.0, 5.0]),
            "learned": _seeds([8.0, 7.0, 7.0]),
            "none": [{2: 8.0, 4: 7.5, 6: 6.4}],  # one seed
        },
    )
    result = compare(sweep)
    fs = result["plots"].finals
    assert [f.variant.split("=")[1] for f in fs] == ["alibi", "rope", "none", "learned"]
    assert [f.mean for f in fs] == pytest.approx([5.0, 6.0, 6.4, 7.0])
    assert [f.base for f in fs] == [False, True, False, False] and fs[0].best
    assert (fs[2].n, fs[2].lo, fs[2].hi) == (1, None, None)
    lo, hi = _t_interval([5.0, 5.2, 4.8])
    assert (fs[0].lo, fs[0].hi, fs[0].n) == (pytest.approx(lo), pytest.approx(hi), 3)
    ticks = result["plots"].labels["final_metric.png"]  # top to bottom
    assert ticks == [
        "model/positional=alibi (best)\nn=3",
        "model/positional=rope (base)\nn=3",
        "model/positional=none\nn=1",
        "model/positional=learned\nn=3",
    ]
    assert result["plots"].baseline["final_metric.png"] == [6.5]
    assert all(result["plots"].fits.values())


def test_long_variant_names_are_wrapped_not_clipped(tmp_path):
    from bertsmith.train.tools.compare import compare
    from bertsmith.train.tools.compare_plots import WRAP

    long = "rope optim.lr=0.000123456 schedule.warmup=0.123456 trainer.clip=0.5 objective.mask_ratio=0.3"
    sweep = _synthetic_grid(tmp_path, {long: _seeds([8.0, 7.0, 6.0]), "alibi": _seeds([8.0, 7.0, 6.1])})
    result = compare(sweep)
    drawn = result["plots"]
    assert set(drawn.fits) == {p.name for p in drawn.paths} and all(drawn.fits.values())
    for label in drawn.labels["final_metric.png"] + drawn.labels["val_loss.png"]:
        assert max(len(line) for line in label.split("\n")) <= WRAP + len(" (best, base)"), label
    assert any(label.count("\n") >= 3 for label in drawn.labels["final_metric.png"])


def test_summary_states_the_baseline_budget_and_base_recipe(tmp_path):
    from bertsmith.train.tools.compare import compare

    sweep = _synthetic_grid(tmp_path, {"rope": _seeds([8.0, 7.0, 6.0]), "alibi": _seeds([8.0, 7.0, 6.1])})
    result = compare(sweep)
    md = (sweep / "summary.md").read_text()
    assert result["baselines"]["val_loss"].value == 6.5
    (row,) = [line for line in md.splitlines() if line.startswith("| *baseline")]
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[0] == "*baseline: unigram loss*" and cells[6] == "6.500" and cells[7] == "–"
    assert len(cells) == len(md.splitlines()[md.splitlines().index(row) - 1].strip("|").split("|"))
    assert "Budget per run: 6 steps × 512 tokens/step (batch 4 × seq_len 64 × accumulate 2 × 1 device)" in md
    assert "= 3,072 tokens." in md
    assert (
        "Base recipe (model/positional=rope, run 0): model=modernbert-tiny optim=adamw trainer=cpu; "
        "overrides `trainer.val_every=2 model/positional=rope`; optim adamw lr 0.001; schedule linear." in md
    )
    assert "unigram loss (each masked token predicted from the training-token frequencies alone" in md
    assert "val_loss: unigram loss (" in md and "validation masks differ) 6.5000" in md
    with (sweep / "summary.csv").open() as f:  # the same context, per variant, in the CSV
        rows = {r["variant"]: r for r in csv.DictReader(f)}
    for row in rows.values():
        assert float(row["baseline:val_loss"]) == 6.5
        assert row["budget"].startswith("6 steps × 512 tokens/step (batch 4 × seq_len 64")


def test_budgets_that_differ_are_given_per_variant(tmp_path):
    from bertsmith.train.tools.compare import compare

    sweep = _synthetic_grid(
        tmp_path, {"rope": _seeds([8.0, 7.0, 6.0]), "alibi": _seeds([8.0, 7.0, 6.0])}, alibi={"max_steps": 8}
    )
    md = compare(sweep)["budget"]
    assert md.startswith("Budget per run, by variant (not the same for all):")
    assert "\n- model/positional=rope: 6 steps × 512 tokens/step" in md
    assert "\n- model/positional=alibi: 8 steps × 512 tokens/step" in md and "= 4,096 tokens" in md


def test_finetune_baseline_row_and_n1_cell_without_spread(tmp_path):
    """A fine-tuning score present for one of two seeds is n=1 and shown without ±; the majority
    class is the baseline row of its column and a line of the final-metric plot."""
    from bertsmith.train.tools.compare import compare

    sweep = tmp_path / "sweep"
    for i, (pos, seed, acc) in enumerate(
        [("rope", 0, 0.9), ("rope", 1, None), ("alibi", 0, 0.6), ("alibi", 1, 0.62)]
    ):
        _synthetic_run(
            sweep / str(i), [f"model/positional={pos}", f"seed={seed}"], {2: 7.0 + i / 10}, finetune=acc
        )
    result = compare(sweep, "finetune:topic/accuracy")
    rows = {r["variant"]: r for r in result["rows"]}
    rope = rows["model/positional=rope"]
    assert rope["finetune:topic/accuracy_n"] == 1 and rope["finetune:topic/accuracy_std"] is None
    assert rows["model/positional=alibi"]["finetune:topic/accuracy_n"] == 2
    md = (sweep / "summary.md").read_text()
    (line,) = [x for x in md.splitlines() if x.startswith("| model/positional=rope")]
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert "0.900 n=1" in cells and not any("±" in c for c in cells if "0.900" in c)
    cells = [c.strip() for line in md.splitlines() for c in line.split("|")]
    assert any(c.startswith("0.610 ± ") and c.endswith("n=2") for c in cells)
    (base,) = [x for x in md.splitlines() if x.startswith("| *baseline")]
    cells = [c.strip() for c in base.strip("|").split("|")]
    assert (
        cells[0] == "*baseline: unigram loss; the majority class*"
        and cells[6] == "6.500"
        and cells[8] == "0.520"
    )
    assert result["plots"].baseline["final_metric.png"] == [0.52]
    assert "finetune:topic/accuracy: the majority class 0.5200" in md


def _cli_export_hint(tmp_path, variants):
    sweep = _synthetic_grid(tmp_path, variants)
    out = run_main("compare", sweep)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_export_hint_only_for_a_best_variant(tmp_path):
    tied = _cli_export_hint(tmp_path / "tied", {"rope": _seeds([8, 7, 6.0]), "alibi": _seeds([8, 7, 6.01])})
    assert "tied within noise" in tied and "bertsmith export" not in tied
    n1 = _cli_export_hint(tmp_path / "n1", {"rope": [{2: 6.0}], "alibi": [{2: 7.0}]})
    assert "n=1: no verdict" in n1 and "bertsmith export" not in n1
    one = _cli_export_hint(tmp_path / "one", {"rope": _seeds([8, 7, 6.0])})
    assert "nothing to compare" in one and "bertsmith export" not in one
    best = _cli_export_hint(tmp_path / "best", {"rope": _seeds([8, 7, 6.0]), "alibi": _seeds([8, 7, 5.0])})
    assert "**best: model/positional=alibi**" in best
    assert f"bertsmith export {tmp_path / 'best' / 'sweep' / '5'} --to recipe" in best


def test_baselines_that_differ_by_variant_are_drawn_per_variant(tmp_path):
    """Variants on other tokenizers have other unigram losses: one line (and one table value)
    per variant, never one line for all."""
    from bertsmith.train.tools.compare import compare

    sweep = _synthetic_grid(
        tmp_path,
        {"rope": _seeds([8.0, 7.0, 6.0]), "alibi": _seeds([8.0, 7.0, 6.0])},
        alibi={"unigram": 6.7},
    )
    result = compare(sweep)
    b = result["baselines"]["val_loss"]
    assert b.value is None and b.values == {"model/positional=rope": 6.5, "model/positional=alibi": 6.7}
    assert "| 6.500 to 6.700 by variant |" in (sweep / "summary.md").read_text()
    assert sorted(result["plots"].baseline["val_loss.png"]) == [6.5, 6.7]
    assert sorted(result["plots"].baseline["final_metric.png"]) == [6.5, 6.7]


def test_seeds_added_later_in_a_subdirectory_join_their_variant(tmp_path):
    """More seeds run into ``SWEEP/more`` (a second multirun with the same overrides) are read
    with the first ones: numbered directories at any depth, in numeric order."""
    from bertsmith.train.tools.compare import compare, find_runs

    sweep = _synthetic_grid(tmp_path, {"rope": _seeds([8.0, 7.0, 6.0]), "alibi": _seeds([8.0, 7.0, 6.5])})
    for i, (seed, final) in enumerate([(3, 6.1), (4, 5.9)]):
        overrides = ["trainer.val_every=2", "model/positional=rope", f"seed={seed}"]
        _synthetic_run(sweep / "more" / str(i), overrides, {2: 8.0, 4: 7.0, 6: final})
    (sweep / "10").mkdir()  # not a run: ignored, but numbered past 9 for the order
    order = [p.relative_to(sweep).as_posix() for p in find_runs(sweep)]
    assert order == ["0", "1", "2", "3", "4", "5", "more/0", "more/1"]
    rows = {r["variant"]: r for r in compare(sweep)["rows"]}
    assert rows["model/positional=rope"]["runs"] == 5
    assert rows["model/positional=rope"]["val_loss"] == pytest.approx(
        statistics.fmean([6.0, 6.2, 5.8, 6.1, 5.9])
    )
    assert rows["model/positional=alibi"]["runs"] == 3
