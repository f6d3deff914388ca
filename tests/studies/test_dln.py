"""The DLN study end to end on the smoke preset: schema, figures, resume, option validation."""

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from minibn import io, results
from minibn.claims import dln as dln_rules
from minibn.claims import verdicts
from minibn.results import Run
from minibn.studies import common, dln, dln_report

RUN_KEYS = {"variant", "lr", "seed", "steps", "loss", "diverged_at", "ics", "landscape", "moments", "hessian_top",
            "target_singular_values", "wall_s"}
ICS_KEYS = {"steps", "layers", "l2", "cos"}
LANDSCAPE_KEYS = {"steps", "eta", "loss_min", "loss_max", "gradpred_min", "gradpred_max", "beta_eff"}
FIGURES = ["fig3_training_loss.png", "fig3_ics.png", "fig9_landscape_bn.png", "fig10_landscape_lp.png",
           "fig11_gradpred_vs_eta.png", "fig13_activations.png"]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("dln-smoke")
    assert dln.main(["--preset", "smoke", "--out", str(out), "--jobs", "1"]) == 0
    return out


def test_smoke_results_schema(smoke):
    doc = io.read_json(smoke / "results.json")
    assert doc["study"] == "dln" and doc["preset"] == "smoke"
    cfg = doc["config"]
    assert cfg["seeds"] == [0] and cfg["backend"] == "numpy" and "environment" in cfg
    assert cfg["default_variants"] == list(dln.DEFAULT_VARIANTS)  # what the report reads, not the study module
    variants = {r["variant"] for r in doc["runs"].values()}
    assert variants == set(dln.DEFAULT_VARIANTS)
    assert len(doc["runs"]) == len(dln.PRESETS["smoke"]["runs"])
    for name, run in doc["runs"].items():
        assert RUN_KEYS <= set(run), name
        assert run["diverged_at"] is None
        assert name == Run.of(run).name
        # the target's singular values, largest first (the loss-scale claim's rank-k residuals)
        sv = run["target_singular_values"]
        assert len(sv) == dln.PRESETS["smoke"]["width"] and sv == sorted(sv, reverse=True) and sv[-1] > 0
        assert len(run["steps"]) == len(run["loss"]) and run["steps"][0] == 0
        assert ICS_KEYS <= set(run["ics"]) and LANDSCAPE_KEYS <= set(run["landscape"])
        n_points = len(run["ics"]["steps"])
        n_blocks = dln.PRESETS["smoke"]["depth"]
        assert run["ics"]["layers"] == list(range(1, n_blocks + 1))
        assert len(run["ics"]["l2"]) == n_points and all(len(row) == n_blocks for row in run["ics"]["l2"])
        assert len(run["landscape"]["eta"]) == len(dln.PRESETS["smoke"]["eta_multipliers"])
        # the grid is relative to the run's LR
        assert run["landscape"]["eta"][2] == pytest.approx(run["lr"])


def test_no_report_writes_results_only(tmp_path):
    assert dln.main(["--preset", "smoke", "--jobs", "1", "--variants", "l2", "--steps", "3", "--no-report",
                     "--out", str(tmp_path)]) == 0
    assert (tmp_path / "results.json").exists() and not (tmp_path / "report.md").exists()
    assert not list(tmp_path.glob("*.png"))


def test_smoke_writes_figures_report_and_arrays(smoke):
    for name in FIGURES:
        path = smoke / name
        assert path.exists() and path.stat().st_size > 1000, name
    text = (smoke / "report.md").read_text()
    assert text.startswith("# DLN study (smoke preset)\n\n## The paper's claims: verdicts")
    assert "## Claims beside measurements" in text and "## The loss scale, measured" in text
    ids = [r["id"] for r in io.read_json(smoke / "claims.json")]
    assert ids == list(dln_rules.RULES)
    import numpy as np

    arrays = np.load(smoke / "results.npz")
    doc = io.read_json(smoke / "results.json")
    for name, run in doc["runs"].items():
        points = len(run["landscape"]["steps"])
        assert arrays[f"{name}/grad_diff"].shape == (points, len(run["landscape"]["eta"]))
        for block in map(str, dln.PRESETS["smoke"]["moment_layers"]):
            assert arrays[f"{name}/moments/{block}/samples"].shape == (len(run["moments"]["steps"]),
                                                                       dln.PRESETS["smoke"]["moment_samples"])
            assert "samples" not in run["moments"]["blocks"][block]  # kept out of results.json


