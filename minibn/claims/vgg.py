"""The VGG / CIFAR-10 study's claims (docs/protocol.md §4a, ``vgg.*``): statements and rules, then
one pure judge per claim.

Every rule reads the runs of one seed (``get(variant, lr)``, :func:`minibn.results.finder`) and
returns ``(verdict, {value name: number})``; :func:`judge` judges every claim whose experiment the
study ran, per seed and over seeds (:mod:`minibn.claims.verdicts`). Layer numbers are the paper's
(of VGG-16's 13 conv layers) scaled to the net (:func:`minibn.results.scaled_layers`).
docs/vgg.md holds :data:`RULES` verbatim (a test checks it).
"""

import math

#: When the rules were written, relative to the committed runs (the reports say it).
WRITTEN = ("written on 2026-12-02 (commit 42888f0), after the runs committed in studies/vgg/cpu (2026-11-28) had "
           "been seen, before those of studies/vgg/cpu-normalizers")

from minibn import backend
from minibn.claims.verdicts import (CHANCE, MARGIN, NEAR_CHANCE, NOT_REPRODUCED, OPPOSITE, PARTLY, READING,
                                    REPRODUCED, WINDOWS, combine, difference_verdict, divergence,
                                    landscape_ratio_parts, not_judged, ratio, ratio_verdict, record,
                                    smooth_as_bn_parts, window_stat)
from minibn.results import (at, conv_count, finder, finite, floats, last, moment_series, name_of, scaled_layers,
                            seeds_of, tail_mean, window)

np = backend.host

