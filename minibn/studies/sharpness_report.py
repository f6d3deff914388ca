"""Figures, claims.json and report.md of the sharpness study, from its results.

    python -m minibn.studies.sharpness_report DIR      # rebuild DIR's figures and report from DIR/results.json

The claims are judged by the rules of :data:`RULES` (written with their thresholds before any
run of the study), per seed, and over seeds by :func:`minibn.claims.record`; the DLN study's
claims at every width by :func:`minibn.claims.dln_claims` on that width's runs.
"""

import math
import os
import sys
import warnings

from minibn import claims, io, report
from minibn.claims import MARGIN, NOT_REPRODUCED, OPPOSITE, PARTLY, READING, REPRODUCED
from minibn.measure import slq
from minibn.studies import common

np = report.np
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
    """The runs of ``part`` whose fields equal ``match`` (an LR compared with isclose)."""
    out = []
    for run in doc["runs"].values():
        if run.get("part") != part:
            continue
        if all(math.isclose(run.get(k), v) if isinstance(v, float) else run.get(k) == v for k, v in match.items()):
            out.append(run)
    return out


def one(doc, part, **match):
    found = runs_of(doc, part, **match)
    return found[0] if found else None


def seeds_of(doc):
    return sorted({run["seed"] for run in doc["runs"].values()})


def tail_median(steps, values, fraction=0.2):
    idx = report.window(steps)
    idx = idx[-max(1, math.ceil(fraction * len(idx))):] if idx else []
    a = claims.finite(claims.at(values, idx))
    return float(np.median(a)) if a.size else math.nan


def eos_ratio(run):
    """Median over the last 20% of the measurements of lambda_max / (2/eta)."""
    h = run["hessian"]
    return tail_median(h["steps"], report.floats(h["top_eigenvalue"]) * run["lr"] / 2.0)


def final_density(run, mode):
    return ((run.get("slq") or {}).get("final") or {}).get(mode)


def grad_ratio(profile):
    g = report.floats(profile["grad_norm"])
    return claims.ratio(g[0], g[-2]) if g.size >= 2 else math.nan


def last_hidden_rank(profile):
    r = report.floats(profile["effective_rank"])
    return float(r[-2]) if r.size >= 2 else math.nan


# --- the rules -----------------------------------------------------------------------------

def _eos_dln(doc, seed):
    parts, values = {}, {}
    for variant in ("standard", "batchnorm"):
        run = one(doc, "dln", variant=variant, lr=EOS_LR, seed=seed)
        why = claims.divergence({f"{variant} at LR {EOS_LR:g}": run})
        if why:
            parts[variant] = claims.not_judged(why)
            continue
        r = eos_ratio(run)
        values[f"{variant} lambda_max / (2/eta)"] = r
        if not math.isfinite(r):
            parts[variant] = claims.not_judged(f"no finite lambda_max for {variant}")
        elif 1 / MARGIN <= r <= MARGIN:
            parts[variant] = REPRODUCED
        elif 1 / READING <= r <= READING:
            parts[variant] = PARTLY
        else:
            parts[variant] = NOT_REPRODUCED
    return claims.combine(parts), values


def _vgg_outliers(doc, seed):
    std, bn = one(doc, "vgg", variant="standard", seed=seed), one(doc, "vgg", variant="batchnorm", seed=seed)
    why = claims.divergence({"standard VGG": std, "BN VGG": bn})
    if why:
        return claims.not_judged(why), {}
    parts, values = {}, {}
    for mode in ("train", "eval"):
        a, b = final_density(std, mode), final_density(bn, mode)
        if a is None or b is None:
            parts[f"{mode} mode"] = claims.not_judged(f"no final {mode}-mode density")
            continue
        r = claims.ratio(slq.outlier_ratio(a), slq.outlier_ratio(b))
        values[f"{mode} mode outlier ratio standard"] = slq.outlier_ratio(a)
        values[f"{mode} mode outlier ratio BN"] = slq.outlier_ratio(b)
        values[f"{mode} mode standard / BN"] = r
        parts[f"{mode} mode"] = claims.ratio_verdict(r)
    return claims.combine(parts), values


def _graded(r, magnitude):
    if not math.isfinite(r):
        return claims.not_judged(f"ratio not finite ({r})")
    if r >= magnitude:
        return REPRODUCED
    if r >= MARGIN:
        return PARTLY
    return NOT_REPRODUCED if r > 1 / MARGIN else OPPOSITE