def test_added_normalizers_run_beside_bn_in_figures_and_report(tmp_path, monkeypatch):
    from minibn import report

    added = ("layernorm", "groupnorm", "weightnorm")
    assert dln.main(["--preset", "smoke", "--out", str(tmp_path), "--jobs", "1", "--steps", "10", "--no-report",
                     "--variants", "standard", "batchnorm", *added]) == 0
    doc = io.read_json(tmp_path / "results.json")
    # the preset's standard and BN runs at both LRs; the added normalizers at the first LR
    assert sorted(doc["runs"]) == sorted(["standard_lr0.0001_seed0", "batchnorm_lr0.0001_seed0",
                                          "standard_lr1e-05_seed0", "batchnorm_lr1e-05_seed0"] +
                                         [f"{v}_lr0.0001_seed0" for v in added])
    drawn = {}
    monkeypatch.setattr(report, "save", lambda fig, path: drawn.__setitem__(os.path.basename(path)[:-4], fig))
    back, arrays = results.read(tmp_path)
    assert back == doc
    dln_report.write(str(tmp_path), doc, arrays)
    for figure in ("fig3_ics", "fig9_landscape_bn"):
        legend = {t.get_text() for ax in drawn[figure].axes if ax.get_legend() for t in ax.get_legend().get_texts()}
        assert {report.label(v) for v in ("standard", "batchnorm", *added)} <= legend, (figure, legend)
    assert len(drawn["fig11_gradpred_vs_eta"].axes) == 5
    # the claims about BN stay about BN; each normalizer judged by the same rules in BN's place
    bn_only = {**doc, "runs": {n: r for n, r in doc["runs"].items() if r["variant"] in ("standard", "batchnorm")}}
    assert io.read_json(tmp_path / "claims.json") == io.jsonable(dln_rules.judge(bn_only))
    carried = io.read_json(tmp_path / "carry_over.json")
    assert sorted(carried) == sorted(added)
    text = (tmp_path / "report.md").read_text()
    section = text[text.index("## Other normalizers in BN's place"):text.index("## Runs")]
    for v in added:
        assert [r["id"] for r in carried[v]] == [c for c in verdicts.BN_VS_STANDARD if c.startswith("dln.")]
        for r in carried[v]:
            assert f"| `{r['id']}` | {report.label(v)} |" in section
            # judged at the one LR it ran: no value of the other LR
            assert not any("1e-05" in k for s in r["seeds"] for k in s["values"]), r


