"""The VGG study end to end on a tiny synthetic CIFAR folder: schema, figures, report, a
diverging configuration recorded while the study carries on, resume, option validation."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from minibn import backend, io, models, report, results
from minibn.claims import verdicts
from minibn.claims import vgg as vgg_rules
from minibn.measure import moments
from minibn.studies import vgg, vgg_report
from tests.data.test_cifar10 import make_folder

RUN_KEYS = {"variant", "lr", "steps", "loss", "diverged_at", "ics", "landscape", "train_acc", "test_acc",
            "eval_steps", "moments", "wall_s"}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("cifar"), rows=20)


@pytest.fixture(scope="module")
def smoke(data_dir, tmp_path_factory):
    """The whole smoke preset, with E1's large LR so large that the standard VGG diverges."""
    out = str(tmp_path_factory.mktemp("vgg-smoke"))
    argv = ["--preset", "smoke", "--data-dir", data_dir, "--out", out, "--jobs", "1", "--lr-high", "1e6"]
    assert vgg.main(argv) == 0
    return out, argv


def test_smoke_results_schema_figures_and_report(smoke):
    out, _ = smoke
    doc = io.read_json(os.path.join(out, "results.json"))
    assert doc["study"] == "vgg" and doc["preset"] == "smoke"
    assert doc["experiments"] == ["E1", "E2", "E3", "E4", "E5"]
    assert "command" in doc["config"] and "environment" in doc["config"]
    # 11 distinct configurations serve the five experiments
    assert sorted(doc["runs"]) == sorted(f"{name}_seed0" for name in [
        "standard_lr0.1", "batchnorm_lr0.1", "standard_lr1e+06", "batchnorm_lr1e+06", "noisy_lr0.1",
        "standard_noisy_lr0.1", "standard_lr0.01", "batchnorm_lr0.01", "l1_lr0.1", "l2_lr0.1", "linf_lr0.1"])
    for name, run in doc["runs"].items():
        assert RUN_KEYS <= set(run), name
        assert len(run["train_acc"]) == len(run["test_acc"]) == len(run["eval_steps"])
        assert "samples" not in next(iter(run["moments"]["layers"].values()))  # moved to results.npz
    bn = doc["runs"]["batchnorm_lr0.1_seed0"]
    assert bn["diverged_at"] is None and bn["steps"] == list(range(6)) and bn["eval_steps"] == [0, 3, 6]
    assert len(bn["ics"]["l2"][0]) == len(bn["ics"]["layers"]) == 3  # two conv layers and the classifier
    assert bn["landscape"]["eta"] == pytest.approx([0.05, 0.1, 0.2, 0.4])
    assert doc["runs"]["standard_lr0.01_seed0"]["landscape"] is None and doc["runs"]["l2_lr0.1_seed0"]["ics"] is None
    with np.load(os.path.join(out, "results.npz")) as arrays:  # array names as they are, "/" included
        assert arrays["noisy_lr0.1_seed0/moments/2"].shape == (3, 32)  # 3 measurements of 32 samples
    assert results.read(out)[1]["noisy_lr0.1_seed0/moments/2"].shape == (3, 32)
    for fig in ("fig1_accuracy", "fig2_noisy_activations", "fig3_ics", "fig4_landscape", "fig5_lp_training",
                "fig6_lp_landscape", "fig8_moments", "fig11_gradpred_vs_eta", "fig12_lp_activations"):
        assert os.path.getsize(os.path.join(out, f"{fig}.png")) > 1000, fig
    text = open(os.path.join(out, "report.md")).read()
    assert text.startswith("# VGG / CIFAR-10 study, preset `smoke`\n\n## The paper's claims: verdicts")
    stored = io.read_json(os.path.join(out, "claims.json"))
    assert [r["id"] for r in stored] == list(vgg_rules.RULES)  # every §4a VGG claim of E1..E5
    for r in stored:
        assert f"`{r['id']}`" in text
        assert r["verdict"].split(":")[0] in ("reproduced", "partly", "not reproduced", "opposite", "not judged"), r


