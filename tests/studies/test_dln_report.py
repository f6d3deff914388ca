"""The DLN report's windows and plateau detection on hand-made results (its claims: tests/claims/test_dln.py)."""

from minibn import results
from minibn.studies import dln_report


def test_early_window_is_the_first_fifth_after_step_zero():
    steps = list(range(0, 1100, 100))  # 0, 100, ..., 1000: ten points after step 0
    assert results.window(steps, early=True) == [1, 2]
    assert results.window(steps) == list(range(1, 11))
    assert results.window([0, 100], early=True) == [1]
    assert results.window([0], early=True) == []


def _final(variant, seed, final):
    return {"variant": variant, "lr": 1e-6, "seed": seed, "steps": [0, 10], "loss": [final * 2, final]}


def test_plateau_detection():
    doc = {"runs": {f"{v}_{s}": _final(v, s, f) for v, s, f in (("batchnorm", 0, 100.0), ("l2", 0, 100.5),
                                                               ("batchnorm", 1, 100.0), ("l2", 1, 150.0))}}
    assert [p[3] for p in dln_report.plateaus(doc)] == [True, False]
