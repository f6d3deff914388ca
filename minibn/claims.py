"""The paper's claims (docs/protocol.md §4a), each judged by a rule written in code, per seed and over seeds.

A claim is a record: its id (§4a's), the paper's statement and value, the quantity measured,
the rule (thresholds and windows, in words that match the code below) and a verdict:

    reproduced       the claim holds with the stated magnitude
    partly           the direction holds but not the magnitude, or only in one window / statistic
    not reproduced   no clear difference
    opposite         the reverse holds
    not judged: WHY  a run the rule needs is missing or diverged (a rule never compares with NaN)

A rule judges each seed from its parts (windows, band edge and median, layers, learning
rates, variants); :func:`combine` gives the seed one verdict, and where the parts disagree the
verdict says which part gave what and is at most "partly". :func:`over_seeds` gives the claim's
verdict: "reproduced" when it is reproduced on most seeds (more than half), "opposite" or
"not reproduced" likewise, "partly" otherwise when some seed holds at least partly. The rules
were written from the paper's statements before their outcome on the committed results was
seen; a rule changed after that says so, and why, in its text.

Shared conventions of the rules:

* windows: "early" is the first 20% of the measurement points after step 0, "whole run" all
  points after step 0 (docs/protocol.md §3);
* band edge: the largest value over the window (what the paper's band figures show at their
  top); median: the window's median;
* a ratio in the claim's direction (e.g. standard / BN where BN should be smaller) is a clear
  difference beyond :data:`MARGIN` (20%); where the paper states a magnitude (a ratio read
  off a log-scale figure, or "two orders"), "reproduced" needs the measured ratio within half
  an order of magnitude of it (:data:`READING`), never less than the margin.

Each study's report calls :func:`vgg_claims`, :func:`dln_claims` or :func:`theory_claims`, writes
the records with :func:`write` (``claims.json``) and opens with :func:`summary_table`.
"""

import math
import os
import re

from minibn import backend, io, report

np = backend.host

REPRODUCED, PARTLY, NOT_REPRODUCED, OPPOSITE = "reproduced", "partly", "not reproduced", "opposite"
VERDICTS = (OPPOSITE, NOT_REPRODUCED, PARTLY, REPRODUCED)  # worst to best
MARGIN = 1.2  # a ratio within 20% either way is "no clear difference"
READING = 10 ** 0.5  # half an order of magnitude: how well a value is read off a log-scale figure
CHANCE = 0.1  # CIFAR-10 has ten balanced classes
NEAR_CHANCE = 0.2  # "does not train": accuracy never above chance + 0.1


# --- verdicts -----------------------------------------------------------------------------

def not_judged(why):
    return f"not judged: {why}"


def keyword(verdict):
    """``"partly"`` of ``"partly: early window reproduced, ..."``; ``"not judged"`` likewise."""
    return verdict.split(":")[0]


def judged(verdict):
    return keyword(verdict) in VERDICTS


def ratio_verdict(ratio, paper_ratio=None):
    """A ratio measured in the claim's direction (> 1: the claim's way): "reproduced" at or above
    the paper's ratio less half an order (or beyond the margin where the paper gives none),
    "partly" beyond the margin, "not reproduced" within it, "opposite" beyond it the other way."""
    if ratio is None or not math.isfinite(ratio):
        return not_judged(f"ratio not finite ({ratio})")
    magnitude = MARGIN if paper_ratio is None else max(MARGIN, paper_ratio / READING)
    if ratio >= magnitude:
        return REPRODUCED
    if ratio >= MARGIN:
        return PARTLY
    if ratio > 1 / MARGIN:
        return NOT_REPRODUCED
    return OPPOSITE


def combine(parts):
    """One verdict from ``{part name: verdict}`` that must all hold: their common verdict, else
    at most "partly" (when some part holds at least partly) naming which part gave what. A part
    not judged makes the whole not judged."""
    parts = {name: v for name, v in parts.items() if v is not None}
    if not parts:
        return not_judged("nothing to compare")
    skipped = [v for v in parts.values() if not judged(v)]
    if skipped:
        return skipped[0]
    kinds = {keyword(v) for v in parts.values()}
    if len(kinds) == 1:
        only = next(iter(parts.values()))
        return only if len(parts) == 1 else keyword(only)
    verdict = PARTLY if kinds & {REPRODUCED, PARTLY} else NOT_REPRODUCED
    by_kind = {}
    for name, v in parts.items():
        by_kind.setdefault(keyword(v), []).append(name)
    detail = "; ".join(f"{kind}: {', '.join(names)}" for kind in reversed(VERDICTS) if (names := by_kind.get(kind)))
    return f"{verdict}: parts disagree ({detail})"


