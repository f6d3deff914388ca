"""Figures, results files and report.md of the DLN study, from its run results.

    python -m minibn.studies.dln_report DIR      # rebuild DIR's figures and report from DIR/results.json

The report opens with the verdict on each claim of docs/protocol.md §4a that the DLN tests,
judged by the rules of :mod:`minibn.claims.dln` (written there, with their thresholds and
windows; when, relative to the committed runs: its ``WRITTEN``) and written to DIR/claims.json; it then measures the
loss scale (the residual of the best rank-k fit of the target for every k, and the plateau
each run ends on). Everything here reads the results (:mod:`minibn.results`); nothing measures.
"""

import math
import os
import sys
import warnings

from minibn import backend, io, report, results
from minibn.claims import dln as rules
from minibn.claims import verdicts
from minibn.nn import normalization
from minibn.results import added_normalizers, final_loss, finite_median, floats, lrs_of, name_of, rank_residuals, window

np = backend.host
ICS_LAYERS = (9, 17)


# --- per-run summaries --------------------------------------------------------------
def ics_summary(run, layers=None):
    """Per block (1-based): median over points after step 0 of l2 and cos; plus the fraction of cos < 0."""
    ics = run.get("ics") or {}
    steps = ics.get("steps", [])
    idx = window(steps)
    out = {}
    for j, layer in enumerate(ics.get("layers", [])):
        if layers is not None and layer not in layers:
            continue
        l2 = [ics["l2"][i][j] for i in idx]
        cos = [ics["cos"][i][j] for i in idx]
        c = floats(cos)
        out[layer] = {"l2": finite_median(l2), "cos": finite_median(cos),
                      "neg_cos_frac": float(np.mean(c[np.isfinite(c)] < 0)) if np.isfinite(c).any() else math.nan}
    return out


def loss_scale_lines(doc):
    """Markdown: the residual of the best rank-k linear fit of each seed's target for every k
    (:func:`minibn.results.rank_residuals`), the plateau each run ends on, and the paper's values."""
    residuals = {}
    for run in doc["runs"].values():
        residuals.setdefault(run["seed"], rank_residuals(run["target_singular_values"]))
    seeds = sorted(residuals)
    ranks = range(len(next(iter(residuals.values()))))
    lines = ["## The loss scale, measured", "",
             "The summed loss of a linear network can go no lower than the best linear fit of the target, and a "
             "network that has learned only k of the target's modes no lower than the best rank-k fit. For each "
             "seed's data (the singular values each run recorded of its target), r_k is the residual of the best "
             "rank-k fit of Y = X A^T: the sum of the squared singular values of Y beyond the k-th.", "",
             report.table(["seed"] + [f"r_{k}" for k in ranks], [[s] + [report.fmt(r) for r in residuals[s]]
                                                                 for s in seeds]), "",
             "Each run's final loss, the rank k whose residual is nearest it (log scale) and their ratio; the "
             "paper's value where it plots one (fig. 3, 5b):", ""]
    rows = []
    for (variant, lr), runs in results.groups(doc).items():
        plateaus_of = []
        for run in runs:
            if run["diverged_at"] is not None:
                plateaus_of.append(f"seed {run['seed']}: diverged")
                continue
            k, to_rk = rules.plateau(final_loss(run), residuals[run["seed"]])
            plateaus_of.append(f"seed {run['seed']}: k = {k} ({report.fmt(to_rk, 4)})")
        finals = [final_loss(r) for r in runs if r["diverged_at"] is None]
        starts = [floats(r["loss"])[0] for r in runs]
        paper = rules.PAPER_FINAL.get((variant, lr))
        rows.append([variant, f"{lr:g}", _median_range(starts), f"{rules.PAPER_INITIAL[0]:g}-"
                     f"{rules.PAPER_INITIAL[1]:g}", _median_range(finals), report.fmt(paper),
                     "; ".join(plateaus_of)])
    lines += [report.table(["variant", "LR", "initial loss (median, range)", "paper initial",
                             "final loss (median, range)", "paper final", "plateau: rank k (final / r_k)"], rows), ""]
    return lines


def _median_range(values):
    a = floats(values)
    a = a[np.isfinite(a)]
    if not a.size:
        return "-"
    return report.fmt(np.median(a)) + ("" if a.min() == a.max() else f" ({report.fmt(a.min())} to {report.fmt(a.max())})")


