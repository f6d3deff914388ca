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


# --- studies/vgg/cpu ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def vgg_cpu():
    folder = ROOT / "studies" / "vgg" / "cpu"
    claims = {r["id"]: {s["seed"]: s["values"] for s in r["seeds"]} for r in
              json.loads((folder / "claims.json").read_text())}
    return claims, " ".join((folder / "notes.md").read_text().split())


def _two(x):
    return f"{x:.2f}"


def test_vgg_cpu_e1_and_e2(vgg_cpu):
    claims, notes = vgg_cpu
    e1 = claims["vgg.e1.standard_fails_lr0.5"]
    at_chance = [s for s, v in e1.items() if v["standard leaves chance at step"] is None]
    assert at_chance == [1] and "stays at chance for the whole run on seed 1 only" in notes
    assert {e1[s]["standard leaves chance at step"] for s in (0, 2)} == {1000}
    assert (f"ends at {_two(e1[0]['standard final train acc'])} and {_two(e1[2]['standard final train acc'])} "
            f"training accuracy, against BN's {_two(e1[0]['BN final train acc'])} and "
            f"{_two(e1[2]['BN final train acc'])}") in notes
    e2 = claims["vgg.e2.noisy_matches_bn"]
    loss = [v["train loss noisy / BN"] for v in e2.values()]
    below = [-v["eval train acc noisy - BN"] for v in e2.values()]
    assert f"train-mode loss is {_two(min(loss))}–{_two(max(loss))}× BN's" in notes
    assert f"its accuracy is {_two(min(below))}–{_two(max(below))} below BN's" in notes
    assert [s for s, v in e2.items() if v["eval train acc noisy - standard"] < 0] == [1, 2]
    stops = claims["vgg.e2.noise_stops_standard"]
    noisy = [v["standard+noise final train acc"] for v in stops.values()]
    plain = [v["standard final train acc"] for v in stops.values()]
    assert f"reaches {_two(min(noisy))}–{_two(max(noisy))} training accuracy" in notes
    assert f"standard net's level ({_two(min(plain))}–{_two(max(plain))})" in notes
    assert [s for s, v in stops.items() if v["standard+noise final train acc"] > v["standard final train acc"]] == [0]


def test_vgg_cpu_e3_and_e4(vgg_cpu):
    claims, notes = vgg_cpu
    e3 = claims["vgg.e3.ics_not_reduced"]
    gaps = {w: [e3[s][f"LR 0.1 layer 6 cos BN - standard, {w}"] for s in (0, 1, 2)] for w in ("early", "whole run")}
    assert f"by {', '.join(map(_two, gaps['early'][:2]))} and {_two(gaps['early'][2])} (seeds 0, 1, 2)" in notes
    assert f"by {', '.join(map(_two, gaps['whole run'][:2]))} and {_two(gaps['whole run'][2])} over the whole" in notes
    above = sum(g > 0.1 for w in gaps.values() for g in w)
    assert f"above the rule's margin of 0.1 in {above} of these 6 windows" in notes
    e4 = claims["vgg.e4.gradpred_two_orders"]
    early = float(np.median([v["ratio median early"] for v in e4.values()]))
    edge = float(np.median([v["ratio band edge whole run"] for v in e4.values()]))
    assert f"by {early:.1f}× (median, early) to {edge:.1f}× (band edge, whole run)" in notes
