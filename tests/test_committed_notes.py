"""The numbers a committed study's hand-written notes quote are the committed results': each is
recomputed here from results.json and claims.json, so a note cannot say more than the numbers."""

import json
import pathlib

import numpy as np
import pytest

from minibn import report
from minibn.studies import dln_report

ROOT = pathlib.Path(__file__).resolve().parents[1]
DLN = ROOT / "studies" / "dln"


@pytest.fixture(scope="module")
def dln():
    doc = json.loads((DLN / "results.json").read_text())
    claims = {r["id"]: r for r in json.loads((DLN / "claims.json").read_text())}
    notes = " ".join((DLN / "notes.md").read_text().split())
    return doc, claims, notes


def _run(doc, variant, lr, seed):
    return doc["runs"][f"{variant}_lr{lr:g}_seed{seed}"]


def _seeds(doc):
    return sorted({r["seed"] for r in doc["runs"].values()})


def _range(values):
    return f"{report.fmt(min(values))}-{report.fmt(max(values))}"


def test_edge_of_stability_ranges(dln):
    doc, _, notes = dln

    def edge(v, lr):
        return [_run(doc, v, lr, s)["hessian_top"] * lr / 2 for s in _seeds(doc)]

    four = [x for v in ("standard", "batchnorm", "l1", "l2") for x in edge(v, 1e-6)]
    assert f"between {report.fmt(min(four))} and {report.fmt(max(four))} on every seed" in notes
    assert f"(linf {_range(edge('linf', 1e-6))}, noisy BN {_range(edge('noisy', 1e-6))})" in notes
    assert f"BN is at the edge too ({_range(edge('batchnorm', 1e-7))}) while the standard network is not " \
           f"({_range(edge('standard', 1e-7))})" in notes


def test_beta_eff_near_two_over_lr(dln):
    doc, _, notes = dln
    fractions = {}
    for v in ("batchnorm", "l1", "l2"):
        fractions[v] = []
        for s in _seeds(doc):
            ls = _run(doc, v, 1e-6, s)["landscape"]
            b = np.array([np.nan if x is None else x for x, t in zip(ls["beta_eff"], ls["steps"]) if t > 0])
            fractions[v].append(float((np.isfinite(b) & (b >= 1e6) & (b <= 4e6)).mean()))
    under_half = sum(f < 0.5 for f in fractions["batchnorm"])
    assert (f"BN {_range(fractions['batchnorm'])} (under half on {under_half} of {len(_seeds(doc))} seeds), "
            f"L1 {_range(fractions['l1'])}, L2 {_range(fractions['l2'])}") in notes


def test_bn_landscape_larger_at_the_small_lr(dln):
    _, claims, notes = dln
    medians = [s["values"][f"LR 1e-07 ratio median whole run"] for cid in
               ("dln.e4.gradpred_orders", "dln.e4.loss_variation", "dln.e4.beta_eff") for s in claims[cid]["seeds"]]
    assert all(r < 1 for r in medians)      # standard / BN below 1: BN's larger, on every seed
    assert "are larger than the standard network's on every seed" in notes


def test_ics_parts_and_noisy_bn(dln):
    doc, claims, notes = dln
    counts = {}
    for lr in (1e-6, 1e-7):
        held = [s["values"][f"LR {lr:g} layer {k} cos standard, {w}"] >= 0.9 and
                abs(s["values"][f"LR {lr:g} layer {k} cos BN, {w}"]) <= 0.2
                for s in claims["dln.e3.ics_standard_cos1_bn_cos0"]["seeds"] for k in (9, 17)
                for w in ("early", "whole run")]
        counts[lr] = (sum(held), len(held))
    assert (f"{counts[1e-6][0]} of {counts[1e-6][1]} hold at LR 1e-6 and {counts[1e-7][0]} of {counts[1e-7][1]} "
            f"at LR 1e-7") in notes
    seeds = _seeds(doc)
    ratio = [_run(doc, "noisy", 1e-6, s)["loss"][-1] / _run(doc, "batchnorm", 1e-6, s)["loss"][-1] for s in seeds]
    above = sum(_run(doc, "noisy", 1e-6, s)["loss"][-1] > _run(doc, "standard", 1e-6, s)["loss"][-1] for s in seeds)
    assert f"its final loss is {_range(ratio)}x BN's on all five seeds, and " \
           f"above the standard network's on {above} of {len(seeds)}" in notes


def test_the_common_plateau(dln):
    doc, _, notes = dln
    same = {seed: ok for lr, seed, _, ok in dln_report.plateaus(doc) if lr == 1e-6}
    assert [s for s, ok in same.items() if ok] == [0, 1, 2]
    assert "within 1% of one common final loss on seeds 0, 1 and 2 at LR 1e-6" in notes