def plateaus(doc, rel=0.01):
    """Per (LR, seed): whether batchnorm, l1, l2 and linf end within ``rel`` of one final loss."""
    groups = results.groups(doc)
    out = []
    for lr in lrs_of(doc):
        by_seed = {}
        for variant in ("batchnorm", "l1", "l2", "linf"):
            for run in groups.get((variant, lr), []):
                by_seed.setdefault(run["seed"], {})[variant] = final_loss(run)
        for seed, finals in sorted(by_seed.items()):
            if len(finals) > 1:
                lo, hi = min(finals.values()), max(finals.values())
                out.append((lr, seed, finals, hi <= (1 + rel) * lo))
    return out


# --- figures ---------------------------------------------------------------------------
def fig_training_loss(doc, path):
    groups, lrs = results.groups(doc), lrs_of(doc)
    fig, axes = report.new_figure(1, len(lrs))
    for ax, lr in zip(axes[0], lrs):
        for (variant, run_lr), runs in groups.items():
            if run_lr != lr:
                continue
            # a diverged seed's curve is shorter: pad it with None (not drawn) to the longest
            report.line_with_band(ax, *report.aligned(runs, lambda r: r["steps"], lambda r: r["loss"]),
                                  report.diverged_label(report.label(variant), runs), report.color(variant), log=True)
            for r in runs:
                report.mark_divergence(ax, r["steps"], report.drawable(r["loss"], log=True), r["diverged_at"],
                                       report.color(variant))
        ax.set(title=f"training loss, LR {lr:g}", xlabel="step", ylabel="loss (sum of squares)")
        ax.legend(fontsize=7)
    report.save(fig, path)


def fig_ics(doc, path):
    groups, lrs = results.groups(doc), lrs_of(doc)
    any_run = next(iter(doc["runs"].values()))
    layers = [k for k in ICS_LAYERS if k in any_run["ics"]["layers"]] or any_run["ics"]["layers"][-2:]
    fig, axes = report.new_figure(len(layers), 2 * len(lrs))
    for c, lr in enumerate(lrs):
        for r, layer in enumerate(layers):
            for variant in ("standard", "batchnorm", *added_normalizers(doc)):
                runs = groups.get((variant, lr), [])
                if not runs:
                    continue
                j = runs[0]["ics"]["layers"].index(layer)
                steps = runs[0]["ics"]["steps"]
                for col, key in ((2 * c, "l2"), (2 * c + 1, "cos")):
                    report.line_with_band(axes[r][col], steps, [[row[j] for row in run["ics"][key]] for run in runs],
                                          report.label(variant), report.color(variant), log=(key == "l2"))
            axes[r][2 * c].set(title=f"layer {layer}: ||G - G'||, LR {lr:g}", xlabel="step")
            axes[r][2 * c + 1].set(title=f"layer {layer}: cos(G, G'), LR {lr:g}", xlabel="step", ylim=(-1.05, 1.05))
            axes[r][2 * c].legend(fontsize=7)
    report.save(fig, path)


def fig_landscape(doc, path, variants, lrs=None):
    groups = results.groups(doc)
    lrs = lrs or lrs_of(doc)
    fig, axes = report.new_figure(len(lrs), 3)
    for r, lr in enumerate(lrs):
        for variant in variants:
            runs = groups.get((variant, lr), [])
            if not runs:
                continue
            run = runs[0]  # bands are per step over the eta grid: show the first seed, as the paper shows one run
            ls = run["landscape"]
            name, colour = report.label(variant), report.color(variant)
            report.range_band(axes[r][0], ls["steps"], ls["loss_min"], ls["loss_max"], name, colour)
            report.range_band(axes[r][1], ls["steps"], ls["gradpred_min"], ls["gradpred_max"], name, colour)
            report.line_with_band(axes[r][2], ls["steps"], [x["landscape"]["beta_eff"] for x in runs], name, colour,
                                  log=True)
        axes[r][0].set(title=f"loss variation, LR {lr:g}", xlabel="step")
        axes[r][1].set(title=f"gradient predictiveness, LR {lr:g}", xlabel="step")
        axes[r][2].set(title=f"effective beta-smoothness, LR {lr:g}", xlabel="step")
        for ax in axes[r]:
            ax.legend(fontsize=7)
    report.save(fig, path)