RULES = {
    "vgg.e1.bn_faster_lr0.1": (
        "BN trains faster and reaches higher accuracy", "about 83% vs 80% test accuracy at 15k steps",
        "eval-mode training accuracy (mean over the evaluations of each window) and final test accuracy, LR {lr}",
        "per seed, BN minus standard: mean training accuracy in the early window and over the whole run "
        ">= 0.02 (reproduced; <= -0.02 opposite; else not reproduced), and final test accuracy >= 0.02 "
        "(reproduced; > 0.005 partly; >= -0.005 not reproduced; else opposite); parts that disagree give at "
        "most partly; a diverged run: not judged"),
    "vgg.e1.bn_faster_lr0.01": (
        "BN trains faster at LR 0.01 too", "fig. 3: BN's training curve above the standard net's",
        "eval-mode training accuracy, mean over the evaluations of each window, LR {lr_low}",
        "per seed, BN minus standard mean training accuracy >= 0.02 in the early window and over the whole "
        "run (reproduced; <= -0.02 opposite; else not reproduced); windows that disagree give at most partly"),
    "vgg.e1.standard_fails_lr0.5": (
        "at LR 0.5 the standard net does not train, BN does", "fig. 1: standard near chance (10%), BN trains",
        "eval-mode training accuracy at LR {lr_high}: the standard net's highest, BN's final, and the step where "
        "the standard net leaves chance",
        f"per window (early, whole run): reproduced when the standard net's training accuracy never exceeds "
        f"{NEAR_CHANCE} (chance + 0.1; evaluations before a divergence count, a divergence is a failure to "
        f"train) and BN's final training accuracy is >= {CHANCE + 0.3:g}; when the standard net leaves chance, "
        "partly if BN ends more than 0.1 above it, else not reproduced (opposite when the standard net ends "
        "0.1 above a BN net that does not train); BN diverging: not reproduced; windows that disagree give "
        "at most partly"),
    "vgg.e2.noisy_matches_bn": (
        "noisy BN trains about as well as BN, far better than standard",
        "fig. 2: the curves of noisy BN and BN nearly overlap",
        "training loss (train mode: mean of the last 10% of steps) and eval-mode training accuracy (last "
        "evaluation), LR {lr}",
        "per mode: reproduced when noisy BN is close to BN (train-mode loss at most 1.1x BN's; eval accuracy "
        "at most 0.05 below BN's) and beats the standard net (loss 1.2x lower; accuracy 0.05 higher); opposite "
        "when it is worse than the standard net (loss 1.2x higher; accuracy 0.05 lower); partly when only one "
        "of close/beats holds; else not reproduced; modes that disagree give at most partly; a diverged "
        "run: not judged"),
    "vgg.e2.noise_stops_standard": (
        "the same noise added to a standard net \"prevents it from training entirely\"",
        "\"prevents it from training entirely\": near chance",
        "eval-mode training accuracy of standard_noisy (highest and final) and of the standard net, LR {lr}",
        f"reproduced when standard_noisy's training accuracy never exceeds {NEAR_CHANCE} (chance + 0.1) or it "
        "diverges; else partly when its final gain over chance is at most half the standard net's, opposite "
        "when it exceeds the standard net's by 0.02, not reproduced otherwise"),
    "vgg.e2.noisy_moments_unstable": (
        "noisy BN's layer inputs are far less stable than BN's", "fig. 2, 8: far less stable",
        "ratio noisy BN / BN of the median step-to-step change of the moments (mean over units of |dmu| and "
        "|dvar|), conv layers {layers_moments}, LR {lr}",
        f"per layer, moment and window (early, whole run): ratio >= 2 (\"far\") reproduced, >= {MARGIN} partly, "
        f"within {MARGIN}x not reproduced, below 1/{MARGIN} opposite; parts that disagree give at most partly"),
    "vgg.e3.ics_not_reduced": (
        "BN does not reduce ICS (Definition 2.1)", "similar or larger ||G - G'||, similar cosines (fig. 3, "
        "layers 5 and 10, LR 0.1 and 0.01)",
        "median ||G - G'|| and cos(G, G') of conv layers {layers_ics} in each window, LR {lr} and {lr_low}",
        "per LR, layer and window (early, whole run): BN reduces the shift in ||G - G'|| when standard / BN "
        ">= 2 and in the cosine when BN's exceeds the standard net's by more than 0.1; neither: reproduced, "
        "one: partly, both: opposite; parts that disagree give at most partly; a diverged run: not judged"),
    "vgg.e4.gradpred_two_orders": (
        "BN's gradient is more predictive: \"close to two orders of magnitude\" early",
        "\"close to two orders of magnitude\" (fig. 4b: standard up to about 250, BN mostly below 30)",
        "ratio standard / BN of max ||grad L(w - eta' g) - g|| over the grid, band edge and median, LR {lr}",
        f"per statistic and window: ratio >= 100 / sqrt(10) = {100 / READING:.3g} reproduced, >= {MARGIN} partly, "
        f"within {MARGIN}x not reproduced, below 1/{MARGIN} opposite; band edge and median or windows that "
        "disagree give at most partly"),
    "vgg.e4.loss_variation_smaller": (
        "loss variation along the gradient is smaller with BN",
        "fig. 4a: standard up to about 10 early, BN a narrow band from about 4 to 0.6",
        "ratio standard / BN of the loss spread max - min of L(w - eta' g) over the grid, band edge and median, "
        "LR {lr}",
        f"per statistic and window: ratio >= max({MARGIN}, 10/4 / sqrt(10)) reproduced, within {MARGIN}x not "
        f"reproduced, below 1/{MARGIN} opposite; parts that disagree give at most partly"),
    "vgg.e4.beta_eff_smaller": (
        "effective beta-smoothness is smaller and steadier with BN",
        "fig. 4c: BN flat near 20, standard between 5 and 45",
        "beta_eff: ratio standard / BN of its band edge (level) and of its log10 max/min (steadiness), LR {lr}",
        f"per window: level ratio >= max({MARGIN}, 45/20 / sqrt(10)) and steadiness ratio >= {MARGIN} each "
        f"reproduced (within {MARGIN}x not reproduced, below 1/{MARGIN} opposite); parts that disagree give "
        "at most partly"),
    "vgg.e5.lp_as_bn": (
        "L1, L2, Linf train as fast as BN and smooth the landscape as much", "fig. 5, 6, 12",
        "per Lp variant: mean eval-mode training accuracy against BN's, and median gradient predictiveness "
        "and beta_eff against BN's and the standard net's, LR {lr}",
        "per variant: trains as fast when its mean training accuracy is at least BN's - 0.05 (partly: 0.05 "
        "above the standard net's; opposite: 0.05 below it); smooths as much, per measure and window, when its "
        f"median is at most sqrt(10)x BN's (partly: {MARGIN}x below the standard net's; opposite: {MARGIN}x "
        "above it); a diverged Lp run is opposite; parts that disagree give at most partly"),
    "vgg.e5.lp_not_gaussian": (
        "the Lp variants do this without Gaussian-like activations", "fig. 12: non-Gaussian histograms",
        "skewness and excess kurtosis of one unit's pre-activations (train mode) at the last step, conv layers "
        "{layers_shape}; BN's beside them",
        "per Lp variant and layer: non-Gaussian (reproduced) when |skewness| > 0.5 or |excess kurtosis| > 1 "
        "(about 3 standard errors for 256 Gaussian samples), else not reproduced; parts that disagree give "
        "at most partly"),
}


