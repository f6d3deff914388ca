"""The sharpness study's claims (docs/sharpness.md): statements and rules, then one pure judge per
claim, and the DLN study's key claims judged again at every width of the study's ``width`` part.

Each rule reads the runs of one seed and returns ``(verdict, {value name: number})``;
:func:`judge` judges every claim whose part the study ran, per seed and over seeds
(:mod:`minibn.claims.verdicts`). The readers below (:func:`runs_of`, :func:`eos_ratio`, ...) are
the study's quantities, shared with its report.
"""

import math

#: When the rules were written, relative to the committed runs (the report says it).
WRITTEN = "written on 2026-12-03 (commit 8408e06), before the study's first committed run (studies/sharpness)"

from minibn import backend
from minibn.claims import dln
from minibn.claims.verdicts import (MARGIN, NOT_REPRODUCED, OPPOSITE, PARTLY, READING, REPRODUCED, combine,
                                    divergence, not_judged, ratio, ratio_verdict, record)
from minibn.measure import slq
from minibn.results import Run, at, finite, floats, seeds_of, window

np = backend.host
EOS_LR = 1e-6
#: the DLN study's key claims, judged again at every width
WIDTH_CLAIMS = ("dln.e3.ics_standard_cos1_bn_cos0", "dln.e4.gradpred_orders")

RULES = {
    "sharpness.eos_dln": (
        "the standard and the BN DLN reach lambda_max ~ 2/eta at LR 1e-6",
        "Cohen et al. 2021: under full-batch GD the top Hessian eigenvalue rises to about 2/eta and hovers there",
        "lambda_max of the train-mode Hessian on the full batch (Lanczos, largest algebraic) divided by 2/eta: the "
        "median over the last 20% of the measurements after step 0, standard and BN at LR 1e-6",
        "per variant: a median ratio within [1/1.2, 1.2] reproduced, within [1/sqrt(10), sqrt(10)] partly, else "
        "not reproduced; a diverged or missing run: not judged; the two variants must agree (parts that disagree "
        "give at most partly)"),
    "sharpness.vgg_outliers": (
        "the VGG without BN has larger outlier eigenvalues than with BN",
        "Ghorbani et al. 2019: without BN large isolated eigenvalues appear in the Hessian; BN removes them",
        "the outlier ratio lambda_max / sqrt(m2) of the SLQ density at the end of training (m2 the quadrature's "
        "estimate of tr(H^2)/n: how far the top eigenvalue stands above the spectrum's root mean square), standard "
        "over BN, in train and in eval mode",
        f"per mode: ratio >= {MARGIN} reproduced, within {MARGIN}x not reproduced, below 1/{MARGIN} opposite; a "
        "diverged or missing run: not judged; modes that disagree give at most partly"),
    "sharpness.depth_bn_gradients_grow": (
        "with BN, the gradient norms grow with depth at initialization",
        "Yang et al. 2019: batch normalization makes gradients explode with depth at initialization in networks "
        "without skip connections",
        "||dL/dW_1|| / ||dL/dW_(K-1)|| (the first weight layer over the last one feeding a normalizer; the output "
        "layer is left out) of the BN network at initialization, on the DLN and the deep ReLU MLP",
        f"per network: ratio >= 10 (an order of magnitude over the depth) reproduced, >= {MARGIN} partly, within "
        f"{MARGIN}x not reproduced, below 1/{MARGIN} opposite; networks that disagree give at most partly"),
    "sharpness.depth_bn_keeps_rank": (
        "BN keeps the activations' rank at depth",
        "Daneshmand et al. 2020: without BN the rank of the representations collapses with depth; BN keeps it high",
        "the effective rank tr(C)^2/||C||_F^2 of the last hidden representation (the output layer's input) at "
        "initialization, BN over standard, on the DLN and the deep ReLU MLP",
        f"per network: ratio >= 2 reproduced, >= {MARGIN} partly, within {MARGIN}x not reproduced, below "
        f"1/{MARGIN} opposite; networks that disagree give at most partly"),
}


# --- reading the runs ----------------------------------------------------------------------

def runs_of(doc, part, **match):
    """The runs of ``part`` whose fields equal ``match``."""
    out = []
    for run in doc["runs"].values():
        if run.get("part") != part:
            continue
        if all(run.get(k) == v for k, v in match.items()):
            out.append(run)
    return out


def one(doc, part, **match):
    found = runs_of(doc, part, **match)
    return found[0] if found else None


def tail_median(steps, values, fraction=0.2):
    idx = window(steps)
    idx = idx[-max(1, math.ceil(fraction * len(idx))):] if idx else []
    a = finite(at(values, idx))
    return float(np.median(a)) if a.size else math.nan


def eos_ratio(run):
    """Median over the last 20% of the measurements of lambda_max / (2/eta)."""
    h = run["hessian"]
    return tail_median(h["steps"], floats(h["top_eigenvalue"]) * run["lr"] / 2.0)


def final_density(run, mode):
    return ((run.get("slq") or {}).get("final") or {}).get(mode)


def grad_ratio(profile):
    g = floats(profile["grad_norm"])
    return ratio(g[0], g[-2]) if g.size >= 2 else math.nan


def last_hidden_rank(profile):
    r = floats(profile["effective_rank"])
    return float(r[-2]) if r.size >= 2 else math.nan


# --- the rules -----------------------------------------------------------------------------