def _depth(doc, seed, measure, magnitude, both):
    run = one(doc, "depth", seed=seed)
    if run is None:
        return claims.not_judged("no depth run"), {}
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
    return (claims.combine(parts) if parts else claims.not_judged("no BN profile")), values


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
    """``{width: a DLN-study document of that width's runs}`` for :func:`minibn.claims.dln_claims`."""
    from minibn.studies import dln

    setting = dln.PRESETS[doc["config"]["width"]["dln_preset"]]
    out = {}
    for name, run in doc["runs"].items():
        if run.get("part") == "width":
            w = run["width"]
            out.setdefault(w, {"config": {**setting, "width": w}, "runs": {}})["runs"][name] = run
    return dict(sorted(out.items()))


def sharpness_claims(doc):
    """The claims.json records: the four claims of :data:`RULES`, then the DLN study's key claims per width."""
    present = parts_present(doc)
    records = []
    for claim_id, judge in JUDGES.items():
        if NEEDS[claim_id] not in present:
            continue
        statement, paper, quantity, rule = RULES[claim_id]
        per_seed = {seed: judge(doc, seed) for seed in seeds_of(doc)}
        records.append(claims.record(claim_id, statement, paper, quantity, rule, per_seed, HEADLINES[claim_id]))
    for width, sub in width_docs(doc).items():
        for rec in claims.dln_claims(sub):
            if rec["id"] in WIDTH_CLAIMS:
                records.append({**rec, "id": f"width{width}:{rec['id']}", "statement": f"width {width}: {rec['statement']}"})
    return records


# --- figures -------------------------------------------------------------------------------

def _curves(runs, key, sub):
    """Steps and the per-seed curves of runs[i][key][sub], padded with None to a common length."""
    series = [(r[key]["steps"], r[key][sub]) for r in runs if r.get(key)]
    if not series:
        return [], []
    steps = max((s for s, _ in series), key=len)
    return steps, [list(v) + [None] * (len(steps) - len(v)) for _, v in series]


def fig_eos(doc, path, part):
    runs = runs_of(doc, part)
    lrs = sorted({r["lr"] for r in runs}, reverse=True)
    if not lrs:
        return False
    fig, axes = report.new_figure(1, len(lrs))
    for ax, lr in zip(axes[0], lrs):
        for variant in dict.fromkeys(r["variant"] for r in runs):
            steps, curves = _curves(runs_of(doc, part, variant=variant, lr=lr), "hessian", "top_eigenvalue")
            if curves:
                report.line_with_band(ax, steps, curves, report.label(variant), report.color(variant), log=True,
                                      marker=".")
        ax.axhline(2.0 / lr, color="k", ls="--", lw=1, label="2/eta")
        ax.set_title(f"{part.upper()}, LR {lr:g}: top eigenvalue (train mode)")
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    report.save(fig, path)
    return True


def shown_lr(doc, part):
    """The LR a figure of one LR shows: 1e-6 where the part has it, else its largest (None: no run)."""
    lrs = sorted({r["lr"] for r in runs_of(doc, part)}, key=lambda lr: (not math.isclose(lr, EOS_LR), -lr))
    return lrs[0] if lrs else None


def fig_beta_vs_lambda(doc, path):
    lr = shown_lr(doc, "dln")
    runs = [r for r in runs_of(doc, "dln", lr=lr) if r["variant"] in ("standard", "batchnorm")] if lr else []
    if not runs:
        return False
    fig, axes = report.new_figure(1, 2)
    for ax, variant in zip(axes[0], ("standard", "batchnorm")):
        chosen = [r for r in runs if r["variant"] == variant]
        if not chosen:
            continue
        for key, sub, what, style in (("hessian", "top_eigenvalue", "lambda_max", "-"),
                                      ("hessian", "curvature", "g^T H g / ||g||^2", ":"),
                                      ("beta_eff", "beta_eff", "beta_eff (eta' = eta)", "--")):
            steps, curves = _curves(chosen, key, sub)
            if curves:
                report.line_with_band(ax, steps, curves, what, log=True, ls=style)
        ax.axhline(2.0 / lr, color="k", lw=0.8, label="2/eta")
        ax.set_title(f"DLN {report.label(variant)}, LR {lr:g}")
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    report.save(fig, path)
    return True


