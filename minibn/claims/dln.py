"""The deep linear network study's claims (docs/protocol.md §4a, ``dln.*``): statements and rules,
then one pure judge per claim.

Every rule reads the runs of one seed (``get(variant, lr)``, :func:`minibn.results.finder`) at every
learning rate the study ran, and returns ``(verdict, {value name: number})``; :func:`judge` judges
every claim per seed and over seeds (:mod:`minibn.claims.verdicts`). The loss-scale claim reads the
singular values of the target each run recorded (its rank-k residuals explain a plateau).
docs/dln.md holds :data:`RULES` verbatim (a test checks it).
"""

import math

#: When the rules were written, relative to the committed runs (the reports say it).
WRITTEN = ("written on 2026-12-02 (commit 42888f0), after the runs committed in studies/dln (2026-11-28) had been "
           "seen, before those of studies/dln-normalizers")

from minibn.claims.verdicts import (MARGIN, NOT_REPRODUCED, OPPOSITE, PARTLY, READING, REPRODUCED, WINDOWS,
                                    combine, divergence, landscape_ratio_parts, not_judged, ratio, ratio_verdict,
                                    record, smooth_as_bn_parts, window_stat)
from minibn.results import finder, final_loss, floats, lrs_of, rank_residuals, seeds_of


RULES = {
    "dln.loss_scale": (
        "the summed loss of the paper's DLN runs",
        "starts near 4-5e4; at 10k steps, LR 1e-6: standard 1.7e3, BN 5e2, L1 1e2, L2 5e2, Linf 1e3; LR 1e-7: "
        "standard 4e3, BN 7e2 (fig. 3, 5b)",
        "initial and final summed loss of each run the paper plots, beside the paper's, and the rank k of the "
        "best rank-k linear fit of the target whose residual (sum of the squared singular values of Y beyond "
        "the k-th, regenerated from the seed) is nearest the final loss",
        "each value within half an order of magnitude (a factor sqrt(10): reading a log-scale figure) of "
        "the paper's (the initial loss of the range 4e4-5e4): all reproduced, some partly, none not "
        "reproduced; the rank-k plateau is the measured explanation of a difference, not part of the verdict; "
        "a diverged run: not judged; a study not at the paper's setting: not judged"),
    "dln.e3.ics_standard_cos1_bn_cos0": (
        "standard DLN: cos(G, G') ~ 1 throughout; BN: G and G' nearly uncorrelated, yet BN reaches a lower loss",
        "cos ~ 1 (standard) vs ~ 0 (BN) at layers 9 and 17, LR 1e-6 and 1e-7 (fig. 3)",
        "median cos(G, G') of layers {layers} in each window, and the final losses, at every LR",
        "per LR, layer and window (early, whole run): reproduced when the standard net's median cosine is "
        ">= 0.9 and BN's |cosine| <= 0.2, partly when the standard net's exceeds BN's by >= 0.5, opposite "
        "when BN's exceeds the standard net's by >= 0.5, else not reproduced; per LR, BN's lower final loss "
        f"is a clear difference beyond {MARGIN}x; parts that disagree give at most partly"),
    "dln.e4.gradpred_orders": (
        "BN's gradient is more predictive by many orders of magnitude",
        "standard up to about 1e16 early, BN <= 1e5-1e6 (fig. 10): 10 orders",
        "ratio standard / BN of max ||grad L(w - eta' g) - g|| over the grid, band edge and median, each window "
        "and LR",
        f"per LR, statistic and window: ratio >= 1e10 / sqrt(10) reproduced, >= {MARGIN} partly, within "
        f"{MARGIN}x not reproduced, below 1/{MARGIN} opposite; band edge and median or windows that disagree "
        "give at most partly"),
    "dln.e4.loss_variation": (
        "the loss along the gradient varies far less with BN",
        "loss range: standard up to about 1e14 early, BN <= 1e5-1e6 (fig. 10): 8 orders",
        "ratio standard / BN of the largest loss L(w - eta' g) over the grid (the band's upper edge), band edge "
        "and median, each window and LR",
        f"per LR, statistic and window: ratio >= 1e8 / sqrt(10) reproduced, >= {MARGIN} partly, within "
        f"{MARGIN}x not reproduced, below 1/{MARGIN} opposite; parts that disagree give at most partly"),
    "dln.e4.beta_eff": (
        "effective beta-smoothness is far smaller and flat with BN",
        "standard up to 1e15 early and spiky, BN flat near 1e7 (fig. 10): 8 orders",
        "beta_eff: ratio standard / BN of band edge and median (level), and of log10 max/min (spikiness), each "
        "window and LR",
        f"per LR, statistic and window: level ratio >= 1e8 / sqrt(10) reproduced, >= {MARGIN} partly; "
        f"spikiness ratio >= {MARGIN} reproduced; within {MARGIN}x not reproduced, below 1/{MARGIN} opposite; "
        "parts that disagree give at most partly"),
    "dln.e5.l1_beats_bn": (
        "on the DLN, L1 beats BN",
        "fig. 5b at 10k steps: L1 ~ 1e2 < BN ~ L2 ~ 5e2 < Linf ~ 1e3 < standard ~ 1.7e3",
        "ratio of final losses BN / L1 (and L2, Linf, standard over L1) at the LR of the Lp runs",
        f"ratio >= 5 / sqrt(10) reproduced, >= {MARGIN} partly, within {MARGIN}x not reproduced, below "
        f"1/{MARGIN} opposite; a diverged run: not judged"),
    "dln.e5.lp_smooth_as_bn": (
        "all Lp variants smooth the DLN landscape as BN does", "fig. 13",
        "per Lp variant: band edge of gradient predictiveness, beta_eff and loss against BN's and the standard "
        "net's, each window",
        f"per variant, measure and window: at most sqrt(10)x BN's reproduced, {MARGIN}x below the standard "
        f"net's partly, {MARGIN}x above it opposite, else not reproduced; a diverged run: not judged for it; "
        "parts that disagree give at most partly"),
}