@pytest.fixture(scope="module")
def two_seeds(smoke, tmp_path_factory):
    """The smoke study resumed with a second seed (seed 0 read back; the standard net diverges on both)."""
    out, argv = smoke
    folder = str(tmp_path_factory.mktemp("vgg-two-seeds") / "study")
    shutil.copytree(out, folder)
    assert vgg.main([a if a != out else folder for a in argv] + ["--seeds", "2", "--resume"]) == 0
    return folder


def bands_drawn(folder, doc, monkeypatch):
    """``{figure: number of filled areas}`` the report draws for ``doc`` (fill_between bands, filled steps)."""
    drawn = {}
    monkeypatch.setattr(report, "save", lambda fig, path: drawn.__setitem__(os.path.basename(path)[:-4], fig))
    with np.load(os.path.join(folder, "results.npz")) as stored:
        arrays = {key: stored[key] for key in stored.files}
    vgg_report.write(str(folder), doc, arrays)
    counts = {name: sum(len(ax.collections) + sum(p.get_fill() for p in ax.patches) for ax in fig.axes)
              for name, fig in drawn.items()}
    for fig in drawn.values():
        report.close(fig)
    return counts, drawn


def test_two_seeds_draw_the_median_with_a_min_max_band_in_every_figure(two_seeds, tmp_path, monkeypatch):
    doc = io.read_json(os.path.join(two_seeds, "results.json"))
    assert doc["config"]["seeds"] == [0, 1] and len(doc["runs"]) == 22
    assert "seeds 0, 1" in open(os.path.join(two_seeds, "report.md")).read()
    for fig in vgg_report.FIGURES:
        assert os.path.getsize(os.path.join(two_seeds, f"{fig}.png")) > 1000, fig
    # the same figures drawn from seed 0 alone: every figure of two seeds draws more filled areas (the bands)
    one = {**doc, "config": {**doc["config"], "seeds": [0]},
           "runs": {name: run for name, run in doc["runs"].items() if run["seed"] == 0}}
    shutil.copy(os.path.join(two_seeds, "results.npz"), tmp_path / "results.npz")
    with monkeypatch.context() as m:
        single, _ = bands_drawn(tmp_path, one, m)
    with monkeypatch.context() as m:
        double, drawn = bands_drawn(tmp_path, doc, m)
    assert sorted(single) == sorted(double) == sorted(vgg_report.FIGURES)
    for name in vgg_report.FIGURES:
        assert double[name] > single[name], (name, single[name], double[name])
    # E1's training accuracy of BN: the line is the median of the two seeds, the band their range
    seeds = [doc["runs"][f"batchnorm_lr0.1_seed{s}"]["train_acc"] for s in (0, 1)]
    assert seeds[0] != seeds[1]
    ax = drawn["fig1_accuracy"].axes[0]
    line = next(line for line in ax.get_lines() if line.get_label() == "BatchNorm, LR 0.1")
    assert np.allclose(line.get_ydata(), np.median(seeds, axis=0))
    # each curve drew one line and one band, in the same order
    band = ax.collections[ax.get_lines().index(line)]
    edges = band.get_paths()[0].vertices[:, 1]
    assert np.isclose(edges.min(), np.min(seeds)) and np.isclose(edges.max(), np.max(seeds))
    # a seed that diverged is marked where its curve ends, its step in the legend
    legend = [text.get_text() for text in drawn["fig1_accuracy"].axes[0].get_legend().get_texts()]
    assert any("diverged: seed 0 at step" in t and "seed 1 at step" in t for t in legend), legend


def test_report_command_rebuilds_the_report_from_the_folder_alone(smoke, tmp_path):
    out, _ = smoke
    folder = tmp_path / "copy"
    shutil.copytree(out, folder, ignore=shutil.ignore_patterns("runs"))
    written = (folder / "report.md").read_text()
    figures = sorted(p.name for p in folder.glob("*.png"))
    for name in figures + ["report.md"]:
        (folder / name).unlink()
    subprocess.run([sys.executable, "-m", "minibn.studies.vgg_report", str(folder)], check=True, capture_output=True)
    assert (folder / "report.md").read_text() == written
    assert sorted(p.name for p in folder.glob("*.png")) == figures