def fig_effective_lr(doc, path):
    """One row per part (the DLN, the VGG): median over layers of ||W||, eta/||W||^2 and the step's angle."""
    seed = seeds_of(doc)[0]
    rows = [(part, [r for r in runs_of(doc, part, seed=seed) if r.get("effective_lr") and r["effective_lr"]["layers"]])
            for part in ("dln", "vgg")]
    rows = [(part, runs) for part, runs in rows if runs]
    if not rows:
        return False
    fig, axes = report.new_figure(len(rows), 3)
    for (part, runs), line in zip(rows, axes):
        for run in runs:
            e = run["effective_lr"]
            for ax, key in zip(line, ("norm", "eff_lr", "angle")):
                median = [report.finite_median(row) for row in e[key]]
                ax.plot(e["steps"], report.drawable(median, log=True), color=report.color(run["variant"]),
                        label=f"{report.label(run['variant'])}, LR {run['lr']:g}", marker=".", ms=3)
        for ax, title in zip(line, ("||W|| (median over layers)", "eta / ||W||^2", "angle of a step (rad)")):
            ax.set_title(f"{part.upper()}: {title}", fontsize=9)
            ax.set_xlabel("step")
            report.log_scale(ax, *[ln.get_ydata() for ln in ax.get_lines()])
        line[0].legend(fontsize=6)
    report.save(fig, path)
    return True


def fig_density(doc, path, part):
    seed, lr = seeds_of(doc)[0], shown_lr(doc, part)
    if lr is None:
        return False
    runs = [one(doc, part, variant=v, seed=seed, lr=lr) for v in ("standard", "batchnorm")]
    runs = [r for r in runs if r is not None]
    if not runs:
        return False
    fig, axes = report.new_figure(2, 2)
    for row, when in enumerate(("initial", "final")):
        for col, mode in enumerate(("train", "eval")):
            ax = axes[row][col]
            for run in runs:
                d = ((run.get("slq") or {}).get(when) or {}).get(mode)
                if d and d["grid"]:
                    ax.plot(d["grid"], report.drawable(d["density"], log=True), color=report.color(run["variant"]),
                            label=report.label(run["variant"]), lw=1)
            ax.set_yscale("log")
            ax.set_ylim(bottom=1e-8)
            ax.set_title(f"{part.upper()} (LR {lr:g}) {when}, {mode} mode")
            ax.set_xlabel("eigenvalue")
            ax.legend(fontsize=7)
    report.save(fig, path)
    return True


def fig_depth(doc, path):
    run = one(doc, "depth", seed=seeds_of(doc)[0])
    if run is None:
        return False
    nets = list(run["networks"])
    fig, axes = report.new_figure(len(nets), 3)
    for row, network in enumerate(nets):
        for variant, prof in run["networks"][network].items():
            k = np.arange(1, len(prof["grad_norm"]) + 1)
            for ax, key in zip(axes[row], ("grad_norm", "effective_rank", "rank")):
                ax.plot(k, report.drawable(prof[key], log=key == "grad_norm"), label=report.label(variant),
                        color=report.color(variant), marker=".", ms=3)
        for ax, key in zip(axes[row], ("||dL/dW_k||", "tr(C)^2/||C||_F^2 of layer k's representation", "rank")):
            ax.set_title(f"{network.upper()} at init: {key}", fontsize=8)
            ax.set_xlabel("weight layer k")
        axes[row][0].set_yscale("log")
        axes[row][0].legend(fontsize=6)
    report.save(fig, path)
    return True


# --- the report ------------------------------------------------------------------------------

def _f(v):
    return report.fmt(v)


def eos_lines(doc):
    rows = []
    for run in doc["runs"].values():
        if run.get("part") not in ("dln", "vgg"):
            continue
        h = run["hessian"]
        top = report.floats(h["top_eigenvalue"])
        ratio = "-" if run["diverged_at"] is not None else _f(eos_ratio(run))
        rows.append([run["part"], report.label(run["variant"]), f"{run['lr']:g}", run["seed"],
                     _f(top[0] if top.size else None), _f(top[-1] if top.size else None), _f(2 / run["lr"]), ratio,
                     "-" if run["diverged_at"] is None else run["diverged_at"]])
    lines = ["## Edge of stability", "",
             "lambda_max of the train-mode Hessian (Lanczos, largest algebraic): on the DLN on the full batch, on the "
             "VGG on the fixed measurement set in chunks. The last column but one is the median of lambda_max / (2/eta) "
             "over the last 20% of the measurements.", "",
             report.table(["part", "variant", "LR", "seed", "lambda_max at step 0", "at the end", "2/eta",
                           "lambda_max / (2/eta), end", "diverged at"], rows), ""]
    rows = []
    for run in runs_of(doc, "dln"):
        lam = report.floats(run["hessian"]["top_eigenvalue"])
        beta = report.floats(run["beta_eff"]["beta_eff"])
        curv = report.floats(run["hessian"]["curvature"])
        n = min(lam.size, beta.size, curv.size)
        with np.errstate(all="ignore"):
            rows.append([report.label(run["variant"]), f"{run['lr']:g}", run["seed"],
                         _f(report.finite_median(beta[:n] / lam[:n])), _f(report.finite_median(curv[:n] / lam[:n]))])
    if rows:
        lines += ["beta_eff (the landscape probe at eta' = eta) and the curvature along the gradient against lambda_max, "
                  "medians over the measurements:", "",
                  report.table(["variant", "LR", "seed", "median beta_eff / lambda_max",
                                "median (g^T H g/||g||^2) / lambda_max"], rows), ""]
    return lines


