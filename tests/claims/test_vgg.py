"""The VGG rulebook on hand-made results, where the right verdict is known: thresholds, windows or
band edge and median that disagree, diverged runs, verdicts over seeds."""

import pytest

from minibn.claims import verdicts
from minibn.claims import vgg as rules

STEPS = list(range(0, 1100, 100))  # ten points after step 0: early = steps 100 and 200


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
    rec = by_id(rules.judge(doc, {}))["vgg.e1.standard_fails_lr0.5"]
    assert rec["verdict"] == "partly: parts disagree (reproduced: early; partly: whole run)"
    assert rec["seeds"][0]["values"]["standard leaves chance at step"] == 1500
    never = vgg_doc([vgg_run("standard", 0.5, [0.1] * 11), vgg_run("batchnorm", 0.5, [0.1] + [0.7] * 10)], ["E1"])
    assert by_id(rules.judge(never, {}))["vgg.e1.standard_fails_lr0.5"]["verdict"] == "reproduced"


def test_a_diverged_baseline_is_not_judged_never_compared():
    doc = vgg_doc([vgg_run("standard", 0.1, [0.1, 0.1] + [None] * 9, diverged_at=2),
                   vgg_run("batchnorm", 0.1, [0.1] + [0.6] * 10)], ["E1"])
    rec = by_id(rules.judge(doc, {}))["vgg.e1.bn_faster_lr0.1"]
    assert rec["verdict"] == "not judged: standard diverged at step 2"
    assert rec["holds_on"] == "0 of 1 seeds"


def test_noisy_bn_worse_in_eval_mode_than_standard_is_not_agreement():
    doc = vgg_doc([vgg_run("standard", 0.1, [0.1] + [0.55] * 10, loss=1.3),
                   vgg_run("batchnorm", 0.1, [0.1] + [0.75] * 10, loss=0.7),
                   vgg_run("noisy", 0.1, [0.1] + [0.5] * 10, loss=0.9)], ["E2"])
    rec = by_id(rules.judge(doc, {}))["vgg.e2.noisy_matches_bn"]
    # train mode: beats standard (1.3 > 1.2 x 0.9) but 1.29x BN's loss: partly; eval mode: 0.05 below standard
    assert rec["verdict"] == "partly: parts disagree (partly: train-mode loss; not reproduced: eval-mode accuracy)"


def test_two_orders_judged_on_band_edge_and_median():
    n = len(STEPS)
    spiky = [1.0] * 5 + [100.0] + [1.0] * (n - 6)  # one spike after the early window: band edge 100x, median 1x
    doc = vgg_doc([vgg_run("standard", 0.1, [0.5] * 11, gradpred=spiky), vgg_run("batchnorm", 0.1, [0.5] * 11)],
                  ["E4"])
    rec = by_id(rules.judge(doc, {}))["vgg.e4.gradpred_two_orders"]
    assert rec["verdict"] == ("partly: parts disagree (reproduced: band edge, whole run; "
                              "not reproduced: band edge, early, median, early, median, whole run)")
    doc["runs"]["standard_lr0.1_seed0"]["landscape"]["gradpred_max"] = [1.0] + [100.0] * (n - 1)
    assert by_id(rules.judge(doc, {}))["vgg.e4.gradpred_two_orders"]["verdict"] == "reproduced"


def test_claims_over_seeds_in_the_record():
    runs = []
    for seed, std_acc in ((0, 0.5), (1, 0.5), (2, 0.8)):  # BN 0.2 ahead on seeds 0, 1; behind on seed 2
        runs += [vgg_run("standard", 0.01, [0.1] + [std_acc] * 10, seed=seed),
                 vgg_run("batchnorm", 0.01, [0.1] + [0.7] * 10, seed=seed)]
    rec = by_id(rules.judge(vgg_doc(runs, ["E3"]), {}))["vgg.e1.bn_faster_lr0.01"]
    assert rec["verdict"] == "reproduced: reproduced on 2, opposite on 1 of 3 seeds" and rec["holds_on"] == "2 of 3 seeds"
    gap = rec["measured"]["over_seeds"]["train acc gap BN - standard, early mean"]
    assert gap == pytest.approx({"median": 0.2, "min": -0.1, "max": 0.2})
    assert [s["verdict"] for s in rec["seeds"]] == ["reproduced", "reproduced", "opposite"]
    # the summary cell counts seeds once, and a claim not judged claims no seeds
    assert verdicts.verdict_text(rec) == "**reproduced**: reproduced on 2, opposite on 1 of 3 seeds"
    uniform = dict(rec, verdict="partly", holds_on="0 of 3 seeds (partly on 3)")
    assert verdicts.verdict_text(uniform) == "**partly**; reproduced on 0 of 3 seeds (partly on 3)"
    skipped = dict(rec, verdict="not judged: standard at LR 1 diverged at step 2", holds_on="0 of 1 seeds")
    assert verdicts.verdict_text(skipped) == "**not judged**: standard at LR 1 diverged at step 2"