def over_seeds(per_seed):
    """``(verdict, holds_on)`` of a claim from ``{seed: verdict}``: see the module docstring."""
    n = len(per_seed)
    counts = {kind: sum(keyword(v) == kind for v in per_seed.values()) for kind in VERDICTS}
    skipped = [v for v in per_seed.values() if not judged(v)]
    holds_on = f"{counts[REPRODUCED]} of {n} seeds" + (f" (partly on {counts[PARTLY]})" if counts[PARTLY] else "")
    if len(skipped) == n:
        reasons = sorted({v[len("not judged: "):] for v in skipped})
        return not_judged("; ".join(reasons) if n == 1 else f"on every seed ({'; '.join(reasons)})"), holds_on
    if n == 1:
        return next(iter(per_seed.values())), holds_on
    for kind in (REPRODUCED, OPPOSITE, NOT_REPRODUCED):
        if counts[kind] > n / 2:
            verdict = kind
            break
    else:
        verdict = PARTLY if counts[REPRODUCED] + counts[PARTLY] else NOT_REPRODUCED
    spread = ", ".join(f"{kind} on {counts[kind]}" for kind in reversed(VERDICTS) if counts[kind])
    if skipped:
        spread += f", not judged on {len(skipped)}"
    return (verdict if counts[verdict] == n else f"{verdict}: {spread} of {n} seeds"), holds_on


def record(claim_id, statement, paper, quantity, rule, per_seed, headline=None):
    """The claims.json record. ``per_seed``: ``{seed: (verdict, {value name: number})}``; the
    record's ``measured`` gives median and range over seeds of the ``headline`` values (the
    first three when not named)."""
    verdict, holds_on = over_seeds({s: v for s, (v, _) in per_seed.items()})
    present = list(dict.fromkeys(k for _, values in per_seed.values() for k in values))
    names = [k for k in headline or () if k in present] or present[:3]
    summary = {}
    for name in names:
        vals = report.floats([values.get(name) for _, values in per_seed.values()])
        vals = vals[np.isfinite(vals)]
        summary[name] = ({"median": float(np.median(vals)), "min": float(vals.min()), "max": float(vals.max())}
                         if vals.size else None)
    return {"id": claim_id, "statement": statement, "paper": paper,
            "measured": {"quantity": quantity, "over_seeds": summary}, "rule": rule, "verdict": verdict,
            "holds_on": holds_on,
            "seeds": [{"seed": s, "verdict": v, "values": _jsonable(values)} for s, (v, values) in per_seed.items()]}


def _jsonable(values):
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in values.items()}


def write(folder, records):
    """``folder/claims.json`` (atomically)."""
    io.write_json(os.path.join(folder, "claims.json"), records)


def num(value):
    """A value for a report: an integer as itself, a float as :func:`minibn.report.fmt` gives it."""
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else report.fmt(value)


def measured_text(rec):
    """"name median (min to max)" of a record's headline values, for the summary table."""
    out = []
    for name, s in rec["measured"]["over_seeds"].items():
        if s is None:
            out.append(f"{name}: -")
        elif s["min"] == s["max"]:
            out.append(f"{name}: {num(s['median'])}")
        else:
            out.append(f"{name}: {num(s['median'])} ({num(s['min'])} to {num(s['max'])})")
    return "; ".join(out)


def verdict_text(record):
    """The verdict in bold, its reasons, and on how many seeds the claim holds where the verdict
    does not already count the seeds (a claim not judged holds on none: no count is given)."""
    verdict = record["verdict"]
    kind = keyword(verdict)
    counted = not judged(verdict) or " seeds" in verdict
    return f"**{kind}**{verdict[len(kind):]}" + ("" if counted else f"; reproduced on {record['holds_on']}")