def effective_lr_lines(doc):
    rows = []
    for run in doc["runs"].values():
        e = run.get("effective_lr")
        if not e or not e["layers"] or not e["steps"]:
            continue
        first, last = report.floats(e["norm"][0]), report.floats(e["norm"][-1])
        angles = report.floats([a for row in e["angle"] for a in row])
        cos = report.floats([a for row in e["grad_cos"] for a in row])
        rows.append([run["part"], report.label(run["variant"]), f"{run['lr']:g}", run["seed"], len(e["layers"]),
                     _f(np.median(first)), _f(np.median(last)), _f(run["lr"] / np.median(first) ** 2),
                     _f(run["lr"] / np.median(last) ** 2), _f(report.finite_median(angles)),
                     _f(float(np.nanmax(abs(cos))) if np.isfinite(cos).any() else None)])
    return ["## Effective learning rate of the weights feeding a normalizer", "",
            "Per run, over the weight layers feeding a normalizer: the median ||W|| at the first and last measurement, "
            "eta / ||W||^2 there (of the median norm), the median angle of a step over all layers and measurements, "
            "and the largest |cos(g, W)| (0 for an exactly scale-invariant weight; the layers' eps = 1e-5 makes it "
            "small, not 0). The exact identities at eps = 0 are checked by the theory study.", "",
            report.table(["part", "variant", "LR", "seed", "layers", "median ||W|| start", "end", "eta/||W||^2 start",
                          "end", "median angle (rad)", "max |cos(g, W)|"], rows), ""]


def density_lines(doc):
    rows = []
    for run in doc["runs"].values():
        if run.get("part") not in ("dln", "vgg") or not run.get("slq"):
            continue
        for when in ("initial", "final"):
            for mode, d in (run["slq"].get(when) or {}).items():
                rows.append([run["part"], report.label(run["variant"]), f"{run['lr']:g}", run["seed"], when, mode,
                             _f(d["lambda_max"]), _f(d["lambda_min"]), _f(d["moment1"]), _f(d["moment2"]),
                             _f(slq.outlier_ratio(d)), f"{d['probes']} x {d['steps']} ({d['hvps']} products)"])
    return ["## Hessian eigenvalue densities (SLQ)", "",
            "Per density: the largest and smallest Ritz value over the probes, the quadrature's estimates of tr(H)/n "
            "(m1) and tr(H^2)/n (m2), and the outlier ratio lambda_max / sqrt(m2). Train mode: batch statistics (the "
            "VGG's per chunk); eval mode: running statistics.", "",
            report.table(["part", "variant", "LR", "seed", "when", "mode", "lambda_max", "lambda_min", "m1", "m2",
                          "outlier ratio", "probes x steps"], rows), ""]


def depth_lines(doc):
    rows = []
    for run in runs_of(doc, "depth"):
        for network, profiles in run["networks"].items():
            for variant, p in profiles.items():
                g = report.floats(p["grad_norm"])
                rows.append([network, report.label(variant), run["seed"], len(g), _f(g[0]), _f(g[-2] if g.size > 1 else None),
                             _f(grad_ratio(p)), _f(p["effective_rank"][0]), _f(last_hidden_rank(p)),
                             p["rank"][-2] if len(p["rank"]) > 1 else "-", _f(p["stable_rank"][-2] if len(p["rank"]) > 1 else None)])
    return ["## Depth at initialization", "",
            "Per network and variant (probe mode: batch statistics): the gradient norm of the first and of the last "
            "hidden weight layer and their ratio; the effective rank tr(C)^2/||C||_F^2 of the first layer's "
            "representation and of the last hidden one, the latter's rank and stable rank.", "",
            report.table(["network", "variant", "seed", "weight layers", "||g_1||", "||g_(K-1)||", "ratio",
                          "eff. rank, layer 1", "eff. rank, last hidden", "rank, last hidden",
                          "stable rank, last hidden"], rows), ""]


