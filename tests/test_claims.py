"""The claims engine's rules on hand-made results, where the right verdict is known: thresholds,
windows or band edge and median that disagree, diverged runs, verdicts over seeds."""

import math

import numpy as np
import pytest

from minibn import claims
from minibn.data.synthetic import linear_regression

STEPS = list(range(0, 1100, 100))  # ten points after step 0: early = steps 100 and 200


def test_ratio_verdict_thresholds():
    assert claims.ratio_verdict(40, paper_ratio=100) == "reproduced"  # within half an order of 100
    assert claims.ratio_verdict(30, paper_ratio=100) == "partly"
    assert claims.ratio_verdict(1.1) == "not reproduced"
    assert claims.ratio_verdict(0.5) == "opposite"
    assert claims.ratio_verdict(math.nan).startswith("not judged")


def test_parts_that_disagree_give_at_most_partly_and_say_which():
    both = claims.combine({"early": "reproduced", "whole run": "reproduced"})
    assert both == "reproduced"
    mixed = claims.combine({"early": "reproduced", "whole run": "not reproduced"})
    assert mixed == "partly: parts disagree (reproduced: early; not reproduced: whole run)"
    assert claims.combine({"early": "opposite", "whole run": "not reproduced"}).startswith("not reproduced: parts")
    assert claims.combine({"a": "reproduced", "b": "not judged: x diverged at step 3"}) == "not judged: x diverged at step 3"


def test_over_seeds_counts_and_majority():
    verdict, holds = claims.over_seeds({0: "reproduced", 1: "reproduced", 2: "not reproduced"})
    assert verdict == "reproduced: reproduced on 2, not reproduced on 1 of 3 seeds" and holds == "2 of 3 seeds"
    verdict, holds = claims.over_seeds({0: "reproduced", 1: "partly", 2: "not reproduced", 3: "opposite"})
    assert verdict.startswith("partly: ") and holds == "1 of 4 seeds (partly on 1)"
    verdict, _ = claims.over_seeds({0: "not judged: standard diverged at step 2"})
    assert verdict == "not judged: standard diverged at step 2"
    verdict, holds = claims.over_seeds({0: "reproduced", 1: "not judged: BN diverged at step 5"})
    assert verdict == "partly: reproduced on 1, not judged on 1 of 2 seeds" and holds == "1 of 2 seeds"


# --- VGG -----------------------------------------------------------------------------------

def vgg_run(variant, lr, train_acc, test_acc=None, loss=1.0, diverged_at=None, gradpred=None, seed=0):
    evals = [0, 250, 500, 750, 1000, 1250, 1500, 1750, 2000, 2250, 2500]
    n = len(STEPS)
    gp = gradpred or [1.0] * n
    return {"variant": variant, "lr": lr, "seed": seed, "diverged_at": diverged_at, "steps": list(range(100)),
            "loss": [loss] * 100, "eval_steps": evals, "train_acc": train_acc,
            "test_acc": test_acc or train_acc, "ics": None,
            "landscape": {"steps": STEPS, "loss_min": [1.0] * n, "loss_max": [2.0] * n, "gradpred_min": [0.1] * n,
                          "gradpred_max": gp, "beta_eff": [1.0] * n, "nonfinite": [0] * n},
            "moments": {"conv_layers": [1, 2], "steps": STEPS, "layers": {}}}


def vgg_doc(runs, experiments):
    cfg = {"lr": 0.1, "lr_high": 0.5, "lr_low": 0.01, "seeds": sorted({r["seed"] for r in runs})}
    return {"experiments": experiments, "config": cfg,
            "runs": {f"{r['variant']}_lr{r['lr']:g}_seed{r['seed']}": r for r in runs}}


def by_id(records):
    return {r["id"]: r for r in records}


def test_standard_leaving_chance_late_is_partly_with_the_windows_named():
    late = [0.1, 0.1, 0.1, 0.1, 0.12, 0.15, 0.3, 0.4, 0.44, 0.45, 0.45]  # leaves chance after the early window
    doc = vgg_doc([vgg_run("standard", 0.5, late), vgg_run("batchnorm", 0.5, [0.1] + [0.7] * 10),
                   vgg_run("standard", 0.1, [0.1] * 11), vgg_run("batchnorm", 0.1, [0.1] * 11)], ["E1"])
    rec = by_id(claims.vgg_claims(doc, {}))["vgg.e1.standard_fails_lr0.5"]
    assert rec["verdict"] == "partly: parts disagree (reproduced: early; partly: whole run)"
    assert rec["seeds"][0]["values"]["standard leaves chance at step"] == 1500
    never = vgg_doc([vgg_run("standard", 0.5, [0.1] * 11), vgg_run("batchnorm", 0.5, [0.1] + [0.7] * 10)], ["E1"])
    assert by_id(claims.vgg_claims(never, {}))["vgg.e1.standard_fails_lr0.5"]["verdict"] == "reproduced"