def summary_table(records):
    """The table a report opens with: claim, paper, measured (median and range over seeds), verdict."""
    rows = [[f"`{r['id']}`: {r['statement']}", r["paper"], measured_text(r), verdict_text(r)] for r in records]
    cell = lambda text: str(text).replace("|", "\\|")  # noqa: E731  a norm's bars must not split the cell
    return report.table(["claim", "the paper", "measured (median, range over seeds)", "verdict"],
                        [[cell(c) for c in row] for row in rows])


def rules_text(records):
    """Markdown: each claim's quantity, rule and per-seed verdicts."""
    lines = []
    for r in records:
        lines += [f"- `{r['id']}`: measured {r['measured']['quantity']}. Rule: {r['rule']}"]
        for s in r["seeds"]:
            values = ", ".join(f"{k} {num(v)}" for k, v in s["values"].items())
            lines.append(f"  - seed {s['seed']}: **{s['verdict']}**" + (f" ({values})" if values else ""))
    return lines


#: How the docs name what a report fills into a rule's quantity (the study's settings).
DOC_SETTINGS = {"lr": "`lr`", "lr_high": "`lr_high`", "lr_low": "`lr_low`",
                "layers_moments": "(the paper's layers 2, 9, 13, scaled to the net)",
                "layers_ics": "(the paper's layers 5 and 10, scaled)", "layers_shape": "(the paper's layers 3 and 11, scaled)",
                "layers": "9 and 17 (scaled on a shallower net)"}


def rules_reference(rules):
    """Markdown of every rule of ``rules`` (:data:`VGG_RULES` or :data:`DLN_RULES`) for the docs:
    id, statement, the paper's value, the quantity measured and the rule. docs/vgg.md and
    docs/dln.md hold this text verbatim (tests/test_claims.py checks it), so the docs state the
    rules the code applies."""
    lines = []
    for claim_id, (statement, paper, quantity, rule) in rules.items():
        lines += [f"- `{claim_id}`: {statement}. Paper: {paper}.",
                  f"  Measured: {quantity.format(**DOC_SETTINGS)}.",
                  f"  Rule: {rule}."]
    return "\n".join(lines)


# --- reading runs -------------------------------------------------------------------------

def at(values, idx):
    a = report.floats(values)
    return a[idx] if len(idx) else a[:0]


def finite(a):
    return a[np.isfinite(a)]


def window_stat(steps, values, early, stat):
    """``stat`` ("median", "edge": the largest, or "spread": log10 max/min) of the finite values
    in the window; NaN when there are none."""
    a = finite(at(values, report.window(steps, early)))
    if stat == "spread":
        a = a[a > 0]
    if not a.size:
        return math.nan
    if stat == "median":
        return float(np.median(a))
    if stat == "edge":
        return float(a.max())
    return float(np.log10(a.max() / a.min()))


def divergence(runs):
    """Why a rule cannot judge ``{name: run}`` (a run missing or diverged), else None."""
    for name, run in runs.items():
        if run is None:
            return f"no {name} run"
        if run.get("diverged_at") is not None:
            return f"{name} diverged at step {run['diverged_at']}"
    return None


def ratio(a, b):
    return a / b if math.isfinite(a) and math.isfinite(b) and b > 0 else math.nan


WINDOWS = (("early", True), ("whole run", False))
STATS = (("band edge", "edge"), ("median", "median"))


def landscape_ratio_parts(base, subject, key, paper_ratio=None, windows=WINDOWS, stats=STATS, prefix=""):
    """Parts and values for "``subject``'s landscape ``key`` is smaller than ``base``'s": the ratio
    base / subject of the band edge and of the median, in each window."""
    parts, values = {}, {}
    for wname, early in windows:
        for sname, stat in stats:
            r = ratio(window_stat(base["landscape"]["steps"], base["landscape"][key], early, stat),
                      window_stat(subject["landscape"]["steps"], subject["landscape"][key], early, stat))
            label = f"{prefix}{sname}, {wname}"
            values[f"{prefix}ratio {sname} {wname}"] = r
            parts[label] = ratio_verdict(r, paper_ratio)
    return parts, values


def tail_mean(values, fraction=0.1):
    v = finite(report.floats(values))
    return float(v[-max(1, int(len(v) * fraction)):].mean()) if v.size else math.nan


def seeds_of(doc):
    return sorted({run.get("seed", doc["config"].get("seed")) for run in doc["runs"].values()})


