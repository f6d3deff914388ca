"""The DLN report's comparison rules on hand-made results, where the right answer is known."""

from minibn import report
from minibn.studies import dln_report


def test_early_window_is_the_first_fifth_after_step_zero():
    steps = list(range(0, 1100, 100))  # 0, 100, ..., 1000: ten points after step 0
    assert report.window(steps, early=True) == [1, 2]
    assert report.window(steps) == list(range(1, 11))
    assert report.window([0, 100], early=True) == [1]
    assert report.window([0], early=True) == []


def _run(variant, seed, cos, l2, beta, final):
    steps = [0, 100, 200, 300, 400, 500]
    n = len(steps)
    return {"variant": variant, "lr": 1e-6, "seed": seed, "steps": steps, "loss": [final * 2, final],
            "ics": {"steps": steps, "layers": [1, 2], "l2": [[0.0, l2]] * n, "cos": [[1.0, cos]] * n},
            "landscape": {"steps": steps, "eta": [1.0], "loss_min": [1.0] * n, "loss_max": [10.0] * n,
                          "gradpred_min": [1.0] * n, "gradpred_max": [beta] * n, "beta_eff": [beta] * n,
                          "nonfinite": [0] * n}}


def _doc(runs):
    return {"runs": {f"{r['variant']}_{r['seed']}": r for r in runs}}


def test_ics_claim_counts_seeds_where_bn_is_not_better_aligned():
    doc = _doc([_run("standard", 0, cos=0.5, l2=1.0, beta=10, final=5), _run("batchnorm", 0, cos=0.9, l2=2.0, beta=1, final=5),
                _run("standard", 1, cos=0.5, l2=1.0, beta=10, final=5), _run("batchnorm", 1, cos=0.1, l2=0.5, beta=1, final=5)])
    _, summary = dln_report.claims(doc)
    row = next(r for r in summary if r[0].startswith("E3"))
    assert row[2] == "1 of 2"  # seed 0: BN's cos is higher (claim fails); seed 1: lower (claim holds)


def test_landscape_claim_counts_smaller_beta_eff():
    doc = _doc([_run("standard", 0, 0.5, 1.0, beta=10, final=5), _run("batchnorm", 0, 0.5, 1.0, beta=1, final=5)])
    _, summary = dln_report.claims(doc)
    early = next(r for r in summary if r[0].startswith("E4") and "early" in r[0])
    assert early[2] == "0 of 1 / 1 of 1 / 1 of 1"  # equal loss variation is not smaller; beta_eff 1 < 10


def test_noisy_claim_uses_a_factor_two_and_plateau_detection():
    doc = _doc([_run("batchnorm", 0, 0.5, 1, 1, final=100.0), _run("noisy", 0, 0.5, 1, 1, final=199.0),
                _run("l2", 0, 0.5, 1, 1, final=100.5), _run("batchnorm", 1, 0.5, 1, 1, final=100.0),
                _run("noisy", 1, 0.5, 1, 1, final=201.0), _run("l2", 1, 0.5, 1, 1, final=150.0)])
    _, summary = dln_report.claims(doc)
    assert next(r for r in summary if r[0].startswith("E2"))[2] == "1 of 2"
    assert [p[3] for p in dln_report.plateaus(doc)] == [True, False]