def fig_gradpred_vs_eta(doc, arrays, path):
    groups, lr = results.groups(doc), lrs_of(doc)[0]
    variants = [v for v in ("standard", "batchnorm", *added_normalizers(doc)) if (v, lr) in groups]
    fig, axes = report.new_figure(1, max(1, len(variants)))
    import matplotlib.cm as cm

    for ax, variant in zip(axes[0], variants):
        run = groups[(variant, lr)][0]
        name = name_of(doc, run)
        diffs = arrays.get(f"{name}/grad_diff")
        ls = run["landscape"]
        if diffs is None:
            continue
        steps = ls["steps"]
        for i, row in enumerate(diffs):
            ax.plot(ls["eta"], report.drawable(row, log=True), color=cm.viridis(i / max(1, len(steps) - 1)), lw=0.8,
                    marker=".", ms=3)
        report.log_scale(ax, *(line.get_ydata() for line in ax.get_lines()))
        ax.set(xscale="log", xlabel="eta'", ylabel="||grad L(w - eta' g) - g||",
               title=f"{variant}, LR {lr:g} (colour: step 0 -> {steps[-1] if steps else '-'})")
    report.save(fig, path)


def fig_activations(doc, arrays, path):
    groups, lr = results.groups(doc), lrs_of(doc)[0]
    variants = [v for v in normalization.REGISTRY if (v, lr) in groups]
    blocks = list(groups[(variants[0], lr)][0]["moments"]["blocks"])
    fig, axes = report.new_figure(len(variants), len(blocks), width=2.6, height=2.6)
    for r, variant in enumerate(variants):
        run = groups[(variant, lr)][0]
        name = name_of(doc, run)
        for c, block in enumerate(blocks):
            ax = axes[r][c]
            report.ridge(ax, list(arrays[f"{name}/moments/{block}/samples"]), run["moments"]["steps"],
                         color=report.color(variant))
            ax.set_title(f"{report.label(variant)}: layer {block}", fontsize=8)
    report.save(fig, path)