def test_interrupted_study_resumes_to_the_uninterrupted_result(tmp_path):
    """Ctrl-C (SIGINT to the process group) a real two-worker study after its first checkpoint,
    then --resume it: the result equals an uninterrupted run's."""
    args = ["--preset", "smoke", "--variants", "batchnorm", "l2", "--lr", "1e-4", "--steps", "200", "--no-report"]
    name = Run("batchnorm", 1e-4, 0).name
    killed = tmp_path / "killed"
    checkpoint = killed / "runs" / name / "checkpoint.npz"
    proc = subprocess.Popen([sys.executable, "-m", "minibn.studies.dln", "--out", str(killed), "--jobs", "2"] + args,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not checkpoint.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, "the study finished before it could be interrupted"
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130 and "--resume" in err
    assert checkpoint.exists() and not (killed / "runs" / name / "result.json").exists()
    assert dln.main(["--out", str(killed), "--jobs", "1", "--resume"] + args) == 0
    whole = tmp_path / "whole"
    assert dln.main(["--out", str(whole), "--jobs", "1"] + args) == 0
    resumed = io.read_json(killed / "results.json")["runs"][name]
    uninterrupted = io.read_json(whole / "results.json")["runs"][name]
    for key in ("steps", "loss", "ics", "landscape", "moments", "hessian_top"):
        assert resumed[key] == uninterrupted[key], key


def test_resume_refuses_changed_settings(tmp_path, capsys):
    args = ["--preset", "smoke", "--jobs", "1", "--variants", "standard", "--out", str(tmp_path), "--no-report"]
    assert dln.main(args + ["--steps", "5"]) == 0
    assert dln.main(args + ["--steps", "6", "--resume"]) == 2
    assert "holds a dln study of other settings (steps: 5 there, 6 here)" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--variants", "bogus"], "unknown variant"),
    (["--lr", "-1"], "--lr must be positive"),
    (["--lr", "0"], "--lr must be positive"),
    (["--steps", "0"], "--steps must be a positive"),
    (["--seeds", "0"], "--seeds must be"),
    (["--backend", "tpu"], "unknown backend"),
])
def test_bad_options_fail_before_any_work(argv, message, tmp_path, capsys):
    out = tmp_path / "o"
    with pytest.raises(SystemExit) as err:
        dln.main(["--preset", "smoke", "--out", str(out)] + argv)
    assert err.value.code == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_unwritable_out_is_rejected(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(SystemExit) as err:
        dln.main(["--preset", "smoke", "--out", str(blocker / "sub")])
    assert err.value.code == 2
    assert "not a writable folder" in capsys.readouterr().err


def test_cupy_without_gpu_is_a_clear_error(tmp_path, capsys):
    from minibn import backend

    if backend.is_available("cupy"):
        pytest.skip("CuPy and a GPU are available here")
    with pytest.raises(SystemExit) as err:
        dln.main(["--preset", "smoke", "--out", str(tmp_path / "o"), "--backend", "cupy"])
    assert err.value.code == 2
    assert "minibn[gpu]" in capsys.readouterr().err


def test_help_explains_every_option():
    out = subprocess.run([sys.executable, "-m", "minibn.studies.dln", "--help"], capture_output=True, text=True,
                         check=True).stdout
    for option in ("--backend", "--preset", "--out", "--seed", "--seeds", "--resume", "--variants", "--lr",
                   "--steps", "--jobs", "--no-report"):
        assert option in out


def test_report_command_rebuilds_the_report_from_the_folder_alone(smoke, tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(smoke, folder)
    written = (folder / "report.md").read_text()
    for name in ["report.md"] + FIGURES:
        (folder / name).unlink()
    (folder / "notes.md").write_text("## A note by hand\n")
    subprocess.run([sys.executable, "-m", "minibn.studies.dln_report", str(folder)], check=True, capture_output=True)
    assert (folder / "report.md").read_text() == written.rstrip("\n") + "\n\n## A note by hand\n"
    assert all((folder / name).exists() for name in FIGURES)
    # without results.npz the figures drawn from it are kept as they are, and the report is the same
    (folder / "results.npz").unlink()
    (folder / "fig13_activations.png").write_bytes(b"kept")
    assert dln_report.main([str(folder)]) == 0
    assert (folder / "fig13_activations.png").read_bytes() == b"kept"
    assert (folder / "report.md").read_text().startswith(written.rstrip("\n"))


def test_report_command_refuses_a_folder_without_results(tmp_path, capsys):
    with pytest.raises(SystemExit) as err:
        dln_report.main([str(tmp_path)])
    assert err.value.code == 2 and "has no results.json" in capsys.readouterr().err


def test_run_returns_what_results_json_holds(tmp_path):
    doc = dln.run(out=str(tmp_path), preset="smoke", variants=["l2", "standard_noisy"], steps=3, report=False)
    assert doc == io.read_json(tmp_path / "results.json")
    assert sorted(doc["runs"]) == [Run("l2", 1e-4, 0).name, Run("standard_noisy", 1e-4, 0).name]
    assert doc["config"]["command"].startswith("minibn.studies.dln.run(")
    with pytest.raises(ValueError, match="unknown variant"):
        dln.run(out=str(tmp_path / "other"), preset="smoke", variants=["bogus"])


def test_runs_start_seed_by_seed_the_costliest_first():
    opts = common.options(dln, {"preset": "smoke"})
    cfg = dln.build_config(opts)
    seconds = dln.step_seconds(cfg, ["standard", "batchnorm", "noisy"], steps=2)
    assert set(seconds) == {"standard", "batchnorm", "noisy"} and all(t > 0 for t in seconds.values())
    tasks = [common.task(opts, cfg, Run(v, lr, seed).name, run=Run(v, lr, seed)) for seed in (1, 0) for v, lr in
             [("standard", 1e-6), ("batchnorm", 1e-6), ("noisy", 1e-6), ("batchnorm", 1e-7)]]
    order = dln.schedule(tasks, {"standard": 1.0, "batchnorm": 5.0, "noisy": 11.0})
    assert [(t["run"].seed, t["run"].variant) for t in order] == [
        (0, "noisy"), (0, "batchnorm"), (0, "batchnorm"), (0, "standard"),
        (1, "noisy"), (1, "batchnorm"), (1, "batchnorm"), (1, "standard")]