#: fig. 3 and 5b of the paper: the summed loss at 10k steps, by (variant, LR); it starts near 4-5e4.
PAPER_FINAL = {("standard", 1e-6): 1.7e3, ("batchnorm", 1e-6): 5e2, ("l1", 1e-6): 1e2, ("l2", 1e-6): 5e2,
                   ("linf", 1e-6): 1e3, ("standard", 1e-7): 4e3, ("batchnorm", 1e-7): 7e2}
PAPER_INITIAL = (4e4, 5e4)
PAPER_SETTING = {"depth": 25, "width": 10, "samples": 1000, "steps": 10_000}


def plateau(loss, residuals):
    """``(k, loss / r_k)``: the rank-k fit whose residual is nearest the loss on a log scale."""
    if not (math.isfinite(loss) and loss > 0):
        return None, math.nan
    k = min((k for k, r in enumerate(residuals) if r > 0), key=lambda k: abs(math.log(loss / residuals[k])))
    return k, loss / residuals[k]


def cos_layers(doc):
    layers = next(iter(doc["runs"].values()))["ics"]["layers"]
    if all(k in layers for k in (9, 17)):
        return [9, 17]
    depth = doc["config"]["depth"]
    return sorted({min(len(layers), max(2, round(k * depth / 25))) for k in (9, 17)})


def _within_reading(measured, paper):
    return math.isfinite(measured) and paper / READING <= measured <= paper * READING


def _loss_scale(doc, get, seed):
    cfg = doc["config"]
    differs = {k: cfg.get(k) for k, v in PAPER_SETTING.items() if cfg.get(k) != v}
    if differs:
        return not_judged(f"the paper's values are for {PAPER_SETTING}; this study has {differs}"), {}
    parts, values = {}, {}
    for (variant, lr), paper in PAPER_FINAL.items():
        run = get(variant, lr)
        if run is None:
            continue
        name = f"{variant} LR {lr:g}"
        if run["diverged_at"] is not None:
            parts[name] = not_judged(f"{name} diverged at step {run['diverged_at']}")
            continue
        if "target_singular_values" not in run:
            parts[name] = not_judged(f"{name} did not record its target's singular values")
            continue
        residuals = rank_residuals(run["target_singular_values"])
        first, end = floats(run["loss"])[0], final_loss(run)
        lo, hi = PAPER_INITIAL
        start_ratio = first / lo if first < lo else first / hi if first > hi else 1.0
        k, to_rk = plateau(end, residuals)
        values[f"{name} initial / paper"] = start_ratio
        values[f"{name} final / paper"] = end / paper
        values[f"{name} ends on rank"] = k
        values[f"{name} final / rank-{k} residual"] = to_rk
        parts[f"{name} initial"] = REPRODUCED if _within_reading(start_ratio, 1.0) else NOT_REPRODUCED
        parts[f"{name} final"] = REPRODUCED if _within_reading(end, paper) else NOT_REPRODUCED
    return (combine(parts) if parts else not_judged("none of the paper's runs")), values


def _cos(doc, get):
    parts, values = {}, {}
    for lr in lrs_of(doc):
        std, bn = get("standard", lr), get("batchnorm", lr)
        if std is None or bn is None:
            continue
        why = divergence({f"standard at LR {lr:g}": std, f"BN at LR {lr:g}": bn})
        if why:
            return not_judged(why), values
        gap = ratio(final_loss(std), final_loss(bn))
        values[f"LR {lr:g} final loss standard / BN"] = gap
        parts[f"LR {lr:g} BN lower loss"] = ratio_verdict(gap)
        for k in cos_layers(doc):
            j = std["ics"]["layers"].index(k)
            for wname, early in WINDOWS:
                cos = {v: window_stat(r["ics"]["steps"], [row[j] for row in r["ics"]["cos"]], early, "median")
                       for v, r in (("std", std), ("bn", bn))}
                values[f"LR {lr:g} layer {k} cos standard, {wname}"] = cos["std"]
                values[f"LR {lr:g} layer {k} cos BN, {wname}"] = cos["bn"]
                name = f"LR {lr:g} layer {k}, {wname}"
                if not (math.isfinite(cos["std"]) and math.isfinite(cos["bn"])):
                    parts[name] = not_judged(f"cosine not finite at LR {lr:g} layer {k}")
                elif cos["std"] >= 0.9 and abs(cos["bn"]) <= 0.2:
                    parts[name] = REPRODUCED
                elif cos["std"] - cos["bn"] >= 0.5:
                    parts[name] = PARTLY
                elif cos["bn"] - cos["std"] >= 0.5:
                    parts[name] = OPPOSITE
                else:
                    parts[name] = NOT_REPRODUCED
    return (combine(parts) if parts else not_judged("no standard and BN pair")), values