def finder(doc, seed):
    """``get(variant, lr)``: the run of one seed (None when the study did not train it)."""
    def get(variant, lr):
        for run in doc["runs"].values():
            if (run["variant"] == variant and math.isclose(run["lr"], lr)
                    and run.get("seed", doc["config"].get("seed")) == seed):
                return run
        return None
    return get


def name_of(doc, run):
    return next(name for name, r in doc["runs"].items() if r is run)


# --- VGG ----------------------------------------------------------------------------------

def scaled_layers(n, paper_layers):
    """The paper's layer numbers (of VGG-16's 13 conv layers) on a net of ``n`` conv layers."""
    return sorted({min(n, max(1, round(k * n / 13))) for k in paper_layers})


def _mean_in_window(run, key, early):
    a = finite(at(run.get(key) or [], report.window(run["eval_steps"], early)))
    return float(a.mean()) if a.size else math.nan


def last(run, key):
    a = report.floats(run.get(key) or [])
    return float(a[-1]) if a.size else math.nan


def difference_verdict(gap, magnitude, margin):
    """A difference in the claim's direction: "reproduced" at ``magnitude``, "partly" beyond
    ``margin``, "not reproduced" within it, "opposite" beyond it the other way."""
    if not math.isfinite(gap):
        return not_judged(f"difference not finite ({gap})")
    if gap >= magnitude:
        return REPRODUCED
    if gap > margin:
        return PARTLY
    if gap >= -margin:
        return NOT_REPRODUCED
    return OPPOSITE


def _vgg_bn_faster(get, rate, with_test):
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


def _vgg_standard_fails(get, rate):
    std, bn = get("standard", rate), get("batchnorm", rate)
    if std is None or bn is None:
        return not_judged(f"no standard or BN run at LR {rate:g}"), {}
    if bn["diverged_at"] is not None:
        return NOT_REPRODUCED, {"BN diverged at step": bn["diverged_at"]}
    bn_final = last(bn, "train_acc")
    acc = report.floats(std.get("train_acc") or [])
    above = [s for s, a in zip(std["eval_steps"], acc) if math.isfinite(a) and a > NEAR_CHANCE]
    values = {"standard max train acc": float(np.max(finite(acc))) if finite(acc).size else math.nan,
              "BN final train acc": bn_final, "standard final train acc": last(std, "train_acc"),
              "standard leaves chance at step": above[0] if above else None}
    if std["diverged_at"] is not None:
        values["standard diverged at step"] = std["diverged_at"]
    parts = {}
    for wname, early in WINDOWS:
        seen = finite(at(acc, report.window(std["eval_steps"], early)))
        near = not (seen > NEAR_CHANCE).any()  # a diverged standard net's evaluations before divergence count
        std_final = last(std, "train_acc") if std["diverged_at"] is None else CHANCE
        if bn_final < CHANCE + 0.3:
            parts[wname] = NOT_REPRODUCED if near else OPPOSITE if std_final > bn_final + 0.1 else NOT_REPRODUCED
        elif near:
            parts[wname] = REPRODUCED
        else:
            parts[wname] = difference_verdict(bn_final - std_final, math.inf, 0.1)
    return combine(parts), values


def _vgg_noisy_matches_bn(get, lr):
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


def _vgg_noise_stops_standard(get, lr):
    noisy_std, std = get("standard_noisy", lr), get("standard", lr)
    if noisy_std is None:
        return not_judged("no standard_noisy run"), {}
    acc = finite(report.floats(noisy_std.get("train_acc") or []))
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


def _moment_series(run, conv_layer):
    layers = sorted(run["moments"]["layers"], key=int)
    return run["moments"]["layers"][layers[conv_layer - 1]]


def _vgg_moments_unstable(get, lr, n):
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
                r = ratio(window_stat(noisy["moments"]["steps"], _moment_series(noisy, k)[key], early, "median"),
                          window_stat(bn["moments"]["steps"], _moment_series(bn, k)[key], early, "median"))
                values[f"layer {k} {what} noisy / BN, {wname}"] = r
                parts[f"layer {k} {what}, {wname}"] = ratio_verdict(r, 2 * READING)  # "far": at least 2x
    return combine(parts), values