def _mean_in_window(run, key, early):
    a = finite(at(run.get(key) or [], window(run["eval_steps"], early)))
    return float(a.mean()) if a.size else math.nan



def _bn_faster(get, rate, with_test):
    std, bn = get("standard", rate), get("batchnorm", rate)
    why = divergence({"standard": std, "BN": bn})
    if why:
        return not_judged(why), {}
    parts, values = {}, {}
    for wname, early in WINDOWS:
        gap = _mean_in_window(bn, "train_acc", early) - _mean_in_window(std, "train_acc", early)
        values[f"train acc gap BN - standard, {wname} mean"] = gap
        parts[f"faster, {wname}"] = difference_verdict(gap, 0.02, 0.02)
    if with_test:
        gap = last(bn, "test_acc") - last(std, "test_acc")
        values["final test acc gap BN - standard"] = gap
        parts["higher final test accuracy"] = difference_verdict(gap, 0.02, 0.005)
    return combine(parts), values


def _standard_fails(get, rate):
    std, bn = get("standard", rate), get("batchnorm", rate)
    if std is None or bn is None:
        return not_judged(f"no standard or BN run at LR {rate:g}"), {}
    if bn["diverged_at"] is not None:
        return NOT_REPRODUCED, {"BN diverged at step": bn["diverged_at"]}
    bn_final = last(bn, "train_acc")
    acc = floats(std.get("train_acc") or [])
    above = [s for s, a in zip(std["eval_steps"], acc) if math.isfinite(a) and a > NEAR_CHANCE]
    values = {"standard max train acc": float(np.max(finite(acc))) if finite(acc).size else math.nan,
              "BN final train acc": bn_final, "standard final train acc": last(std, "train_acc"),
              "standard leaves chance at step": above[0] if above else None}
    if std["diverged_at"] is not None:
        values["standard diverged at step"] = std["diverged_at"]
    parts = {}
    for wname, early in WINDOWS:
        seen = finite(at(acc, window(std["eval_steps"], early)))
        near = not (seen > NEAR_CHANCE).any()  # a diverged standard net's evaluations before divergence count
        std_final = last(std, "train_acc") if std["diverged_at"] is None else CHANCE
        if bn_final < CHANCE + 0.3:
            parts[wname] = NOT_REPRODUCED if near else OPPOSITE if std_final > bn_final + 0.1 else NOT_REPRODUCED
        elif near:
            parts[wname] = REPRODUCED
        else:
            parts[wname] = difference_verdict(bn_final - std_final, math.inf, 0.1)
    return combine(parts), values


def _noisy_matches_bn(get, lr):
    std, bn, noisy = get("standard", lr), get("batchnorm", lr), get("noisy", lr)
    why = divergence({"standard": std, "BN": bn, "noisy BN": noisy})
    if why:
        return not_judged(why), {}
    ln, lb, ls = tail_mean(noisy["loss"]), tail_mean(bn["loss"]), tail_mean(std["loss"])
    an, ab, as_ = last(noisy, "train_acc"), last(bn, "train_acc"), last(std, "train_acc")
    values = {"train loss noisy / BN": ratio(ln, lb), "eval train acc noisy - BN": an - ab,
              "eval train acc noisy - standard": an - as_, "train loss noisy / standard": ratio(ln, ls)}

    def mode(close, beats, worse):
        return REPRODUCED if close and beats else OPPOSITE if worse else PARTLY if close or beats else NOT_REPRODUCED

    parts = {"train-mode loss": mode(ln <= 1.1 * lb, ln * MARGIN < ls, ln > MARGIN * ls),
             "eval-mode accuracy": mode(an >= ab - 0.05, an >= as_ + 0.05, an < as_ - 0.05)}
    return combine(parts), values


def _noise_stops_standard(get, lr):
    noisy_std, std = get("standard_noisy", lr), get("standard", lr)
    if noisy_std is None:
        return not_judged("no standard_noisy run"), {}
    acc = finite(floats(noisy_std.get("train_acc") or []))
    top = float(acc.max()) if acc.size else math.nan
    values = {"standard+noise max train acc": top, "standard+noise final train acc": last(noisy_std, "train_acc"),
              "standard final train acc": last(std, "train_acc") if std else math.nan}
    if not (top > NEAR_CHANCE):  # a diverged run's evaluations before divergence count
        return REPRODUCED, values
    why = divergence({"standard": std})
    if why:
        return not_judged(why), values
    if noisy_std["diverged_at"] is not None:
        return REPRODUCED, values
    gain, base = values["standard+noise final train acc"] - CHANCE, values["standard final train acc"] - CHANCE
    if gain > base + 0.02:
        return OPPOSITE, values
    return (PARTLY if gain <= 0.5 * base else NOT_REPRODUCED), values