def test_a_diverged_baseline_is_not_judged_never_compared():
    doc = vgg_doc([vgg_run("standard", 0.1, [0.1, 0.1] + [None] * 9, diverged_at=2),
                   vgg_run("batchnorm", 0.1, [0.1] + [0.6] * 10)], ["E1"])
    rec = by_id(claims.vgg_claims(doc, {}))["vgg.e1.bn_faster_lr0.1"]
    assert rec["verdict"] == "not judged: standard diverged at step 2"
    assert rec["holds_on"] == "0 of 1 seeds"


def test_noisy_bn_worse_in_eval_mode_than_standard_is_not_agreement():
    doc = vgg_doc([vgg_run("standard", 0.1, [0.1] + [0.55] * 10, loss=1.3),
                   vgg_run("batchnorm", 0.1, [0.1] + [0.75] * 10, loss=0.7),
                   vgg_run("noisy", 0.1, [0.1] + [0.5] * 10, loss=0.9)], ["E2"])
    rec = by_id(claims.vgg_claims(doc, {}))["vgg.e2.noisy_matches_bn"]
    # train mode: beats standard (1.3 > 1.2 x 0.9) but 1.29x BN's loss: partly; eval mode: 0.05 below standard
    assert rec["verdict"] == "partly: parts disagree (partly: train-mode loss; not reproduced: eval-mode accuracy)"


def test_two_orders_judged_on_band_edge_and_median():
    n = len(STEPS)
    spiky = [1.0] * 5 + [100.0] + [1.0] * (n - 6)  # one spike after the early window: band edge 100x, median 1x
    doc = vgg_doc([vgg_run("standard", 0.1, [0.5] * 11, gradpred=spiky), vgg_run("batchnorm", 0.1, [0.5] * 11)],
                  ["E4"])
    rec = by_id(claims.vgg_claims(doc, {}))["vgg.e4.gradpred_two_orders"]
    assert rec["verdict"] == ("partly: parts disagree (reproduced: band edge, whole run; "
                              "not reproduced: band edge, early, median, early, median, whole run)")
    doc["runs"]["standard_lr0.1_seed0"]["landscape"]["gradpred_max"] = [1.0] + [100.0] * (n - 1)
    assert by_id(claims.vgg_claims(doc, {}))["vgg.e4.gradpred_two_orders"]["verdict"] == "reproduced"


def test_claims_over_seeds_in_the_record():
    runs = []
    for seed, std_acc in ((0, 0.5), (1, 0.5), (2, 0.8)):  # BN 0.2 ahead on seeds 0, 1; behind on seed 2
        runs += [vgg_run("standard", 0.01, [0.1] + [std_acc] * 10, seed=seed),
                 vgg_run("batchnorm", 0.01, [0.1] + [0.7] * 10, seed=seed)]
    rec = by_id(claims.vgg_claims(vgg_doc(runs, ["E3"]), {}))["vgg.e1.bn_faster_lr0.01"]
    assert rec["verdict"] == "reproduced: reproduced on 2, opposite on 1 of 3 seeds" and rec["holds_on"] == "2 of 3 seeds"
    gap = rec["measured"]["over_seeds"]["train acc gap BN - standard, early mean"]
    assert gap == pytest.approx({"median": 0.2, "min": -0.1, "max": 0.2})
    assert [s["verdict"] for s in rec["seeds"]] == ["reproduced", "reproduced", "opposite"]
    # the summary cell counts seeds once, and a claim not judged claims no seeds
    assert claims.verdict_text(rec) == "**reproduced**: reproduced on 2, opposite on 1 of 3 seeds"
    uniform = dict(rec, verdict="partly", holds_on="0 of 3 seeds (partly on 3)")
    assert claims.verdict_text(uniform) == "**partly**; reproduced on 0 of 3 seeds (partly on 3)"
    skipped = dict(rec, verdict="not judged: standard at LR 1 diverged at step 2", holds_on="0 of 1 seeds")
    assert claims.verdict_text(skipped) == "**not judged**: standard at LR 1 diverged at step 2"


# --- DLN -----------------------------------------------------------------------------------

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
    rec = by_id(claims.dln_claims(doc))["dln.e4.gradpred_orders"]
    assert rec["verdict"] == ("partly: parts disagree (reproduced: LR 1e-06 band edge, early, LR 1e-06 median, early, "
                              "LR 1e-06 band edge, whole run; not reproduced: LR 1e-06 median, whole run)")