def _vgg_ics_not_reduced(get, rates, n):
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


def _vgg_landscape(get, lr, key, paper_ratio):
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
    lo, hi = report.floats(ls["loss_min"]), report.floats(ls["loss_max"])
    return list(hi - lo)


def _vgg_beta_eff(get, lr):
    std, bn = get("standard", lr), get("batchnorm", lr)
    why = divergence({"standard": std, "BN": bn})
    if why:
        return not_judged(why), {}
    parts, values = landscape_ratio_parts(std, bn, "beta_eff", 45 / 20, stats=(("band edge", "edge"),),
                                          prefix="level ")
    steady, steady_values = landscape_ratio_parts(std, bn, "beta_eff", None, stats=(("log10 max/min", "spread"),),
                                                  prefix="spread ")
    return combine({**parts, **steady}), {**values, **steady_values}


def _vgg_lp_as_bn(get, lr):
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


def smooth_as_bn_parts(v, run, bn, std, keys, stat):
    """Per landscape measure and window: ``run`` (variant ``v``) smooths as much as BN when its
    ``stat`` is at most sqrt(10) times BN's; partly when it is 1.2x below the standard net's;
    opposite when 1.2x above it."""
    parts, values = {}, {}
    for key in keys:
        for wname, early in WINDOWS:
            got = {name: window_stat(r["landscape"]["steps"], r["landscape"][key], early, stat)
                   for name, r in (("v", run), ("bn", bn), ("std", std))}
            to_bn, vs_std = ratio(got["v"], got["bn"]), ratio(got["std"], got["v"])
            values[f"{v} {key} / BN, {wname}"] = to_bn
            parts[f"{v} {key}, {wname}"] = (
                not_judged(f"{v} {key} not finite") if not (math.isfinite(to_bn) and math.isfinite(vs_std)) else
                REPRODUCED if to_bn <= READING else PARTLY if vs_std >= MARGIN else
                OPPOSITE if vs_std <= 1 / MARGIN else NOT_REPRODUCED)
    return parts, values


def shape_stats(x):
    """Skewness and excess kurtosis of the finite values of ``x`` (0 and 0 for a Gaussian)."""
    x = finite(np.asarray(x, dtype=float))
    if x.size < 3 or x.std() == 0:
        return math.nan, math.nan
    z = (x - x.mean()) / x.std()
    return float((z ** 3).mean()), float((z ** 4).mean() - 3.0)


def _vgg_lp_not_gaussian(doc, arrays, get, lr, n):
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