def _moments_unstable(get, lr, n):
    bn, noisy = get("batchnorm", lr), get("noisy", lr)
    why = divergence({"BN": bn, "noisy BN": noisy})
    if why:
        return not_judged(why), {}
    if not (bn["moments"]["layers"] and noisy["moments"]["layers"]):
        return not_judged("no activation moments recorded"), {}
    parts, values = {}, {}
    for k in scaled_layers(n, (2, 9, 13)):
        for key, what in (("mean_change", "mean change"), ("var_change", "variance change")):
            for wname, early in WINDOWS:
                r = ratio(window_stat(noisy["moments"]["steps"], moment_series(noisy, k)[key], early, "median"),
                          window_stat(bn["moments"]["steps"], moment_series(bn, k)[key], early, "median"))
                values[f"layer {k} {what} noisy / BN, {wname}"] = r
                parts[f"layer {k} {what}, {wname}"] = ratio_verdict(r, 2 * READING)  # "far": at least 2x
    return combine(parts), values


def _ics_not_reduced(get, rates, n):
    parts, values = {}, {}
    for rate in rates:
        std, bn = get("standard", rate), get("batchnorm", rate)
        why = divergence({f"standard at LR {rate:g}": std, f"BN at LR {rate:g}": bn})
        if why:
            return not_judged(why), values
        if not (std.get("ics") and bn.get("ics")):
            return not_judged(f"no ICS measured at LR {rate:g}"), values
        for k in scaled_layers(n, (5, 10)):
            for wname, early in WINDOWS:
                med = {v: {key: window_stat(r["ics"]["steps"], [row[k - 1] for row in r["ics"][key]], early, "median")
                           for key in ("l2", "cos")} for v, r in (("std", std), ("bn", bn))}
                l2_ratio = ratio(med["std"]["l2"], med["bn"]["l2"])
                cos_gap = med["bn"]["cos"] - med["std"]["cos"]
                values[f"LR {rate:g} layer {k} l2 standard / BN, {wname}"] = l2_ratio
                values[f"LR {rate:g} layer {k} cos BN - standard, {wname}"] = cos_gap
                if not (math.isfinite(l2_ratio) and math.isfinite(cos_gap)):
                    parts[f"LR {rate:g} layer {k}, {wname}"] = not_judged(f"ICS not finite at LR {rate:g} layer {k}")
                    continue
                reduced = (l2_ratio >= 2) + (cos_gap > 0.1)
                parts[f"LR {rate:g} layer {k}, {wname}"] = (REPRODUCED, PARTLY, OPPOSITE)[reduced]
    return combine(parts), values


def _landscape(get, lr, key, paper_ratio):
    std, bn = get("standard", lr), get("batchnorm", lr)
    why = divergence({"standard": std, "BN": bn})
    if why:
        return not_judged(why), {}
    if not (std.get("landscape") and bn.get("landscape")):
        return not_judged("no landscape probes"), {}
    if key == "loss_spread":
        std, bn = (dict(r, landscape=dict(r["landscape"], loss_spread=_spread(r["landscape"]))) for r in (std, bn))
    parts, values = landscape_ratio_parts(std, bn, key, paper_ratio)
    return combine(parts), values


def _spread(ls):
    lo, hi = floats(ls["loss_min"]), floats(ls["loss_max"])
    return list(hi - lo)


def _beta_eff(get, lr):
    std, bn = get("standard", lr), get("batchnorm", lr)
    why = divergence({"standard": std, "BN": bn})
    if why:
        return not_judged(why), {}
    parts, values = landscape_ratio_parts(std, bn, "beta_eff", 45 / 20, stats=(("band edge", "edge"),),
                                          prefix="level ")
    steady, steady_values = landscape_ratio_parts(std, bn, "beta_eff", None, stats=(("log10 max/min", "spread"),),
                                                  prefix="spread ")
    return combine({**parts, **steady}), {**values, **steady_values}