# --- assembly -------------------------------------------------------------------------------
def write(out, doc, arrays):
    """The figures, claims.json (and carry_over.json) and report.md of the results ``doc`` and
    ``arrays``. The two figures drawn from results.npz (gradient predictiveness against eta',
    activation ridges) are left as they are when ``arrays`` is empty: a folder can keep its figures
    without its (large) results.npz, as studies/dln does."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # empty bands and all-NaN medians of diverged runs are expected
        fig_training_loss(doc, os.path.join(out, "fig3_training_loss.png"))
        fig_ics(doc, os.path.join(out, "fig3_ics.png"))
        fig_landscape(doc, os.path.join(out, "fig9_landscape_bn.png"), ("standard", "batchnorm", *added_normalizers(doc)))
        lp = [v for v in ("standard", "batchnorm", "l1", "l2", "linf")]
        fig_landscape(doc, os.path.join(out, "fig10_landscape_lp.png"), lp, lrs=lrs_of(doc)[:1])
        if arrays:
            fig_gradpred_vs_eta(doc, arrays, os.path.join(out, "fig11_gradpred_vs_eta.png"))
            fig_activations(doc, arrays, os.path.join(out, "fig13_activations.png"))
        else:
            print(f"{out} has no results.npz: fig11_gradpred_vs_eta.png and fig13_activations.png are left as they are")
    records, carried = rules.judge(doc), carried_over(doc)
    verdicts.write(out, records)
    if carried:
        io.write_json(os.path.join(out, "carry_over.json"), carried)
    report.write_markdown(out, report_markdown(doc, records, carried))


def carried_over(doc):
    """``{variant: records}``: the claims about BN judged with each added normalizer in BN's place
    (:func:`minibn.claims.verdicts.carry_over`)."""
    return {v: verdicts.carry_over(rules.judge, doc, v) for v in added_normalizers(doc)}


def carry_over_lines(records, carried):
    if not carried:
        return []
    return [
        "## Other normalizers in BN's place", "",
        f"Which of the paper's conclusions about BN carry over to {', '.join(report.label(v) for v in carried)}: "
        "each claim that compares BN with the standard network, judged by its own rule on the same quantities "
        "with the normalizer's runs standing where BN's stand, at the LRs where both it and the standard net ran "
        "(`minibn.claims.verdicts.carry_over`; per seed in `carry_over.json`). BN's row repeats its verdict above. "
        "\"not measured\": the study has no run the rule needs.", "",
        verdicts.carry_over_table(records, carried, "dln"), ""]


def report_markdown(doc, records=None, carried=None):
    records = rules.judge(doc) if records is None else records
    carried = carried_over(doc) if carried is None else carried
    same = plateaus(doc)
    plateau_lines = []
    if same:
        plateau_lines = [f"Normalized variants (batchnorm, l1, l2, linf) ending within 1% of one final loss: "
                         f"{sum(p[3] for p in same)} of {len(same)} (LR, seed) pairs (docs/protocol.md §1 reports the same "
                         "plateau from an independent implementation: gradient descent on a product of 25 random "
                         "10x10 matrices learns only a few of A's modes in 10,000 steps).", ""]
    cfg = doc["config"]
    env = cfg.get("environment", {})
    groups = results.groups(doc)
    rows = []
    for name, run in doc["runs"].items():
        final = "diverged" if run["diverged_at"] is not None else report.fmt(final_loss(run))
        rows.append([name, run["variant"], f"{run['lr']:g}", run["seed"], final,
                     run["diverged_at"] if run["diverged_at"] is not None else "-",
                     report.fmt(run.get("hessian_top")),
                     report.fmt(run["hessian_top"] * run["lr"] / 2) if run.get("hessian_top") is not None else "-",
                     f"{run.get('wall_s', math.nan):.1f}", f"{run.get('cpu_s', math.nan):.1f}"])
    eos = []
    for (variant, lr), runs in groups.items():
        deep = [k for k in runs[0]["ics"]["layers"] if k >= 0.6 * max(runs[0]["ics"]["layers"])]
        fracs = [v["neg_cos_frac"] for r in runs for v in ics_summary(r, deep).values()]
        eos.append([variant, f"{lr:g}", report.fmt(finite_median(fracs), 2)])
    lines = [
        f"# DLN study ({doc['preset']} preset)", "",
        "## The paper's claims: verdicts", "",
        f"Each claim of docs/protocol.md §4a judged per seed by a rule of `minibn/claims/dln.py` ({rules.WRITTEN}; "
        "each rule is stated under \"Claims beside measurements\"); also in `claims.json`.", "",
        verdicts.summary_table(records), "",
        "The paper's deep linear network experiments (docs/protocol.md §1; E3, E4, E5 of §4): "
        f"{cfg['depth']} linear layers of width {cfg['width']}, {cfg['samples']} samples, summed squared error, "
        f"full-batch gradient descent for {cfg['steps']} steps, normalization after the first {cfg['norm_layers']} "
        f"layers; seeds {cfg['seeds']}.", "",
        f"Command: `{cfg.get('command', '')}`  ",
        f"Machine: {env.get('platform', '?')}, {env.get('cpu_count', '?')} CPUs, backend {cfg['backend']}; "
        f"python {env.get('python', '?')}, numpy {env.get('numpy', '?')}. This invocation took "
        f"{cfg.get('wall_s', math.nan):.1f} s (runs finished earlier and kept by --resume are read back, not "
        f"retrained); the runs' own wall times add up to {sum(r.get('wall_s', 0) for r in doc['runs'].values()):.0f} s "
        f"and their CPU times to {sum(r.get('cpu_s', 0) for r in doc['runs'].values()):.0f} s.", "",
        *carry_over_lines(records, carried),
        "## Runs", "",
        "lambda_max is the top Hessian eigenvalue of the final weights (power iteration on Hessian-vector "
        "products); lambda_max * LR / 2 near 1 means gradient descent sits at the edge of stability.", "",
        report.table(["run", "variant", "LR", "seed", "final loss", "diverged at", "lambda_max", "lambda_max*LR/2",
                      "wall s", "CPU s"], rows), "",
        *loss_scale_lines(doc),
        *plateau_lines,
        "## Claims beside measurements", "",
        *verdicts.rules_text(records), "",
        "### Edge of stability and deep-layer ICS", "",
        "Fraction of measurement points (after step 0) at which cos(G, G') < 0, median over the deepest 40% of "
        "blocks and over seeds:", "",
        report.table(["variant", "LR", "fraction cos < 0"], eos), "",
        "## Figures", "",
        "- `fig3_training_loss.png`: training loss per variant (median and min-max over seeds).",
        "- `fig3_ics.png`: ||G - G'|| and cos(G, G') for layers 9 and 17, standard vs BN (and the normalizers "
        "added beside BN).",
        "- `fig9_landscape_bn.png`: loss variation and gradient predictiveness bands over the eta' grid, and "
        "beta_eff, standard vs BN and the normalizers added beside it (bands: first seed).",
        "- `fig10_landscape_lp.png`: the same for the Lp variants at the first LR.",
        "- `fig11_gradpred_vs_eta.png`: ||grad L(w - eta' g) - g|| against eta', coloured by step (first seed): "
        "standard, BN and the normalizers added beside BN.",
        "- `fig13_activations.png`: distributions of one random unit's pre-activation over training (ridges).", "",
    ]
    return "\n".join(lines)


def main(argv=None):
    """``python -m minibn.studies.dln_report DIR``: rebuild DIR's figures and report.md from its results."""
    return report.main("minibn.studies.dln_report", write, "dln", argv)


if __name__ == "__main__":
    sys.exit(main())
