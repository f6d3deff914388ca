"""The theory study end to end on a tiny run, its report command, and its instrument."""

import shutil
import subprocess
import sys

import pytest

from minibn import backend, io
from minibn.measure.theorychecks import Tally, TheoryChecks
from minibn.studies import theory, theory_report

NAMES = ["bn_jacobian", "thm41", "thm41_printed", "thm42_identity", "obs43", "thm44", "lemma45_identity",
         "lemma45_premise", "scale_invariance", "normalizer_scale_invariance", "layernorm_projection",
         "weight_grad_orthogonal", "gd_norm_growth"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("theory")
    doc = theory.run(out=str(out), instances=4, steps=2, every=1, units=1, networks=("mlp",))
    return out, doc


def test_run_writes_every_check_and_returns_what_results_json_holds(tiny):
    """The refuted statements refuted, the true ones holding, the machine recorded, a report."""
    out, doc = tiny
    assert doc == io.read_json(out / "results.json")
    assert doc["study"] == "theory" and "environment" in doc["config"] and doc["config"]["networks"] == ["mlp"]
    assert {k: doc["config"][k] for k in ("instances", "steps", "every", "units")} == {
        "instances": 4, "steps": 2, "every": 1, "units": 1}
    assert [c["name"] for c in doc["checks"]] == NAMES
    for c in doc["checks"]:
        assert {"name", "statement", "holds", "instances", "max_rel_err"} <= set(c)
        assert c["instances"] > 0
        assert c["holds"] == (c["name"] not in ("thm41_printed", "lemma45_premise")), c
    premise = next(c for c in doc["checks"] if c["name"] == "lemma45_premise")
    assert premise["counterexample"]["w_star"] == pytest.approx([4 / 3, 7 / 3], rel=1e-12)
    assert doc["networks"]["mlp"]["checked_steps"] == [0, 1, 2]
    assert "## The statements that fail" in (out / "report.md").read_text()


def test_report_command_rebuilds_the_report_from_the_folder_alone(tiny, tmp_path):
    out, _ = tiny
    folder = tmp_path / "copy"
    shutil.copytree(out, folder)
    written = (folder / "report.md").read_text()
    (folder / "report.md").unlink()
    subprocess.run([sys.executable, "-m", "minibn.studies.theory_report", str(folder)], check=True,
                   capture_output=True)
    assert (folder / "report.md").read_text() == written
    (folder / "notes.md").write_text("## By hand\n")
    assert theory_report.main([str(folder)]) == 0
    assert (folder / "report.md").read_text() == written.rstrip("\n") + "\n\n## By hand\n"


@pytest.mark.parametrize("argv, message", [
    (["--every", "0"], "--every must be a positive"),
    (["--instances", "-1"], "--instances must be an integer >= 0"),
    (["--backend", "tpu"], "unknown backend"),
    (["--resume"], "unrecognized arguments: --resume"),
])
def test_bad_options_fail_before_any_work(argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as err:
        theory.main(["--out", str(tmp_path / "o")] + argv)
    assert err.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    with pytest.raises(ValueError, match="--every must be a positive integer"):
        theory.run(out=str(tmp_path / "o"), every=0)
    with pytest.raises(TypeError, match="resume"):  # run() takes the command line's options, no others
        theory.run(out=str(tmp_path / "o"), resume=True)


def test_checks_leave_the_network_untouched():
    """The instrument sets eps = 0 and scales weights during a check; afterwards parameters,
    running statistics and eps are bit-identical."""
    model, loss_fn, stream, _, _ = theory.build_networks(0)["mlp"]
    x, target = stream.next()
    before = (model.flat_params().copy(), model.state(), [getattr(layer, "eps", None) for layer in model])
    checks = TheoryChecks(Tally(), "mlp", loss_fn, every=1, units_per_layer=1, seed=0)
    checks(0, model, x, target, None)
    after = (model.flat_params(), model.state(), [getattr(layer, "eps", None) for layer in model])
    assert (before[0] == after[0]).all()
    assert before[2] == after[2]
    for i, s in before[1].items():
        for k, v in s.items():
            assert (backend.host.asarray(v) == backend.host.asarray(after[1][i][k])).all()
    assert checks.tally.checks["thm41"]["instances"] == 64 and checks.tally.checks["thm41"]["violations"] == 0
    assert checks.result()["steps"] == [0]