def _eos_dln(doc, seed):
    parts, values = {}, {}
    for variant in ("standard", "batchnorm"):
        run = one(doc, "dln", variant=variant, lr=EOS_LR, seed=seed)
        why = divergence({f"{variant} at LR {EOS_LR:g}": run})
        if why:
            parts[variant] = not_judged(why)
            continue
        r = eos_ratio(run)
        values[f"{variant} lambda_max / (2/eta)"] = r
        if not math.isfinite(r):
            parts[variant] = not_judged(f"no finite lambda_max for {variant}")
        elif 1 / MARGIN <= r <= MARGIN:
            parts[variant] = REPRODUCED
        elif 1 / READING <= r <= READING:
            parts[variant] = PARTLY
        else:
            parts[variant] = NOT_REPRODUCED
    return combine(parts), values


def _vgg_outliers(doc, seed):
    std, bn = one(doc, "vgg", variant="standard", seed=seed), one(doc, "vgg", variant="batchnorm", seed=seed)
    why = divergence({"standard VGG": std, "BN VGG": bn})
    if why:
        return not_judged(why), {}
    parts, values = {}, {}
    for mode in ("train", "eval"):
        a, b = final_density(std, mode), final_density(bn, mode)
        if a is None or b is None:
            parts[f"{mode} mode"] = not_judged(f"no final {mode}-mode density")
            continue
        r = ratio(slq.outlier_ratio(a), slq.outlier_ratio(b))
        values[f"{mode} mode outlier ratio standard"] = slq.outlier_ratio(a)
        values[f"{mode} mode outlier ratio BN"] = slq.outlier_ratio(b)
        values[f"{mode} mode standard / BN"] = r
        parts[f"{mode} mode"] = ratio_verdict(r)
    return combine(parts), values


def _graded(r, magnitude):
    if not math.isfinite(r):
        return not_judged(f"ratio not finite ({r})")
    if r >= magnitude:
        return REPRODUCED
    if r >= MARGIN:
        return PARTLY
    return NOT_REPRODUCED if r > 1 / MARGIN else OPPOSITE


def _depth(doc, seed, measure, magnitude, both):
    run = one(doc, "depth", seed=seed)
    if run is None:
        return not_judged("no depth run"), {}
    parts, values = {}, {}
    for network, profiles in run["networks"].items():
        bn, std = profiles.get("batchnorm"), profiles.get("standard")
        if bn is None or (both and std is None):
            continue
        r = measure(bn) / measure(std) if both else measure(bn)
        values[f"{network} {'BN / standard' if both else 'BN'}"] = r
        if both:
            values[f"{network} standard"], values[f"{network} BN"] = measure(std), measure(bn)
        parts[network] = _graded(r, magnitude)
    return (combine(parts) if parts else not_judged("no BN profile")), values


JUDGES = {
    "sharpness.eos_dln": _eos_dln,
    "sharpness.vgg_outliers": _vgg_outliers,
    "sharpness.depth_bn_gradients_grow": lambda doc, seed: _depth(doc, seed, grad_ratio, 10.0, both=False),
    "sharpness.depth_bn_keeps_rank": lambda doc, seed: _depth(doc, seed, last_hidden_rank, 2.0, both=True),
}


def parts_present(doc):
    return {run.get("part") for run in doc["runs"].values()}


HEADLINES = {"sharpness.eos_dln": ["standard lambda_max / (2/eta)", "batchnorm lambda_max / (2/eta)"],
             "sharpness.vgg_outliers": ["train mode standard / BN", "eval mode standard / BN"],
             "sharpness.depth_bn_gradients_grow": ["dln BN", "mlp BN"],
             "sharpness.depth_bn_keeps_rank": ["dln BN / standard", "mlp BN / standard"]}
NEEDS = {"sharpness.eos_dln": "dln", "sharpness.vgg_outliers": "vgg", "sharpness.depth_bn_gradients_grow": "depth",
         "sharpness.depth_bn_keeps_rank": "depth"}


def width_docs(doc):
    """``{width: a DLN-study document of that width's runs}`` (keyed by their :class:`~minibn.results.Run`
    names, with the DLN setting the study recorded) for :func:`minibn.claims.dln.judge`."""
    setting = doc["config"]["width"]["setting"]
    out = {}
    for run in doc["runs"].values():
        if run.get("part") == "width":
            w = run["width"]
            out.setdefault(w, {"config": {**setting, "width": w}, "runs": {}})["runs"][Run.of(run).name] = run
    return dict(sorted(out.items()))


def judge(doc):
    """The claims.json records: the four claims of :data:`RULES`, then the DLN study's key claims
    (:data:`WIDTH_CLAIMS`) per width."""
    present = parts_present(doc)
    records = []
    for claim_id, judge_seed in JUDGES.items():
        if NEEDS[claim_id] not in present:
            continue
        statement, paper, quantity, rule = RULES[claim_id]
        per_seed = {seed: judge_seed(doc, seed) for seed in seeds_of(doc)}
        records.append(record(claim_id, statement, paper, quantity, rule, per_seed, HEADLINES[claim_id]))
    for width, sub in width_docs(doc).items():
        for rec in dln.judge(sub, WIDTH_CLAIMS):
            records.append({**rec, "id": f"width{width}:{rec['id']}", "statement": f"width {width}: {rec['statement']}"})
    return records
