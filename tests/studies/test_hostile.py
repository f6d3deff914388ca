"""What a hostile but realistic user does to the studies, each case once: diverging and exploding
runs, damaged files in a resume folder, failures inside a run, bad options. Every one ends in a
report or in a short error naming the file and the way on, never in a traceback."""

import errno
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from minibn import io, report, results, train
from minibn.studies import common, dln, dln_report, theory, vgg
from tests.data.test_cifar10 import make_folder

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def study(module, *argv):
    """``python -m minibn.studies.MODULE ARGV`` in a real process: (exit status, stdout, stderr)."""
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", f"minibn.studies.{module}", *map(str, argv)], capture_output=True,
                          text=True, cwd=ROOT, env=env)
    return proc.returncode, proc.stdout, proc.stderr


def assert_short_error(stderr, *needles):
    assert "Traceback" not in stderr and len(stderr.strip().splitlines()) <= 6, stderr
    for needle in needles:
        assert str(needle) in stderr, (needle, stderr)


# --- reports survive divergence -----------------------------------------------------------

@pytest.fixture(scope="module")
def dln_diverged(tmp_path_factory):
    out = tmp_path_factory.mktemp("dln-lr1")
    rc, _, err = study("dln", "--preset", "smoke", "--lr", "1", "--out", out, "--jobs", "1")
    assert rc == 0, err
    return out


def test_dln_at_lr_1_finishes_with_a_report_marking_the_divergence(dln_diverged):
    runs = io.read_json(dln_diverged / "results.json")["runs"]
    assert all(r["diverged_at"] is not None for r in runs.values())  # every variant explodes at LR 1
    text = (dln_diverged / "report.md").read_text()
    row = next(line for line in text.splitlines() if line.startswith("| standard_lr1_seed0 "))
    assert "| diverged |" in row
    assert os.path.getsize(dln_diverged / "fig3_training_loss.png") > 1000
    rc, _, err = study("dln_report", dln_diverged)
    assert rc == 0, err


@pytest.mark.parametrize("damage", ["huge", "empty"])
def test_dln_report_draws_huge_and_empty_series(dln_diverged, tmp_path, damage):
    doc, arrays = results.read(dln_diverged)
    for run in doc["runs"].values():
        if damage == "huge":  # finite, past what a log axis can draw
            run["loss"] = [1e300 if v is None else v * 1e250 for v in run["loss"]]
            run["landscape"]["loss_max"] = [1e308 for _ in run["landscape"]["loss_max"]]
        else:
            run["steps"], run["loss"] = [], []
            run["landscape"] = {**run["landscape"], **{k: [] for k in ("steps", "loss_min", "loss_max", "gradpred_min",
                                                                    "gradpred_max", "beta_eff", "nonfinite")}}
    dln_report.fig_training_loss(doc, tmp_path / "loss.png")
    dln_report.fig_ics(doc, tmp_path / "ics.png")
    dln_report.fig_landscape(doc, tmp_path / "landscape.png", ("standard", "batchnorm"))
    dln_report.fig_gradpred_vs_eta(doc, arrays, tmp_path / "gradpred.png")
    dln_report.fig_activations(doc, arrays, tmp_path / "activations.png")
    assert all(os.path.getsize(f) > 1000 for f in tmp_path.glob("*.png")) and len(list(tmp_path.glob("*.png"))) == 5


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("cifar"), rows=20)


def test_vgg_with_exploding_finite_losses_finishes_with_a_report(cifar, tmp_path):
    """Losses up to 1e18, still finite: the runs are marked diverged by the study's bound."""
    rc, _, err = study("vgg", "--preset", "smoke", "--data-dir", cifar, "--out", tmp_path, "--jobs", "1",
                       "--lr", "100", "--lr-high", "1000")
    assert rc == 0, err
    runs = io.read_json(tmp_path / "results.json")["runs"]
    exploded = runs["standard_lr1000_seed0"]
    assert exploded["diverged_at"] is not None and exploded["loss"][-1] > vgg.DIVERGED_LOSS
    assert "diverged at" in (tmp_path / "report.md").read_text()
    assert os.path.getsize(tmp_path / "fig1_activations.png") > 1000


def test_vgg_landscape_of_a_run_whose_every_probe_is_non_finite(cifar, tmp_path):
    doc = vgg.run(out=str(tmp_path), preset="smoke", experiments=["E4"], data_dir=cifar, steps=2, lr=1e20)
    assert all(v is None for run in doc["runs"].values() for v in run["landscape"]["loss_max"])
    assert os.path.getsize(tmp_path / "fig4_landscape.png") > 1000