def test_run_returns_what_results_json_holds(data_dir, tmp_path):
    doc = vgg.run(out=str(tmp_path), preset="smoke", experiments=["E4"], data_dir=data_dir, steps=2)
    assert doc == io.read_json(os.path.join(tmp_path, "results.json"))
    assert sorted(doc["runs"]) == ["batchnorm_lr0.1_seed0", "standard_lr0.1_seed0"] and doc["experiments"] == ["E4"]
    with pytest.raises(ValueError, match="--only"):
        vgg.run(out=str(tmp_path / "other"), preset="smoke", experiments=["E4"], data_dir=data_dir,
                only=["l1_lr0.1_seed0"])


def test_seeds_repeat_every_run_named_by_seed_and_a_resume_may_add_seeds(data_dir, tmp_path):
    out = str(tmp_path / "seeds")
    argv = ["--preset", "smoke", "--data-dir", data_dir, "--out", out, "--jobs", "1", "--experiments", "E4",
            "--steps", "2", "--seed", "3"]
    assert vgg.main(argv) == 0
    first = io.read_json(os.path.join(out, "results.json"))
    assert sorted(first["runs"]) == ["batchnorm_lr0.1_seed3", "standard_lr0.1_seed3"]
    assert first["config"]["seeds"] == [3]
    assert vgg.main(argv + ["--seeds", "2", "--resume"]) == 0
    doc = io.read_json(os.path.join(out, "results.json"))
    assert doc["config"]["seeds"] == [3, 4]
    assert sorted(doc["runs"]) == ["batchnorm_lr0.1_seed3", "batchnorm_lr0.1_seed4",
                                   "standard_lr0.1_seed3", "standard_lr0.1_seed4"]
    assert {name: run["seed"] for name, run in doc["runs"].items()} == {
        "batchnorm_lr0.1_seed3": 3, "batchnorm_lr0.1_seed4": 4, "standard_lr0.1_seed3": 3, "standard_lr0.1_seed4": 4}
    # seed 3 was read back, not retrained; seed 4 starts from other weights and batches
    assert doc["runs"]["standard_lr0.1_seed3"] == first["runs"]["standard_lr0.1_seed3"]
    assert doc["runs"]["standard_lr0.1_seed4"]["loss"] != doc["runs"]["standard_lr0.1_seed3"]["loss"]
    # a single-seed study of seed 4 trains exactly what the second seed of this one did
    alone = vgg.run(out=str(tmp_path / "alone"), preset="smoke", experiments=["E4"], data_dir=data_dir, steps=2,
                    seed=4)
    assert alone["runs"]["standard_lr0.1_seed4"]["loss"] == doc["runs"]["standard_lr0.1_seed4"]["loss"]
    assert "seeds 3, 4" in open(os.path.join(out, "report.md")).read()