VGG_RULES = {
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


def vgg_claims(doc, arrays):
    """The claims.json records of a VGG study: every §4a VGG claim its experiments run."""
    cfg, exps = doc["config"], doc["experiments"]
    lr, hi, lo = cfg["lr"], cfg["lr_high"], cfg["lr_low"]
    n = len(next(iter(doc["runs"].values()))["moments"]["conv_layers"])
    judges = {
        "vgg.e1.bn_faster_lr0.1": ("E1", lambda get: _vgg_bn_faster(get, lr, True)),
        "vgg.e1.bn_faster_lr0.01": ("E3", lambda get: _vgg_bn_faster(get, lo, False)),
        "vgg.e1.standard_fails_lr0.5": ("E1", lambda get: _vgg_standard_fails(get, hi)),
        "vgg.e2.noisy_matches_bn": ("E2", lambda get: _vgg_noisy_matches_bn(get, lr)),
        "vgg.e2.noise_stops_standard": ("E2", lambda get: _vgg_noise_stops_standard(get, lr)),
        "vgg.e2.noisy_moments_unstable": ("E2", lambda get: _vgg_moments_unstable(get, lr, n)),
        "vgg.e3.ics_not_reduced": ("E3", lambda get: _vgg_ics_not_reduced(get, (lr, lo), n)),
        "vgg.e4.gradpred_two_orders": ("E4", lambda get: _vgg_landscape(get, lr, "gradpred_max", 100)),
        "vgg.e4.loss_variation_smaller": ("E4", lambda get: _vgg_landscape(get, lr, "loss_spread", 10 / 4)),
        "vgg.e4.beta_eff_smaller": ("E4", lambda get: _vgg_beta_eff(get, lr)),
        "vgg.e5.lp_as_bn": ("E5", lambda get: _vgg_lp_as_bn(get, lr)),
        "vgg.e5.lp_not_gaussian": ("E5", lambda get: _vgg_lp_not_gaussian(doc, arrays, get, lr, n)),
    }
    fill = {"lr": f"{lr:g}", "lr_high": f"{hi:g}", "lr_low": f"{lo:g}",
            "layers_moments": scaled_layers(n, (2, 9, 13)), "layers_ics": scaled_layers(n, (5, 10)),
            "layers_shape": scaled_layers(n, (3, 11))}
    records = []
    for claim_id, (exp, judge) in judges.items():
        if exp not in exps:
            continue
        statement, paper, quantity, rule = VGG_RULES[claim_id]
        per_seed = {seed: judge(finder(doc, seed)) for seed in seeds_of(doc)}
        records.append(record(claim_id, statement, paper, quantity.format(**fill), rule, per_seed))
    return records


# --- DLN ------------------------------------------------------------------------------------

#: fig. 3 and 5b of the paper: the summed loss at 10k steps, by (variant, LR); it starts near 4-5e4.
DLN_PAPER_FINAL = {("standard", 1e-6): 1.7e3, ("batchnorm", 1e-6): 5e2, ("l1", 1e-6): 1e2, ("l2", 1e-6): 5e2,
                   ("linf", 1e-6): 1e3, ("standard", 1e-7): 4e3, ("batchnorm", 1e-7): 7e2}
DLN_PAPER_INITIAL = (4e4, 5e4)
DLN_PAPER_SETTING = {"depth": 25, "width": 10, "samples": 1000, "steps": 10_000}


def final_loss(run):
    losses = report.floats(run["loss"])
    return float(losses[-1]) if losses.size else math.nan


def rank_residuals(cfg, seed):
    """``[r_0, ..., r_d]``: the summed squared error of the best rank-k linear fit of the study's
    targets, regenerated from the seed as the study draws them (minibn.studies.dln.run_one). With
    Y = X A^T exactly in the column space of X, the best rank-k fit X B^T keeps the k largest
    singular directions of Y itself (reduced-rank regression), so r_k is the sum of the squared
    singular values of Y beyond the k-th."""
    from minibn.data.synthetic import linear_regression

    _, Y, _ = linear_regression(cfg["samples"], cfg["width"], cfg["width"], rng=backend.rng(seed))
    sq = np.linalg.svd(Y, compute_uv=False) ** 2
    return [float(sq[k:].sum()) for k in range(len(sq) + 1)]


def plateau(loss, residuals):
    """``(k, loss / r_k)``: the rank-k fit whose residual is nearest the loss on a log scale."""
    if not (math.isfinite(loss) and loss > 0):
        return None, math.nan
    k = min((k for k, r in enumerate(residuals) if r > 0), key=lambda k: abs(math.log(loss / residuals[k])))
    return k, loss / residuals[k]


def dln_cos_layers(doc):
    layers = next(iter(doc["runs"].values()))["ics"]["layers"]
    if all(k in layers for k in (9, 17)):
        return [9, 17]
    depth = doc["config"]["depth"]
    return sorted({min(len(layers), max(2, round(k * depth / 25))) for k in (9, 17)})


def _within_reading(measured, paper):
    return math.isfinite(measured) and paper / READING <= measured <= paper * READING


def _dln_loss_scale(doc, get, seed):
    cfg = doc["config"]
    differs = {k: cfg.get(k) for k, v in DLN_PAPER_SETTING.items() if cfg.get(k) != v}
    if differs:
        return not_judged(f"the paper's values are for {DLN_PAPER_SETTING}; this study has {differs}"), {}
    parts, values = {}, {}
    residuals = rank_residuals(cfg, seed)
    for (variant, lr), paper in DLN_PAPER_FINAL.items():
        run = get(variant, lr)
        if run is None:
            continue
        name = f"{variant} LR {lr:g}"
        if run["diverged_at"] is not None:
            parts[name] = not_judged(f"{name} diverged at step {run['diverged_at']}")
            continue
        first, end = report.floats(run["loss"])[0], final_loss(run)
        lo, hi = DLN_PAPER_INITIAL
        start_ratio = first / lo if first < lo else first / hi if first > hi else 1.0
        k, to_rk = plateau(end, residuals)
        values[f"{name} initial / paper"] = start_ratio
        values[f"{name} final / paper"] = end / paper
        values[f"{name} ends on rank"] = k
        values[f"{name} final / rank-{k} residual"] = to_rk
        parts[f"{name} initial"] = REPRODUCED if _within_reading(start_ratio, 1.0) else NOT_REPRODUCED
        parts[f"{name} final"] = REPRODUCED if _within_reading(end, paper) else NOT_REPRODUCED
    return (combine(parts) if parts else not_judged("none of the paper's runs")), values


def _dln_cos(doc, get):
    parts, values = {}, {}
    lrs = sorted({float(r["lr"]) for r in doc["runs"].values()}, reverse=True)
    for lr in lrs:
        std, bn = get("standard", lr), get("batchnorm", lr)
        if std is None or bn is None:
            continue
        why = divergence({f"standard at LR {lr:g}": std, f"BN at LR {lr:g}": bn})
        if why:
            return not_judged(why), values
        gap = ratio(final_loss(std), final_loss(bn))
        values[f"LR {lr:g} final loss standard / BN"] = gap
        parts[f"LR {lr:g} BN lower loss"] = ratio_verdict(gap)
        for k in dln_cos_layers(doc):
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


def _dln_pairs(doc, get, variant):
    lrs = sorted({float(r["lr"]) for r in doc["runs"].values()}, reverse=True)
    return [(lr, get("standard", lr), get(variant, lr)) for lr in lrs
            if get("standard", lr) is not None and get(variant, lr) is not None]


def _dln_landscape(doc, get, key, paper_ratio, spread=False):
    parts, values = {}, {}
    for lr, std, bn in _dln_pairs(doc, get, "batchnorm"):
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


def _dln_l1_beats_bn(doc, get):
    parts, values = {}, {}
    for lr, _, l1 in _dln_pairs(doc, get, "l1"):
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


def _dln_lp_smooth(doc, get):
    parts, values = {}, {}
    for v in ("l1", "l2", "linf"):
        for lr, std, run in _dln_pairs(doc, get, v):
            bn = get("batchnorm", lr)
            why = divergence({f"standard at LR {lr:g}": std, f"BN at LR {lr:g}": bn, f"{v} at LR {lr:g}": run})
            if why:
                parts[f"{v} LR {lr:g}"] = not_judged(why)
                continue
            p, vals = smooth_as_bn_parts(v, run, bn, std, ("gradpred_max", "beta_eff", "loss_max"), "edge")
            parts.update(p)
            values.update(vals)
    return (combine(parts) if parts else not_judged("no Lp run")), values


DLN_RULES = {
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


def dln_claims(doc):
    """The claims.json records of a DLN study: every §4a DLN claim."""
    judges = {
        "dln.loss_scale": lambda get, seed: _dln_loss_scale(doc, get, seed),
        "dln.e3.ics_standard_cos1_bn_cos0": lambda get, seed: _dln_cos(doc, get),
        "dln.e4.gradpred_orders": lambda get, seed: _dln_landscape(doc, get, "gradpred_max", 1e10),
        "dln.e4.loss_variation": lambda get, seed: _dln_landscape(doc, get, "loss_max", 1e8),
        "dln.e4.beta_eff": lambda get, seed: _dln_landscape(doc, get, "beta_eff", 1e8, spread=True),
        "dln.e5.l1_beats_bn": lambda get, seed: _dln_l1_beats_bn(doc, get),
        "dln.e5.lp_smooth_as_bn": lambda get, seed: _dln_lp_smooth(doc, get),
    }
    headlines = {"dln.loss_scale": [f"{v} LR 1e-06 {what} / paper" for v, what in
                                    (("standard", "initial"), ("standard", "final"), ("batchnorm", "final"),
                                     ("l1", "final"))],
                 "dln.e3.ics_standard_cos1_bn_cos0": ["LR 1e-06 layer 17 cos standard, whole run",
                                                      "LR 1e-06 layer 17 cos BN, whole run",
                                                      "LR 1e-06 final loss standard / BN"]}
    records = []
    for claim_id, judge in judges.items():
        statement, paper, quantity, rule = DLN_RULES[claim_id]
        per_seed = {seed: judge(finder(doc, seed), seed) for seed in seeds_of(doc)}
        records.append(record(claim_id, statement, paper, quantity.format(layers=dln_cos_layers(doc)), rule,
                              per_seed, headlines.get(claim_id)))
    return records


# --- other normalizers in BN's place ---------------------------------------------------------

#: The claims that compare BN with the standard network alone: the conclusions about BN that another
#: normalizer may carry over (the other claims compare BN with noisy BN or the Lp variants, or with the
#: paper's own numbers for BN).
BN_VS_STANDARD = ("vgg.e1.bn_faster_lr0.1", "vgg.e1.bn_faster_lr0.01", "vgg.e1.standard_fails_lr0.5",
                  "vgg.e3.ics_not_reduced", "vgg.e4.gradpred_two_orders", "vgg.e4.loss_variation_smaller",
                  "vgg.e4.beta_eff_smaller", "dln.e3.ics_standard_cos1_bn_cos0", "dln.e4.gradpred_orders",
                  "dln.e4.loss_variation", "dln.e4.beta_eff")


def in_place_of_bn(doc, variant):
    """``doc`` with ``variant``'s runs standing where BN's stand (BN's own left out)."""
    runs = {name: (dict(run, variant="batchnorm") if run["variant"] == variant else run)
            for name, run in doc["runs"].items() if run["variant"] != "batchnorm"}
    return {**doc, "runs": runs}


def carry_over(judge_all, doc, variant):
    """The records of the claims of :data:`BN_VS_STANDARD` that ``judge_all`` (a study's ``doc ->
    records``: :func:`vgg_claims` or :func:`dln_claims`) gives with ``variant``'s runs in BN's place:
    each claim's own rule on the same quantities, so a verdict says whether the conclusion about BN
    carries over to ``variant``. "BN" in the records' value names and reasons is ``variant`` here."""
    return [r for r in judge_all(in_place_of_bn(doc, variant)) if r["id"] in BN_VS_STANDARD]


def carry_over_table(records, carried, study):
    """Markdown table: for each claim of ``study`` ("vgg" or "dln") in :data:`BN_VS_STANDARD`, BN's
    record (of ``records``) and each normalizer's (``carried``: ``{variant: carry_over(...)}``), the
    measured values and the verdict; "not measured" where the study ran no experiment for the claim
    or lacks a run its rule needs."""
    rows = []
    for claim_id in (c for c in BN_VS_STANDARD if c.startswith(study + ".")):
        for variant, recs in (("batchnorm", records), *carried.items()):
            name = report.label(variant)
            rec = next((r for r in recs if r["id"] == claim_id), None)
            if rec is None:
                rows.append([f"`{claim_id}`", name, "-", "not measured (experiment not run)"])
                continue
            verdict = verdict_text(rec)
            if not judged(rec["verdict"]) and "no " in rec["verdict"]:
                verdict = "not measured: " + rec["verdict"][len("not judged: "):]
            rows.append([f"`{claim_id}`", name, measured_text(rec), verdict])
    cell = lambda text, name: re.sub(r"\bBN\b", name, str(text).replace("|", "\\|"))  # noqa: E731
    return report.table(["claim", "normalizer", "measured (median, range over seeds)", "verdict"],
                        [[row[0], row[1], cell(row[2], row[1]), cell(row[3], row[1])] for row in rows])


# --- theory ---------------------------------------------------------------------------------

def theory_claims(doc):
    """The theory study's statements (docs/protocol.md §5; §4a has no theory ids, so they are named
    ``theory.CHECK``), each judged on its instances: one seed."""
    seed = doc["config"].get("seed")
    records = []
    for check in doc["checks"]:
        values = {"instances": check["instances"], "violations": check["violations"],
                  "max relative error": check["max_rel_err"], "tolerance": check["tolerance"]}
        verdict = REPRODUCED if check["violations"] == 0 else NOT_REPRODUCED
        records.append(record(f"theory.{check['name']}", check["statement"], "holds (Section 4, Appendix C)",
                              "relative error of the statement on each instance (random layers and the BN layers "
                              "of three trained networks)",
                              "reproduced when no instance is off by more than the tolerance (0 violations), "
                              "else not reproduced", {seed: (verdict, values)},
                              headline=["violations", "instances", "max relative error"]))
    return records