def test_figure_helpers_take_every_value():
    assert np.isnan(report.drawable([None, float("inf"), -1.0], log=True)).all()
    assert report.drawable([1e300, -1e300]).tolist() == [report.DRAW_LIMIT, -report.DRAW_LIMIT]
    for values in ([1e18, 1e18 + 1], [], [5.0], [0.0, 1e300, float("nan")]):
        edges = report.histogram_edges(values, 50)
        assert len(np.unique(edges)) == 51 and np.isfinite(edges).all(), values
    assert report.last_drawn([0, 1, 2], [1.0, 2.0, None]) == (1, 2.0)
    assert report.last_drawn([0], [None]) is None


# --- damaged files in a resume folder -----------------------------------------------------

@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished DLN study of two runs, to damage copies of."""
    out = tmp_path_factory.mktemp("dln-two")
    argv = ["--preset", "smoke", "--variants", "standard", "batchnorm", "--lr", "1e-4", "--jobs", "2"]
    rc, _, err = study("dln", *argv, "--out", out)
    assert rc == 0, err
    return out, argv


def _truncate(path, keep=100):
    with open(path, "rb") as f:
        head = f.read(keep)
    with open(path, "wb") as f:
        f.write(head)


def _random_bytes(path):
    with open(path, "wb") as f:
        f.write(np.random.default_rng(0).bytes(3000))


@pytest.mark.parametrize("damage, file", [
    ("truncated", "runs/standard_lr0.0001_seed0/checkpoint.npz"),
    ("random bytes", "runs/standard_lr0.0001_seed0/checkpoint.npz"),
    ("truncated", "runs/standard_lr0.0001_seed0/result.json"),
])
def test_a_damaged_run_file_is_named_and_the_other_runs_go_on(finished, tmp_path, damage, file):
    source, argv = finished
    out = tmp_path / "study"
    shutil.copytree(source, out)
    run_folder = out / "runs" / "standard_lr0.0001_seed0"
    if file.endswith(".npz"):
        (run_folder / "result.json").unlink()  # interrupted: resumes from the checkpoint
    (_truncate if damage == "truncated" else _random_bytes)(out / file)
    other = (out / "runs" / "batchnorm_lr0.0001_seed0" / "result.json").read_text()
    rc, _, err = study("dln", *argv, "--out", out, "--resume")
    assert rc == 1
    assert_short_error(err, out / file, "is damaged", f"delete {run_folder}", "--resume", out / "errors.log")
    assert "Traceback" in (out / "errors.log").read_text()
    assert (out / "runs" / "batchnorm_lr0.0001_seed0" / "result.json").read_text() == other
    if file.endswith(".npz") and damage == "truncated":  # once: doing what the message says works
        shutil.rmtree(run_folder)
        rc, _, err = study("dln", *argv, "--out", out, "--resume")
        assert rc == 0, err


def test_damaged_config_and_results_are_named(finished, tmp_path):
    source, argv = finished
    out = tmp_path / "study"
    shutil.copytree(source, out)
    _truncate(out / "results.json")
    rc, _, err = study("dln_report", out)
    assert rc == 1
    assert_short_error(err, out / "results.json", "is damaged", "--resume")
    _truncate(out / "config.json", keep=30)
    rc, _, err = study("dln", *argv, "--out", out, "--resume")
    assert rc == 2 or rc == 1
    assert_short_error(err, out / "config.json", "is damaged", "new --out")


def test_checkpoint_without_its_records_is_damaged(tmp_path):
    path = tmp_path / "checkpoint.npz"
    train.save_checkpoint(path, {"format": train.FORMAT, "step": 3})
    model = dln.models.dln(2, 2, rng=0)
    with pytest.raises(io.DamagedFile, match=f"checkpoint {path} is damaged .*lacks"):
        train.train(model, dln.loss_fn, train.FullBatch(np.zeros((4, 2)), np.zeros((4, 2))), dln.SGD(model, 0.1), 5,
                    checkpoint=path, resume=True)


# --- failures inside a run ----------------------------------------------------------------

SMALL = ["--preset", "smoke", "--variants", "standard", "--lr", "1e-4", "--steps", "10", "--jobs", "1"]


def test_an_unwritable_run_folder_is_named_with_the_way_on(tmp_path, capsys):
    """A path whose parent is a file cannot be written, even by root (whom chmod does not stop)."""
    out = tmp_path / "study"
    (out / "runs").mkdir(parents=True)
    (out / "runs" / "standard_lr0.0001_seed0").write_text("a file where the run's folder goes")
    assert dln.main(SMALL + ["--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert_short_error(err, "standard_lr0.0001_seed0", os.path.join(out, "runs", "standard_lr0.0001_seed0"),
                       "--resume", out / "errors.log")


def test_a_full_disk_is_named_with_the_way_on(tmp_path, capsys, monkeypatch):
    """os.fsync of a checkpoint fails as a full disk does (ENOSPC, which names no file)."""
    real_fsync = os.fsync

    def full_disk(fd):
        if "checkpoint" in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fsync(fd)

    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("needs /proc to tell a checkpoint's file descriptor")
    monkeypatch.setattr(os, "fsync", full_disk)
    out = tmp_path / "study"
    assert dln.main(SMALL + ["--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert_short_error(err, "No space left on device", os.path.join(out, "runs", "standard_lr0.0001_seed0",
                                                                     "checkpoint.npz"), "--resume")


def test_a_corrupted_cifar_file_is_reported_by_its_message(cifar, tmp_path, capsys):
    data = tmp_path / "cifar"
    shutil.copytree(cifar, data)
    _truncate(data / "data_batch_1", keep=500)
    assert vgg.main(["--preset", "smoke", "--experiments", "E4", "--steps", "1", "--jobs", "1", "--data-dir",
                     str(data), "--out", str(tmp_path / "out")]) == 1
    assert_short_error(capsys.readouterr().err, "data_batch_1", "--resume")


# --- every option checked first -------------------------------------------------------------

@pytest.mark.parametrize("main, argv, message", [
    (dln.main, ["--preset", "smoke", "--seed", "-1"], "--seed must be an integer >= 0"),
    (vgg.main, ["--preset", "smoke", "--seed", "-1"], "--seed must be an integer >= 0"),
    (theory.main, ["--seed", "-1"], "--seed must be an integer >= 0"),
    (theory.main, ["--steps", "-1"], "--steps must be an integer >= 0"),
    (theory.main, ["--instances", "-5"], "--instances must be an integer >= 0"),
    (theory.main, ["--every", "0"], "--every must be a positive integer"),
    (theory.main, ["--backend", "nonsense"], "--backend nonsense"),
])
def test_bad_options_exit_2_and_create_nothing(cifar, tmp_path, capsys, main, argv, message):
    out = tmp_path / "out"
    extra = ["--data-dir", cifar] if main is vgg.main else []
    with pytest.raises(SystemExit) as stop:
        main(argv + extra + ["--out", str(out)])
    assert stop.value.code == 2 and message in capsys.readouterr().err
    assert not out.exists()


def test_theory_out_that_is_a_file_is_refused_before_any_work(tmp_path, capsys):
    target = tmp_path / "a-file"
    target.write_text("")
    with pytest.raises(SystemExit) as stop:
        theory.main(["--out", str(target)])
    assert stop.value.code == 2 and "is not a writable folder" in capsys.readouterr().err


def test_repeated_variants_and_learning_rates_are_merged(tmp_path):
    def checked(study, argv):  # the command line's options, parsed and checked as main() does, not run
        return common.checked(study, vars(common.parser(study).parse_args(argv)))

    opts = checked(dln, ["--preset", "smoke", "--variants", "batchnorm", "batchnorm", "standard",
                         "--lr", "1e-3", "0.001", "--jobs", "1", "--out", str(tmp_path)])
    assert opts["variants"] == ["batchnorm", "standard"] and opts["lr"] == [1e-3]
    assert dln.build_config(opts)["runs"] == [["batchnorm", 1e-3], ["standard", 1e-3]]
    opts = checked(theory, ["--networks", "dln", "dln", "mlp", "--out", str(tmp_path)])
    assert opts["networks"] == ["dln", "mlp"]
    # from Python alike
    opts = common.checked(dln, common.options(dln, {"preset": "smoke", "variants": ["l2", "l2"], "lr": [1e-3, 0.001],
                                                    "out": str(tmp_path)}))
    assert opts["variants"] == ["l2"] and opts["lr"] == [1e-3]


def test_results_json_of_a_damaged_folder_raises_naming_it(tmp_path):
    (tmp_path / "results.json").write_text(json.dumps({"runs": {}})[:-3])
    with pytest.raises(io.DamagedFile, match="results.json is damaged"):
        results.read(tmp_path)
