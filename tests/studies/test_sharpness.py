"""The sharpness study end to end on its smoke preset (a tiny synthetic CIFAR folder), resume, the
report command, option errors, and its claim rules on hand-made results."""

import copy
import json
import os
import shutil
import subprocess
import sys

import pytest

from minibn import io
from minibn.claims import sharpness as sharpness_rules
from minibn.claims import verdicts
from minibn.studies import sharpness, sharpness_report
from tests.data.test_cifar10 import make_folder


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    data = make_folder(tmp_path_factory.mktemp("cifar"), rows=20)
    out = str(tmp_path_factory.mktemp("sharpness-smoke"))
    argv = ["--preset", "smoke", "--data-dir", data, "--out", out, "--jobs", "1"]
    assert sharpness.main(argv) == 0
    return out, argv


def test_smoke_schema_figures_claims_and_report(smoke):
    out, _ = smoke
    doc = io.read_json(os.path.join(out, "results.json"))
    assert doc["study"] == "sharpness" and doc["preset"] == "smoke" and "environment" in doc["config"]
    parts = {run["part"] for run in doc["runs"].values()}
    assert parts == {"dln", "width", "vgg", "depth"}
    bn = doc["runs"]["dln_batchnorm_lr0.0001_seed0"]
    assert bn["hessian"]["steps"] == [0, 10, 20, 30, 39] and all(v is not None for v in bn["hessian"]["top_eigenvalue"])
    assert len(bn["effective_lr"]["layers"]) == 5 and len(bn["effective_lr"]["norm"]) == 5
    for when in ("initial", "final"):
        for mode in ("train", "eval"):
            d = bn["slq"][when][mode]
            assert d["mode"] == mode and len(d["nodes"]) == 2 and len(d["grid"]) == len(d["density"])
    assert doc["runs"]["dln_l1_lr0.0001_seed0"]["slq"] == {"initial": None, "final": None}  # SLQ on standard and BN only
    vgg = doc["runs"]["vgg_batchnorm_seed0"]
    assert vgg["measure_images"] == 40 and vgg["hessian"]["steps"] == [0, 3, 5] and 0 <= vgg["test_acc"] <= 1
    assert vgg["slq"]["final"]["eval"]["lambda_max"] is not None
    width = doc["runs"]["width6_batchnorm_lr0.0001_seed0"]
    assert width["width"] == 6 and width["ics"]["layers"] and "moments" not in width
    depth = doc["runs"]["depth_seed0"]["networks"]
    assert set(depth) == {"dln", "mlp"} and set(depth["mlp"]) == set(sharpness.EOS_VARIANTS)
    assert len(depth["mlp"]["batchnorm"]["grad_norm"]) == 7   # 6 hidden Dense layers and the output layer
    for fig in sharpness_report.FIGURES:
        assert os.path.getsize(os.path.join(out, fig)) > 1000, fig
    records = io.read_json(os.path.join(out, "claims.json"))
    ids = [r["id"] for r in records]
    assert ids[:4] == list(sharpness_rules.RULES)
    assert ids[4:] == [f"width{w}:{c}" for w in (4, 6) for c in sharpness_rules.WIDTH_CLAIMS]
    assert records == io.jsonable(sharpness_rules.judge(doc))  # the rulebook on results.json alone
    eos = records[0]
    assert eos["verdict"].startswith("not judged")   # the smoke preset has no run at LR 1e-6
    text = open(os.path.join(out, "report.md")).read()
    for heading in ("## Edge of stability", "## Effective learning rate", "## Hessian eigenvalue densities",
                    "## Depth at initialization", "## The DLN's width", "depends on the width"):
        assert heading in text


def test_resume_keeps_finished_runs(smoke, tmp_path):
    out, argv = smoke
    folder = str(tmp_path / "again")
    shutil.copytree(out, folder)
    before = io.read_json(os.path.join(folder, "results.json"))["runs"]
    marker = os.path.join(folder, "runs", "vgg_standard_seed0", "result.json")
    stamp = os.path.getmtime(marker)
    assert sharpness.main([*argv[:4], "--out", folder, "--jobs", "1", "--resume"]) == 0
    after = io.read_json(os.path.join(folder, "results.json"))["runs"]
    assert after == before and os.path.getmtime(marker) == stamp


def test_report_command_rebuilds_from_the_folder_alone(smoke, tmp_path):
    out, _ = smoke
    folder = tmp_path / "copy"
    shutil.copytree(out, folder)
    written = (folder / "report.md").read_text()
    for name in ["report.md", "claims.json", *sharpness_report.FIGURES]:
        (folder / name).unlink()
    shutil.rmtree(folder / "runs")
    subprocess.run([sys.executable, "-m", "minibn.studies.sharpness_report", str(folder)], check=True,
                   capture_output=True, cwd=os.getcwd())
    assert (folder / "report.md").read_text() == written
    assert json.loads((folder / "claims.json").read_text()) == io.read_json(os.path.join(out, "claims.json"))


