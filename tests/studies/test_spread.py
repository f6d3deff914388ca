"""The execution spread between two folders of the same runs: every value a rule reads, every verdict,
every run's loss."""

import math
import shutil

import pytest

from minibn import io
from minibn.studies import dln, spread


@pytest.fixture(scope="module")
def twin(tmp_path_factory):
    a = tmp_path_factory.mktemp("spread") / "a"
    dln.run(out=str(a), preset="smoke", variants=["standard", "batchnorm"])
    return a


def test_identical_executions_have_no_spread(twin, tmp_path):
    b = tmp_path / "b"
    shutil.copytree(twin, b)
    record = spread.compare(str(twin), str(b))
    assert record["verdicts"] == [] and record["values"]
    assert all(v["max"] == 0 or math.isnan(v["max"]) for v in record["values"])
    assert all(r["first_differing_step"] is None and r["final_loss_spread"] == 0 for r in record["runs"])


def test_a_moved_value_a_moved_verdict_and_a_moved_loss_are_reported(twin, tmp_path):
    b = tmp_path / "b"
    shutil.copytree(twin, b)
    claims = io.read_json(b / "claims.json")
    rec = next(r for r in claims if r["id"] == "dln.e4.gradpred_orders")
    name = next(iter(rec["seeds"][0]["values"]))
    a_value = rec["seeds"][0]["values"][name]
    rec["seeds"][0]["values"][name] = a_value * 1.5
    rec["seeds"][0]["verdict"] = "opposite"
    io.write_json(b / "claims.json", claims)
    doc = io.read_json(b / "results.json")
    run = doc["runs"]["standard_lr0.0001_seed0"]
    run["loss"][3] *= 1 + 1e-12
    io.write_json(b / "results.json", doc)
    record = spread.compare(str(twin), str(b))
    moved = next(v for v in record["values"] if v["id"] == "dln.e4.gradpred_orders" and v["value"] == name)
    assert moved["max"] == pytest.approx(1 / 3)
    assert [(v["id"], v["b"]) for v in record["verdicts"]] == [("dln.e4.gradpred_orders", "opposite")]
    runs = {r["run"]: r for r in record["runs"]}
    assert runs["standard_lr0.0001_seed0"]["first_differing_step"] == run["steps"][3]
    assert spread.main([str(twin), str(b), "--out", str(tmp_path / "s")]) == 0
    text = (tmp_path / "s" / "report.md").read_text()
    assert "`dln.e4.gradpred_orders` | 0 | " in text and "opposite" in text


def test_other_settings_are_refused(twin, tmp_path, capsys):
    b = tmp_path / "b"
    dln.run(out=str(b), preset="smoke", variants=["standard", "batchnorm"], steps=30)
    with pytest.raises(SystemExit):
        spread.main([str(twin), str(b), "--out", str(tmp_path / "s")])
    assert "not the same study with the same settings (['steps'])" in capsys.readouterr().err