def _lp_as_bn(get, lr):
    std, bn = get("standard", lr), get("batchnorm", lr)
    why = divergence({"standard": std, "BN": bn})
    if why:
        return not_judged(why), {}
    parts, values = {}, {}
    for v in ("l1", "l2", "linf"):
        run = get(v, lr)
        if run is None:
            continue
        if run["diverged_at"] is not None:
            parts[v] = OPPOSITE  # it did not train at an LR where BN and the standard net did
            values[f"{v} diverged at step"] = run["diverged_at"]
            continue
        acc = {name: _mean_in_window(r, "train_acc", False) for name, r in (("v", run), ("bn", bn), ("std", std))}
        values[f"{v} train acc - BN (mean over run)"] = acc["v"] - acc["bn"]
        parts[f"{v} trains as fast"] = (REPRODUCED if acc["v"] >= acc["bn"] - 0.05 else
                                        PARTLY if acc["v"] > acc["std"] + 0.05 else
                                        OPPOSITE if acc["v"] < acc["std"] - 0.05 else NOT_REPRODUCED)
        smooth, smooth_values = smooth_as_bn_parts(v, run, bn, std, ("gradpred_max", "beta_eff"), "median")
        parts.update(smooth)
        values.update(smooth_values)
    return (combine(parts) if parts else not_judged("no Lp run")), values



def shape_stats(x):
    """Skewness and excess kurtosis of the finite values of ``x`` (0 and 0 for a Gaussian)."""
    x = finite(np.asarray(x, dtype=float))
    if x.size < 3 or x.std() == 0:
        return math.nan, math.nan
    z = (x - x.mean()) / x.std()
    return float((z ** 3).mean()), float((z ** 4).mean() - 3.0)


def _lp_not_gaussian(doc, arrays, get, lr, n):
    parts, values = {}, {}
    for v in ("batchnorm", "l1", "l2", "linf"):
        run = get(v, lr)
        if run is None:
            continue
        for k in scaled_layers(n, (3, 11)):
            key = f"{name_of(doc, run)}/moments/{k}"
            if key not in arrays:
                return not_judged("no activation samples (results.npz)"), values
            skew, kurt = shape_stats(arrays[key][-1])
            values[f"{v} layer {k} skew"], values[f"{v} layer {k} excess kurtosis"] = skew, kurt
            if v != "batchnorm":  # BN's numbers are the reference shown beside them
                parts[f"{v} layer {k}"] = (not_judged(f"{v} layer {k}: no finite samples") if not math.isfinite(skew)
                                           else REPRODUCED if abs(skew) > 0.5 or abs(kurt) > 1 else NOT_REPRODUCED)
    return (combine(parts) if parts else not_judged("no Lp run")), values


def judge(doc, arrays):
    """The claims.json records of a VGG study: every §4a VGG claim its experiments run."""
    cfg, exps = doc["config"], doc["experiments"]
    lr, hi, lo = cfg["lr"], cfg["lr_high"], cfg["lr_low"]
    n = conv_count(doc)
    judges = {
        "vgg.e1.bn_faster_lr0.1": ("E1", lambda get: _bn_faster(get, lr, True)),
        "vgg.e1.bn_faster_lr0.01": ("E3", lambda get: _bn_faster(get, lo, False)),
        "vgg.e1.standard_fails_lr0.5": ("E1", lambda get: _standard_fails(get, hi)),
        "vgg.e2.noisy_matches_bn": ("E2", lambda get: _noisy_matches_bn(get, lr)),
        "vgg.e2.noise_stops_standard": ("E2", lambda get: _noise_stops_standard(get, lr)),
        "vgg.e2.noisy_moments_unstable": ("E2", lambda get: _moments_unstable(get, lr, n)),
        "vgg.e3.ics_not_reduced": ("E3", lambda get: _ics_not_reduced(get, (lr, lo), n)),
        "vgg.e4.gradpred_two_orders": ("E4", lambda get: _landscape(get, lr, "gradpred_max", 100)),
        "vgg.e4.loss_variation_smaller": ("E4", lambda get: _landscape(get, lr, "loss_spread", 10 / 4)),
        "vgg.e4.beta_eff_smaller": ("E4", lambda get: _beta_eff(get, lr)),
        "vgg.e5.lp_as_bn": ("E5", lambda get: _lp_as_bn(get, lr)),
        "vgg.e5.lp_not_gaussian": ("E5", lambda get: _lp_not_gaussian(doc, arrays, get, lr, n)),
    }
    fill = {"lr": f"{lr:g}", "lr_high": f"{hi:g}", "lr_low": f"{lo:g}",
            "layers_moments": scaled_layers(n, (2, 9, 13)), "layers_ics": scaled_layers(n, (5, 10)),
            "layers_shape": scaled_layers(n, (3, 11))}
    records = []
    for claim_id, (exp, judge_seed) in judges.items():
        if exp not in exps:
            continue
        statement, paper, quantity, rule = RULES[claim_id]
        per_seed = {seed: judge_seed(finder(doc, seed)) for seed in seeds_of(doc)}
        records.append(record(claim_id, statement, paper, quantity.format(**fill), rule, per_seed))
    return records