def test_report_of_a_folder_kept_without_its_arrays_leaves_their_figures(smoke, tmp_path):
    """results.npz is large: a folder may keep results.json and the figures without it."""
    out, _ = smoke
    folder = tmp_path / "slim"
    shutil.copytree(out, folder, ignore=shutil.ignore_patterns("runs", "results.npz"))
    kept = {f: (folder / f"{f}.png").read_bytes() for f in ("fig1_activations", "fig2_noisy_activations")}
    proc = subprocess.run([sys.executable, "-m", "minibn.studies.vgg_report", str(folder)], capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr
    assert "has no results.npz: fig1_activations.png is left as it is" in proc.stdout
    assert all((folder / f"{f}.png").read_bytes() == data for f, data in kept.items())
    assert "![fig1_activations](fig1_activations.png)" in (folder / "report.md").read_text()
    shape = next(r for r in io.read_json(folder / "claims.json") if r["id"] == "vgg.e5.lp_not_gaussian")
    assert shape["verdict"] == "not judged: no activation samples (results.npz)"


def test_report_reads_a_study_made_before_seeds(smoke, tmp_path):
    """Studies committed before --seeds name runs without the seed and record one config "seed"."""
    out, _ = smoke
    folder = tmp_path / "old"
    shutil.copytree(out, folder, ignore=shutil.ignore_patterns("runs", "*.png", "report.md"))
    doc = io.read_json(folder / "results.json")
    doc["config"]["seed"] = doc["config"].pop("seeds")[0]
    doc["runs"] = {name.replace("_seed0", ""): run for name, run in doc["runs"].items()}
    io.write_json(folder / "results.json", doc)
    with np.load(folder / "results.npz") as stored:  # and named its arrays with "__" for "/"
        renamed = {key.replace("_seed0", "").replace("/", results.OLD_NPZ_SEP): stored[key] for key in stored.files}
    assert "standard_lr0.1__moments__1" in renamed
    np.savez(folder / "results.npz", **renamed)
    subprocess.run([sys.executable, "-m", "minibn.studies.vgg_report", str(folder)], check=True, capture_output=True)
    text = (folder / "report.md").read_text()
    assert "seed 0." in text and "standard_lr0.1_seed0 " in text   # read back under today's names
    verdicts = [r["verdict"] for r in io.read_json(folder / "claims.json")]
    assert verdicts and not any(v.startswith("not judged: no ") for v in verdicts)
    assert io.read_json(folder / "claims.json") == io.read_json(os.path.join(out, "claims.json"))


def test_diverging_configuration_is_recorded_and_the_study_carries_on(smoke):
    out, _ = smoke
    runs = io.read_json(os.path.join(out, "results.json"))["runs"]
    diverged = runs["standard_lr1e+06_seed0"]
    # diverged: its last loss is non-finite (None) or above the study's bound, and training stopped there
    assert diverged["diverged_at"] == diverged["steps"][-1]
    assert diverged["loss"][-1] is None or diverged["loss"][-1] > vgg.DIVERGED_LOSS
    assert all(loss is not None and loss <= vgg.DIVERGED_LOSS for loss in diverged["loss"][:-1])
    assert all(r["diverged_at"] is None for n, r in runs.items() if "1e+06" not in n)
    assert "diverged at step" in open(os.path.join(out, "report.md")).read()


def test_resume_keeps_finished_runs_and_refuses_other_settings(smoke, data_dir, capsys):
    out, argv = smoke
    marker = os.path.join(out, "runs", "standard_lr0.1_seed0", "result.json")
    run = io.read_json(marker)
    run["wall_s"] = 12345.0  # a finished run must be reused, not retrained
    io.write_json(marker, run)
    assert vgg.main(argv + ["--resume", "--experiments", "E4"]) == 0
    doc = io.read_json(os.path.join(out, "results.json"))
    assert sorted(doc["runs"]) == ["batchnorm_lr0.1_seed0", "standard_lr0.1_seed0"]
    assert doc["runs"]["standard_lr0.1_seed0"]["wall_s"] == 12345.0
    assert vgg.main(argv + ["--resume", "--steps", "7"]) == 2
    assert "holds a vgg study of other settings (steps: 6 there, 7 here)" in capsys.readouterr().err


@pytest.mark.parametrize("extra,message", [
    (["--experiments", "E1,E9"], "unknown \\['E9'\\]"),
    (["--lr", "-0.1"], "--lr must be positive"),
    (["--lr-low", "nan"], "--lr-low must be positive"),
    (["--steps", "0"], "--steps must be a positive integer"),
    (["--jobs", "0"], "--jobs must be an integer >= 1"),
    (["--backend", "tpu"], "unknown backend 'tpu'"),
    (["--preset", "huge"], "invalid choice: 'huge'"),
    (["--only", "batchnorm_lr0.1_seed0,nope_lr1"], "--only: \\['nope_lr1'\\] not in the plan"),
    (["--seeds", "0"], "--seeds must be a positive integer"),
    (["--variants", "layernorm", "no_such_norm"], "unknown variant\\(s\\) \\['no_such_norm'\\]"),  # not registered
])
def test_bad_options_fail_before_any_work(data_dir, tmp_path, capsys, extra, message):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as err:
        vgg.main(["--preset", "smoke", "--data-dir", data_dir, "--out", str(out)] + extra)
    assert err.value.code == 2
    assert __import__("re").search(message, capsys.readouterr().err)
    assert not (out / "runs").exists()


def test_missing_data_fails_with_where_to_put_it(tmp_path, capsys):
    with pytest.raises(SystemExit):
        vgg.main(["--preset", "smoke", "--data-dir", str(tmp_path / "nothing"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert "nothing" in err and "put the python-version CIFAR-10 files" in err


def test_cupy_without_a_gpu_is_refused_up_front(data_dir, tmp_path, capsys):
    if backend.is_available("cupy"):
        pytest.skip("this machine has CuPy and a GPU: nothing to refuse")
    with pytest.raises(SystemExit):
        vgg.main(["--preset", "smoke", "--backend", "cupy", "--data-dir", data_dir, "--out", str(tmp_path)])
    assert "--backend cupy" in capsys.readouterr().err


def test_plan_shares_runs_between_experiments():
    cfg = {**vgg.PRESETS["cpu"], "seeds": [0]}
    runs = vgg.plan(cfg, ["E1", "E3", "E4"])
    assert sorted(runs) == ["batchnorm_lr0.01_seed0", "batchnorm_lr0.1_seed0", "batchnorm_lr0.5_seed0",
                            "standard_lr0.01_seed0", "standard_lr0.1_seed0", "standard_lr0.5_seed0"]
    assert runs["standard_lr0.1_seed0"]["experiments"] == ["E1", "E3", "E4"]
    assert runs["standard_lr0.1_seed0"]["ics"] and runs["standard_lr0.1_seed0"]["landscape"]
    assert runs["batchnorm_lr0.01_seed0"]["ics"] and not runs["batchnorm_lr0.01_seed0"]["landscape"]
    assert not runs["standard_lr0.5_seed0"]["ics"]


def test_added_variants_run_wherever_bn_runs_with_bns_instruments():
    cfg = {**vgg.PRESETS["cpu"], "seeds": [0], "variants": ["layernorm", "weightnorm"]}
    runs = vgg.plan(cfg, ["E2", "E3"])
    bn_like = {name.replace("batchnorm", v): spec for name, spec in runs.items() if spec["run"].variant == "batchnorm"
               for v in ("layernorm", "weightnorm")}
    assert sorted(runs) == sorted(set(vgg.plan({**cfg, "variants": []}, ["E2", "E3"])) | set(bn_like))
    for name in bn_like:  # same LR, seed, experiments and instruments as BN's run
        bn = runs[name.replace("layernorm", "batchnorm").replace("weightnorm", "batchnorm")]
        assert runs[name]["run"].name == name and runs[name]["run"].variant in ("layernorm", "weightnorm")
        assert runs[name]["run"]._replace(variant="batchnorm") == bn["run"], name
        assert {k: runs[name][k] for k in ("experiments", "ics", "landscape")} == \
               {k: bn[k] for k in ("experiments", "ics", "landscape")}, name
    assert runs["layernorm_lr0.01_seed0"]["ics"] and not runs["noisy_lr0.1_seed0"]["ics"]


@pytest.fixture(scope="module")
def normalizers(data_dir, tmp_path_factory):
    """E1 and E4 of the smoke preset with LayerNorm, GroupNorm and WeightNorm beside BN (2 steps)."""
    out = str(tmp_path_factory.mktemp("vgg-normalizers"))
    assert vgg.main(["--preset", "smoke", "--data-dir", data_dir, "--out", out, "--jobs", "1", "--steps", "2",
                     "--experiments", "E1,E4", "--variants", "layernorm", "groupnorm", "weightnorm"]) == 0
    return out


def test_added_variants_appear_in_results_figures_and_report(normalizers, tmp_path, monkeypatch):
    doc = io.read_json(os.path.join(normalizers, "results.json"))
    added = ("layernorm", "groupnorm", "weightnorm")
    assert sorted(doc["runs"]) == sorted(f"{v}_lr{lr}_seed0" for v in ("standard", "batchnorm", *added)
                                         for lr in ("0.1", "0.5"))
    for v in added:
        run = doc["runs"][f"{v}_lr0.1_seed0"]
        assert run["ics"] is not None and run["landscape"] is not None and run["moments"]["layers"]
    shutil.copy(os.path.join(normalizers, "results.npz"), tmp_path / "results.npz")
    _, drawn = bands_drawn(tmp_path, doc, monkeypatch)
    labels = {name: {text.get_text() for ax in fig.axes if ax.get_legend() for text in ax.get_legend().get_texts()}
              for name, fig in drawn.items()}
    for v in added:
        name = report.label(v)
        assert {f"{name}, LR 0.1", f"{name}, LR 0.5"} <= labels["fig1_accuracy"], labels["fig1_accuracy"]
        assert name in labels["fig1_activations"] and name in labels["fig4_landscape"]
        assert any(name in ax.get_title() for ax in drawn["fig11_gradpred_vs_eta"].axes)
    # the claims about BN stay about BN: the same records as the study without the added runs
    bn_only = {**doc, "runs": {n: r for n, r in doc["runs"].items() if r["variant"] in ("standard", "batchnorm")}}
    arrays = results.read(normalizers)[1]
    assert io.read_json(os.path.join(normalizers, "claims.json")) == io.jsonable(vgg_rules.judge(bn_only, arrays))
    # each added normalizer judged by BN's rules in BN's place, beside BN's rows in the report
    carried = io.read_json(os.path.join(normalizers, "carry_over.json"))
    assert sorted(carried) == sorted(added)
    text = open(os.path.join(normalizers, "report.md")).read()
    section = text[text.index("## Other normalizers in BN's place"):text.index("## Claims beside measurements")]
    for claim_id in ("vgg.e1.bn_faster_lr0.1", "vgg.e1.standard_fails_lr0.5", "vgg.e4.gradpred_two_orders"):
        for v in added:
            assert [r["id"] for r in carried[v]].count(claim_id) == 1
            assert f"| `{claim_id}` | {report.label(v)} |" in section
    assert "| `vgg.e3.ics_not_reduced` | LayerNorm | - | not measured (experiment not run) |" in section


def test_a_normalizer_in_bns_place_gets_bns_verdicts_when_its_runs_are_bns(normalizers):
    doc = io.read_json(os.path.join(normalizers, "results.json"))
    arrays = results.read(normalizers)[1]
    judge = lambda d: vgg_rules.judge(d, arrays)  # noqa: E731
    twin = {**doc, "runs": {**doc["runs"], **{n.replace("batchnorm", "layernorm"): dict(r, variant="layernorm")
                                              for n, r in doc["runs"].items() if r["variant"] == "batchnorm"}}}
    bn = {r["id"]: r for r in judge(doc)}
    for r in verdicts.carry_over(judge, twin, "layernorm"):
        assert r["verdict"] == bn[r["id"]]["verdict"] and r["seeds"] == bn[r["id"]]["seeds"], r["id"]
    # with its own runs, its own values
    own = verdicts.carry_over(judge, doc, "weightnorm")
    assert [r["seeds"] for r in own] != [bn[r["id"]]["seeds"] for r in own]


def test_train_mode_moments_see_the_noise_and_leave_the_model_untouched():
    model = models.vgg([4, "M", 4, "M"], norm="noisy", rng=1, input_size=8)
    x = backend.rng(2).standard_normal((8, 8, 8, 3)).astype("float32")
    layers = vgg.preactivation_layers(model)
    before_state, before_params = json.dumps(io.jsonable(model.state())), model.flat_params().copy()
    trained = moments.MomentsRecorder(layers, every=1, n_samples=16, seed=0, mode="train")
    trained(0, model, x, None, None)
    assert json.dumps(io.jsonable(model.state())) == before_state  # noise generators, running statistics
    assert np.array_equal(model.flat_params(), before_params)
    probed = moments.MomentsRecorder(layers, every=1, n_samples=16, seed=0)
    probed(0, model, x, None, None)
    noisy_mean = trained.result()["layers"][str(layers[0])]["unit_mean"][0]
    clean_mean = probed.result()["layers"][str(layers[0])]["unit_mean"][0]
    assert abs(clean_mean) < 1e-5 and abs(noisy_mean) > 1e-3  # BN's output is centred; the noise shifts it