def width_lines(doc, records):
    subs = width_docs(doc)
    if not subs:
        return []
    rows = []
    for width, sub in subs.items():
        for run in sub["runs"].values():
            rows.append([width, report.label(run["variant"]), f"{run['lr']:g}", run["seed"],
                         _f(report.floats(run["loss"])[0]), _f(claims.final_loss(run)),
                         "-" if run["diverged_at"] is None else run["diverged_at"]])
    lines = ["## The DLN's width", "",
             "The DLN study's runs (25 layers, its instruments) at each width; the claims are the DLN study's rules "
             "applied to that width's runs alone.", "",
             report.table(["width", "variant", "LR", "seed", "initial loss", "final loss", "diverged at"], rows), ""]
    verdicts = {}
    for rec in records:
        if rec["id"].startswith("width"):
            width, claim_id = rec["id"].split(":", 1)
            verdicts.setdefault(claim_id, {})[width[len("width"):]] = claims.keyword(rec["verdict"])
    vrows = [[f"`{cid}`", *[by.get(str(w), "-") for w in subs], "no" if len(set(by.values())) == 1 else "**yes**"]
             for cid, by in verdicts.items()]
    lines += [report.table(["claim", *[f"width {w}" for w in subs], "depends on the width"], vrows), ""]
    return lines


def report_markdown(doc, records):
    cfg = doc["config"]
    env = cfg.get("environment", {})
    lines = [f"# The sharpness study ({doc['preset']} preset)", "",
             f"Command: `{cfg.get('command')}`; wall time {cfg.get('wall_s', 0):.0f} s; parts {', '.join(cfg['parts'])}; "
             f"seeds {cfg['seeds']}; {env.get('processor', '?')}, {env.get('cpu_count', '?')} CPUs, Python "
             f"{env.get('python', '?')}, NumPy {env.get('numpy', '?')}. Definitions, costs and choices: docs/sharpness.md.",
             "", claims.summary_table(records), "", "## Rules", "", *claims.rules_text(records), ""]
    present = parts_present(doc)
    if present & {"dln", "vgg"}:
        lines += eos_lines(doc) + effective_lr_lines(doc) + density_lines(doc)
    if "depth" in present:
        lines += depth_lines(doc)
    lines += width_lines(doc, records)
    figures = [f for f in FIGURES if os.path.exists(os.path.join(doc.get("_folder", ""), f))]
    if figures:
        lines += ["## Figures", ""] + [f"![{f}]({f})" for f in figures] + [""]
    return "\n".join(lines)


FIGURES = ("fig_eos_dln.png", "fig_beta_vs_lambda.png", "fig_eos_vgg.png", "fig_effective_lr.png",
           "fig_density_dln.png", "fig_density_vgg.png", "fig_depth.png")


def write_report(out, doc):
    """The figures, claims.json and report.md of ``doc`` in ``out``."""
    for f in FIGURES:
        path = os.path.join(out, f)
        if os.path.exists(path):
            os.unlink(path)   # a figure of a part no longer in the results must not linger
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fig_eos(doc, os.path.join(out, "fig_eos_dln.png"), "dln")
        fig_beta_vs_lambda(doc, os.path.join(out, "fig_beta_vs_lambda.png"))
        fig_eos(doc, os.path.join(out, "fig_eos_vgg.png"), "vgg")
        fig_effective_lr(doc, os.path.join(out, "fig_effective_lr.png"))
        fig_density(doc, os.path.join(out, "fig_density_dln.png"), "dln")
        fig_density(doc, os.path.join(out, "fig_density_vgg.png"), "vgg")
        fig_depth(doc, os.path.join(out, "fig_depth.png"))
        records = sharpness_claims(doc)
    claims.write(out, records)
    common.write_report(out, report_markdown({**doc, "_folder": out}, records))
    return records


def main(argv=None):
    folder, doc, _ = common.report_input("minibn.studies.sharpness_report", argv)
    write_report(folder, doc)
    print(f"wrote {os.path.join(folder, 'report.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
