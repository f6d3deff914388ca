"""The verdict engine: how a claim's numbers become a verdict, per seed and over seeds.

A claim is a record: its id (docs/protocol.md §4a's), the paper's statement and value, the
quantity measured, the rule (thresholds and windows, in words that match its rulebook's code)
and a verdict:

    reproduced       the claim holds with the stated magnitude
    partly           the direction holds but not the magnitude, or only in one window / statistic
    not reproduced   no clear difference
    opposite         the reverse holds
    not judged: WHY  a run the rule needs is missing or diverged (a rule never compares with NaN)

A rule judges each seed from its parts (windows, band edge and median, layers, learning
rates, variants); :func:`combine` gives the seed one verdict, and where the parts disagree the
verdict says which part gave what and is at most "partly". :func:`over_seeds` gives the claim's
verdict: "reproduced" when it is reproduced on most seeds (more than half), "opposite" or
"not reproduced" likewise, "partly" otherwise when some seed holds at least partly. Each
rulebook says when its rules were written relative to the committed runs (``WRITTEN``): the
DLN and VGG rules after the first committed runs of their studies had been seen, the sharpness
rules before the study's first run; a rule changed after that says so, and why, in its text.

Shared conventions of the rules:

* windows: "early" is the first 20% of the measurement points after step 0, "whole run" all
  points after step 0 (docs/protocol.md §3; :func:`minibn.results.window`);
* band edge: the largest value over the window (what the paper's band figures show at their
  top); median: the window's median;
* a ratio in the claim's direction (e.g. standard / BN where BN should be smaller) is a clear
  difference beyond :data:`MARGIN` (20%); where the paper states a magnitude (a ratio read
  off a log-scale figure, or "two orders"), "reproduced" needs the measured ratio within half
  an order of magnitude of it (:data:`READING`), never less than the margin.

Each study's report calls its rulebook's ``judge``, writes the records with :func:`write`
(``claims.json``) and opens with :func:`summary_table`.
"""

import math
import os
import re

from minibn import backend, io, report
from minibn.results import Run, at, finite, floats, window

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
        vals = floats([values.get(name) for _, values in per_seed.values()])
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



def window_stat(steps, values, early, stat):
    """``stat`` ("median", "edge": the largest, or "spread": log10 max/min) of the finite values
    in the window; NaN when there are none."""
    a = finite(at(values, window(steps, early)))
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


# --- other normalizers in BN's place ---------------------------------------------------------

#: The claims that compare BN with the standard network alone: the conclusions about BN that another
#: normalizer may carry over (the other claims compare BN with noisy BN or the Lp variants, or with the
#: paper's own numbers for BN).
BN_VS_STANDARD = ("vgg.e1.bn_faster_lr0.1", "vgg.e1.bn_faster_lr0.01", "vgg.e1.standard_fails_lr0.5",
                  "vgg.e3.ics_not_reduced", "vgg.e4.gradpred_two_orders", "vgg.e4.loss_variation_smaller",
                  "vgg.e4.beta_eff_smaller", "dln.e3.ics_standard_cos1_bn_cos0", "dln.e4.gradpred_orders",
                  "dln.e4.loss_variation", "dln.e4.beta_eff")


def in_place_of_bn(doc, variant):
    """``doc`` with ``variant``'s runs standing where BN's stand, under BN's run names (BN's own left out)."""
    runs = {}
    for name, run in doc["runs"].items():
        if run["variant"] == variant:
            run = dict(run, variant="batchnorm")
            runs[Run.of(run).name] = run
        elif run["variant"] != "batchnorm":
            runs[name] = run
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