@pytest.mark.parametrize("argv, message", [
    (["--seeds", "0"], "--seeds"), (["--parts", "nope"], "invalid choice"), (["--seed", "-1"], "--seed"),
    (["--preset", "huge"], "invalid choice"),
])
def test_bad_options_are_refused_before_any_work(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as err:
        sharpness.main(["--out", str(tmp_path / "o"), *argv])
    assert err.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


# --- the rules, on hand-made results --------------------------------------------------------

def dln_run(variant, ratio, lr=1e-6, diverged_at=None, seed=0):
    steps = list(range(0, 1100, 100))
    top = [1e3] + [ratio * 2 / lr] * 10
    return {"part": "dln", "variant": variant, "lr": lr, "seed": seed, "diverged_at": diverged_at,
            "hessian": {"steps": steps, "top_eigenvalue": top}}


def verdict(claim_id, runs):
    doc = {"runs": {f"r{i}": r for i, r in enumerate(runs)}, "config": {}}
    return sharpness_rules.JUDGES[claim_id](doc, 0)


@pytest.mark.parametrize("ratios, expected", [
    ((1.0, 1.1), "reproduced"), ((0.9, 2.0), "partly"), ((2.0, 2.5), "partly"), ((5.0, 0.1), "not reproduced"),
])
def test_edge_of_stability_rule(ratios, expected):
    v, values = verdict("sharpness.eos_dln", [dln_run("standard", ratios[0]), dln_run("batchnorm", ratios[1])])
    assert v.split(":")[0] == expected
    assert values["standard lambda_max / (2/eta)"] == pytest.approx(ratios[0])


def test_edge_of_stability_rule_skips_a_diverged_run_and_reads_only_the_end():
    v, _ = verdict("sharpness.eos_dln", [dln_run("standard", 1.0), dln_run("batchnorm", 1.0, diverged_at=50)])
    assert v.startswith("not judged") and "diverged" in v
    run = dln_run("standard", 1.0)
    run["hessian"]["top_eigenvalue"][1:8] = [1e9] * 7     # sharp early, at 2/eta over the last 20%
    assert sharpness_rules.eos_ratio(run) == pytest.approx(1.0)


def density(top, m2):
    return {"lambda_max": top, "moment2": m2}


def vgg_run(variant, train, evaluation):
    return {"part": "vgg", "variant": variant, "seed": 0, "diverged_at": None,
            "slq": {"final": {"train": density(*train), "eval": density(*evaluation)}}}


def test_outlier_rule():
    std, bn = vgg_run("standard", (100.0, 1.0), (50.0, 1.0)), vgg_run("batchnorm", (10.0, 1.0), (10.0, 1.0))
    v, values = verdict("sharpness.vgg_outliers", [std, bn])
    assert v == "reproduced" and values["train mode standard / BN"] == pytest.approx(10.0)
    swapped = copy.deepcopy(std)
    swapped["slq"]["final"]["eval"] = density(1.0, 1.0)
    assert verdict("sharpness.vgg_outliers", [swapped, bn])[0].startswith("partly")
    assert verdict("sharpness.vgg_outliers", [std])[0].startswith("not judged")


def profile(grads, ranks):
    return {"grad_norm": grads, "effective_rank": ranks}


def test_depth_rules():
    run = {"part": "depth", "seed": 0, "networks": {
        "dln": {"standard": profile([1, 1, 1], [5, 1.0, 1]), "batchnorm": profile([50, 2, 1], [5, 4.0, 1])},
        "mlp": {"standard": profile([1, 1, 1], [5, 2.0, 1]), "batchnorm": profile([3, 2, 1], [5, 2.1, 1])}}}
    grow, values = verdict("sharpness.depth_bn_gradients_grow", [run])
    assert grow.startswith("partly") and values == {"dln BN": pytest.approx(25.0), "mlp BN": pytest.approx(1.5)}
    rank, values = verdict("sharpness.depth_bn_keeps_rank", [run])
    assert rank.startswith("partly") and values["dln BN / standard"] == pytest.approx(4.0)
    assert "not reproduced: mlp" in rank


def test_docs_state_the_rules_the_code_applies():
    text = open(os.path.join(os.path.dirname(__file__), "..", "..", "docs", "sharpness.md"), encoding="utf-8").read()
    assert verdicts.rules_reference(sharpness_rules.RULES) in text
    index = open(os.path.join(os.path.dirname(__file__), "..", "..", "docs", "index.md"), encoding="utf-8").read()
    assert "(sharpness.md)" in index


def test_run_from_python_returns_what_results_json_holds(tmp_path):
    doc = sharpness.run(out=str(tmp_path / "o"), preset="smoke", parts=["depth"], seeds=2)
    assert doc == io.read_json(str(tmp_path / "o" / "results.json"))
    assert sorted(doc["runs"]) == ["depth_seed0", "depth_seed1"]
    records = io.read_json(str(tmp_path / "o" / "claims.json"))
    assert [r["id"] for r in records] == ["sharpness.depth_bn_gradients_grow", "sharpness.depth_bn_keeps_rank"]
    assert all(len(r["seeds"]) == 2 for r in records)
    with pytest.raises(ValueError, match="--seeds"):
        sharpness.run(out=str(tmp_path / "p"), preset="smoke", parts=["depth"], seeds=0)