def test_dln_cosine_picture_and_diverged_runs():
    doc = dln_doc([dln_run("standard", 1e-6, final=200.0, cos=(0.99, 0.95)),
                   dln_run("batchnorm", 1e-6, final=50.0, cos=(0.05, -0.1))])
    assert by_id(claims.dln_claims(doc))["dln.e3.ics_standard_cos1_bn_cos0"]["verdict"] == "reproduced"
    doc["runs"]["batchnorm_lr1e-06_seed0"]["cos"] = None
    doc["runs"]["batchnorm_lr1e-06_seed0"]["diverged_at"] = 7
    recs = by_id(claims.dln_claims(doc))
    for claim_id in ("dln.e3.ics_standard_cos1_bn_cos0", "dln.e4.gradpred_orders", "dln.e4.beta_eff"):
        assert recs[claim_id]["verdict"] == "not judged: BN at LR 1e-06 diverged at step 7", claim_id
    # the paper's values belong to the paper's setting: a smaller study is not judged against them
    assert recs["dln.loss_scale"]["verdict"].startswith("not judged: the paper's values are for")


def test_l1_equal_to_bn_does_not_beat_it():
    doc = dln_doc([dln_run("standard", 1e-6, final=300.0), dln_run("batchnorm", 1e-6, final=100.0),
                   dln_run("l1", 1e-6, final=99.9)])
    assert by_id(claims.dln_claims(doc))["dln.e5.l1_beats_bn"]["verdict"] == "not reproduced"
    doc["runs"]["l1_lr1e-06_seed0"]["loss"][-1] = 20.0
    assert by_id(claims.dln_claims(doc))["dln.e5.l1_beats_bn"]["verdict"] == "reproduced"


def test_rank_residuals_are_the_best_rank_k_fits():
    cfg = {"samples": 50, "width": 4}
    residuals = claims.rank_residuals(cfg, seed=3)
    X, Y, A = linear_regression(50, 4, 4, rng=np.random.default_rng(3))
    assert residuals[0] == pytest.approx(float((Y ** 2).sum())) and residuals[-1] == pytest.approx(0, abs=1e-9)
    rng = np.random.default_rng(0)
    for k in range(1, 4):
        # the truncated map of A itself and random rank-k maps all fit no better than r_k
        u, s, vt = np.linalg.svd(A)
        fits = [u[:, :k] * s[:k] @ vt[:k]] + [rng.standard_normal((4, k)) @ rng.standard_normal((k, 4)) for _ in range(3)]
        for B in fits:
            coef, *_ = np.linalg.lstsq(X @ B.T, Y, rcond=None)  # best use of that rank-k subspace
            assert float(((Y - X @ B.T @ coef) ** 2).sum()) >= residuals[k] * (1 - 1e-9)
    assert claims.plateau(residuals[2] * 1.001, residuals) == (2, pytest.approx(1.001))


def test_claims_json_keys(tmp_path):
    doc = dln_doc([dln_run("standard", 1e-6), dln_run("batchnorm", 1e-6)])
    records = claims.dln_claims(doc)
    claims.write(str(tmp_path), records)
    import json

    stored = json.loads((tmp_path / "claims.json").read_text())
    assert [r["id"] for r in stored] == list(claims.DLN_RULES)
    assert all(set(r) == {"id", "statement", "paper", "measured", "rule", "verdict", "holds_on", "seeds"} for r in stored)


ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("page,name", [("vgg.md", "VGG_RULES"), ("dln.md", "DLN_RULES")])
def test_the_docs_state_every_rule_of_the_engine(page, name):
    """docs/vgg.md and docs/dln.md hold the rules as the code states them, and protocol.md §4a lists every id."""
    rules = getattr(claims, name)
    text = (ROOT / "docs" / page).read_text()
    begin, end = f"<!-- claims.{name}: generated by claims.rules_reference", f"<!-- end of claims.{name} -->"
    block = text[text.index(begin):text.index(end)].split("\n", 1)[1].rstrip("\n")
    assert block == claims.rules_reference(rules), (
        f"docs/{page} is out of date: replace its {name} block with the output of "
        f"python -c 'from minibn import claims; print(claims.rules_reference(claims.{name}))'")
    protocol = (ROOT / "docs" / "protocol.md").read_text()
    claims_table = protocol[protocol.index("### 4a."):protocol.index("## 5.")]
    assert [claim_id for claim_id in rules if f"| `{claim_id}` |" not in claims_table] == []