def _pairs(doc, get, variant):
    return [(lr, get("standard", lr), get(variant, lr)) for lr in lrs_of(doc)
            if get("standard", lr) is not None and get(variant, lr) is not None]


def _landscape(doc, get, key, paper_ratio, spread=False):
    parts, values = {}, {}
    for lr, std, bn in _pairs(doc, get, "batchnorm"):
        why = divergence({f"standard at LR {lr:g}": std, f"BN at LR {lr:g}": bn})
        if why:
            return not_judged(why), values
        p, v = landscape_ratio_parts(std, bn, key, paper_ratio, prefix=f"LR {lr:g} ")
        parts.update(p)
        values.update(v)
        if spread:
            p, v = landscape_ratio_parts(std, bn, key, None, stats=(("log10 max/min", "spread"),),
                                         prefix=f"LR {lr:g} spread ")
            parts.update(p)
            values.update(v)
    return (combine(parts) if parts else not_judged("no standard and BN pair")), values


def _l1_beats_bn(doc, get):
    parts, values = {}, {}
    for lr, _, l1 in _pairs(doc, get, "l1"):
        bn = get("batchnorm", lr)
        why = divergence({f"BN at LR {lr:g}": bn, f"L1 at LR {lr:g}": l1})
        if why:
            return not_judged(why), values
        r = ratio(final_loss(bn), final_loss(l1))
        values[f"LR {lr:g} final loss BN / L1"] = r
        for v in ("l2", "linf", "standard"):
            other = get(v, lr)
            if other is not None and other["diverged_at"] is None:
                values[f"LR {lr:g} final loss {v} / L1"] = ratio(final_loss(other), final_loss(l1))
        parts[f"LR {lr:g}"] = ratio_verdict(r, 5)
    return (combine(parts) if parts else not_judged("no L1 and BN pair")), values


def _lp_smooth(doc, get):
    parts, values = {}, {}
    for v in ("l1", "l2", "linf"):
        for lr, std, run in _pairs(doc, get, v):
            bn = get("batchnorm", lr)
            why = divergence({f"standard at LR {lr:g}": std, f"BN at LR {lr:g}": bn, f"{v} at LR {lr:g}": run})
            if why:
                parts[f"{v} LR {lr:g}"] = not_judged(why)
                continue
            p, vals = smooth_as_bn_parts(v, run, bn, std, ("gradpred_max", "beta_eff", "loss_max"), "edge")
            parts.update(p)
            values.update(vals)
    return (combine(parts) if parts else not_judged("no Lp run")), values


def judge(doc, ids=None):
    """The claims.json records of a DLN study: every §4a DLN claim (``ids``: only these)."""
    judges = {
        "dln.loss_scale": lambda get, seed: _loss_scale(doc, get, seed),
        "dln.e3.ics_standard_cos1_bn_cos0": lambda get, seed: _cos(doc, get),
        "dln.e4.gradpred_orders": lambda get, seed: _landscape(doc, get, "gradpred_max", 1e10),
        "dln.e4.loss_variation": lambda get, seed: _landscape(doc, get, "loss_max", 1e8),
        "dln.e4.beta_eff": lambda get, seed: _landscape(doc, get, "beta_eff", 1e8, spread=True),
        "dln.e5.l1_beats_bn": lambda get, seed: _l1_beats_bn(doc, get),
        "dln.e5.lp_smooth_as_bn": lambda get, seed: _lp_smooth(doc, get),
    }
    headlines = {"dln.loss_scale": [f"{v} LR 1e-06 {what} / paper" for v, what in
                                    (("standard", "initial"), ("standard", "final"), ("batchnorm", "final"),
                                     ("l1", "final"))],
                 "dln.e3.ics_standard_cos1_bn_cos0": ["LR 1e-06 layer 17 cos standard, whole run",
                                                      "LR 1e-06 layer 17 cos BN, whole run",
                                                      "LR 1e-06 final loss standard / BN"]}
    records = []
    for claim_id, judge_seed in judges.items():
        if ids is not None and claim_id not in ids:
            continue
        statement, paper, quantity, rule = RULES[claim_id]
        per_seed = {seed: judge_seed(finder(doc, seed), seed) for seed in seeds_of(doc)}
        records.append(record(claim_id, statement, paper, quantity.format(layers=cos_layers(doc)), rule,
                              per_seed, headlines.get(claim_id)))
    return records

