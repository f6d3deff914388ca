"""Figures, claims.json and report.md of the sharpness study, from its results.

    python -m minibn.studies.sharpness_report DIR      # rebuild DIR's figures and report from DIR/results.json

The claims are judged by the rules of :mod:`minibn.claims.sharpness` (written with their
thresholds before the study's first committed run: its ``WRITTEN``), per seed and over seeds; the DLN study's key claims at
every width by its own rules (:mod:`minibn.claims.dln`) on that width's runs.
"""

import os
import sys
import warnings

from minibn import backend, report
from minibn.claims import dln as dln_rules
from minibn.claims import sharpness as rules
from minibn.claims import verdicts
from minibn.claims.sharpness import (EOS_LR, eos_ratio, grad_ratio, judge, last_hidden_rank, one, parts_present,
                                     runs_of, width_docs)
from minibn.measure import slq
from minibn.results import final_loss, finite_median, floats, seeds_of

np = backend.host


# --- figures -------------------------------------------------------------------------------

def _curves(runs, key, sub):
    """Steps and the per-seed curves of runs[i][key][sub], padded with None to a common length."""
    runs = [r for r in runs if r.get(key)]
    return report.aligned(runs, lambda r: r[key]["steps"], lambda r: r[key][sub]) if runs else ([], [])


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
        _against_two_over_eta(ax, lr, f"{part.upper()}, LR {lr:g}: top eigenvalue (train mode)", ls="--", lw=1)
    report.save(fig, path)
    return True


def _against_two_over_eta(ax, lr, title, **line):
    """The stability threshold 2/eta drawn across ``ax``, the title, the step axis and the legend."""
    ax.axhline(2.0 / lr, color="k", label="2/eta", **line)
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.legend(fontsize=7)


def shown_lr(doc, part):
    """The LR a figure of one LR shows: 1e-6 where the part has it, else its largest (None: no run)."""
    lrs = sorted({r["lr"] for r in runs_of(doc, part)}, key=lambda lr: (lr != EOS_LR, -lr))
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
        _against_two_over_eta(ax, lr, f"DLN {report.label(variant)}, LR {lr:g}", lw=0.8)
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
                median = [finite_median(row) for row in e[key]]
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
        top = floats(h["top_eigenvalue"])
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
        lam = floats(run["hessian"]["top_eigenvalue"])
        beta = floats(run["beta_eff"]["beta_eff"])
        curv = floats(run["hessian"]["curvature"])
        n = min(lam.size, beta.size, curv.size)
        with np.errstate(all="ignore"):
            rows.append([report.label(run["variant"]), f"{run['lr']:g}", run["seed"],
                         _f(finite_median(beta[:n] / lam[:n])), _f(finite_median(curv[:n] / lam[:n]))])
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
        first, last = floats(e["norm"][0]), floats(e["norm"][-1])
        angles = floats([a for row in e["angle"] for a in row])
        cos = floats([a for row in e["grad_cos"] for a in row])
        rows.append([run["part"], report.label(run["variant"]), f"{run['lr']:g}", run["seed"], len(e["layers"]),
                     _f(np.median(first)), _f(np.median(last)), _f(run["lr"] / np.median(first) ** 2),
                     _f(run["lr"] / np.median(last) ** 2), _f(finite_median(angles)),
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
                g = floats(p["grad_norm"])
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
                         _f(floats(run["loss"])[0]), _f(final_loss(run)),
                         "-" if run["diverged_at"] is None else run["diverged_at"]])
    lines = ["## The DLN's width", "",
             "The DLN study's runs (25 layers, its instruments) at each width; the claims are the DLN study's rules "
             "applied to that width's runs alone.", "",
             report.table(["width", "variant", "LR", "seed", "initial loss", "final loss", "diverged at"], rows), ""]
    by_claim = {}
    for rec in records:
        if rec["id"].startswith("width"):
            width, claim_id = rec["id"].split(":", 1)
            by_claim.setdefault(claim_id, {})[width[len("width"):]] = verdicts.keyword(rec["verdict"])
    vrows = [[f"`{cid}`", *[by.get(str(w), "-") for w in subs], "no" if len(set(by.values())) == 1 else "**yes**"]
             for cid, by in by_claim.items()]
    lines += [report.table(["claim", *[f"width {w}" for w in subs], "depends on the width"], vrows), ""]
    return lines


def report_markdown(doc, records):
    cfg = doc["config"]
    env = cfg.get("environment", {})
    lines = [f"# The sharpness study ({doc['preset']} preset)", "",
             f"Command: `{cfg.get('command')}`; wall time {cfg.get('wall_s', 0):.0f} s; parts {', '.join(cfg['parts'])}; "
             f"seeds {cfg['seeds']}; {env.get('processor', '?')}, {env.get('cpu_count', '?')} CPUs, Python "
             f"{env.get('python', '?')}, NumPy {env.get('numpy', '?')}. Definitions, costs and choices: docs/sharpness.md.",
             "", verdicts.summary_table(records), "", "## Rules", "",
             f"The rules of `minibn/claims/sharpness.py`, {rules.WRITTEN}; the width claims are the DLN study's rules "
             f"({dln_rules.WRITTEN}).", "", *verdicts.rules_text(records), ""]
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


def write(out, doc, arrays=None):
    """The figures, claims.json and report.md of the results ``doc`` in ``out`` (the study keeps no arrays)."""
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
        records = judge(doc)
    verdicts.write(out, records)
    report.write_markdown(out, report_markdown({**doc, "_folder": out}, records))
    return records


def main(argv=None):
    """``python -m minibn.studies.sharpness_report DIR``: rebuild DIR's figures and report.md from its results."""
    return report.main("minibn.studies.sharpness_report", write, "sharpness", argv)


if __name__ == "__main__":
    sys.exit(main())
