"""The DLN rulebook on hand-made results, where the right verdict is known."""

import json

from minibn.claims import dln as rules
from minibn.claims import verdicts

STEPS = list(range(0, 1100, 100))  # ten points after step 0: early = steps 100 and 200


def by_id(records):
    return {r["id"]: r for r in records}


def dln_run(variant, lr, seed=0, gradpred=None, final=100.0, cos=(1.0, 1.0), diverged_at=None):
    n = len(STEPS)
    gp = gradpred or [1.0] * n
    return {"variant": variant, "lr": lr, "seed": seed, "diverged_at": diverged_at, "steps": [0, 10],
            "loss": [4.5e4, final],
            "ics": {"steps": STEPS, "layers": [1, 2, 3], "l2": [[0.0, 1.0, 1.0]] * n,
                    "cos": [[1.0, cos[0], cos[1]]] * n},
            "landscape": {"steps": STEPS, "loss_min": [1.0] * n, "loss_max": [10.0] * n, "gradpred_min": [1.0] * n,
                          "gradpred_max": gp, "beta_eff": [1.0] * n, "nonfinite": [0] * n}}


def dln_doc(runs, **cfg):
    config = {"depth": 3, "width": 4, "samples": 16, "steps": 10, "seeds": [0], **cfg}
    return {"config": config, "runs": {f"{r['variant']}_lr{r['lr']:g}_seed{r['seed']}": r for r in runs}}


def test_dln_windows_that_disagree_are_named():
    n = len(STEPS)
    early_gap = [1.0, 1e12, 1e12] + [1.0] * (n - 3)  # a huge gap early, none afterwards
    doc = dln_doc([dln_run("standard", 1e-6, gradpred=early_gap), dln_run("batchnorm", 1e-6)])
    rec = by_id(rules.judge(doc))["dln.e4.gradpred_orders"]
    assert rec["verdict"] == ("partly: parts disagree (reproduced: LR 1e-06 band edge, early, LR 1e-06 median, early, "
                              "LR 1e-06 band edge, whole run; not reproduced: LR 1e-06 median, whole run)")


def test_dln_cosine_picture_and_diverged_runs():
    doc = dln_doc([dln_run("standard", 1e-6, final=200.0, cos=(0.99, 0.95)),
                   dln_run("batchnorm", 1e-6, final=50.0, cos=(0.05, -0.1))])
    assert by_id(rules.judge(doc))["dln.e3.ics_standard_cos1_bn_cos0"]["verdict"] == "reproduced"
    doc["runs"]["batchnorm_lr1e-06_seed0"]["cos"] = None
    doc["runs"]["batchnorm_lr1e-06_seed0"]["diverged_at"] = 7
    recs = by_id(rules.judge(doc))
    for claim_id in ("dln.e3.ics_standard_cos1_bn_cos0", "dln.e4.gradpred_orders", "dln.e4.beta_eff"):
        assert recs[claim_id]["verdict"] == "not judged: BN at LR 1e-06 diverged at step 7", claim_id
    # the paper's values belong to the paper's setting: a smaller study is not judged against them
    assert recs["dln.loss_scale"]["verdict"].startswith("not judged: the paper's values are for")


def test_l1_equal_to_bn_does_not_beat_it():
    doc = dln_doc([dln_run("standard", 1e-6, final=300.0), dln_run("batchnorm", 1e-6, final=100.0),
                   dln_run("l1", 1e-6, final=99.9)])
    assert by_id(rules.judge(doc))["dln.e5.l1_beats_bn"]["verdict"] == "not reproduced"
    doc["runs"]["l1_lr1e-06_seed0"]["loss"][-1] = 20.0
    assert by_id(rules.judge(doc))["dln.e5.l1_beats_bn"]["verdict"] == "reproduced"


def test_claims_json_keys(tmp_path):
    doc = dln_doc([dln_run("standard", 1e-6), dln_run("batchnorm", 1e-6)])
    records = rules.judge(doc)
    verdicts.write(str(tmp_path), records)
    stored = json.loads((tmp_path / "claims.json").read_text())
    assert [r["id"] for r in stored] == list(rules.RULES)
    assert all(set(r) == {"id", "statement", "paper", "measured", "rule", "verdict", "holds_on", "seeds"} for r in stored)


def test_loss_scale_reads_the_singular_values_each_run_recorded():
    doc = dln_doc([dln_run("standard", 1e-6, final=5.0)], depth=25, width=10, samples=1000, steps=10_000)
    run = doc["runs"]["standard_lr1e-06_seed0"]
    run["target_singular_values"] = [3.0, 2.0, 1.0]          # rank-k residuals 14, 5, 1, 0
    rec = by_id(rules.judge(doc))["dln.loss_scale"]
    values = rec["seeds"][0]["values"]
    assert values["standard LR 1e-06 ends on rank"] == 1 and values["standard LR 1e-06 final / rank-1 residual"] == 1.0
    assert rec["verdict"].startswith("partly")               # initial loss as the paper's, final 340x below it
    del run["target_singular_values"]
    assert by_id(rules.judge(doc))["dln.loss_scale"]["verdict"] == (
        "not judged: standard LR 1e-06 did not record its target's singular values")
