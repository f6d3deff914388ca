"""The theory study's report: each statement of docs/protocol.md §5 beside what was measured.

    python -m minibn.studies.theory_report DIR      # rebuild DIR/report.md from DIR/results.json

Reads the results of :mod:`minibn.studies.theory` (statements, tallies, the hand-made
counterexamples and the trained networks' record); nothing here measures.
"""

import sys

from minibn import report
from minibn.claims import theory as rules
from minibn.claims import verdicts
from minibn.measure import theorychecks

SOURCES = ("random", "dln", "mlp", "vgg")
MEASURED = {
    "bn_jacobian": ("per BN layer (all channels)", "max over channels and rows of |code - (gamma/sigma) P| / max|(gamma/sigma) P|, "
                    "and the same for the code's P 1 = P y_hat = 0 and P^2 = P"),
    "thm41": ("per unit", "|lhs - rhs| / ((gamma^2/sigma^2) ||g_hat||^2)"),
    "thm41_printed": ("per unit", "violation max(0, lhs - printed rhs) / ((gamma^2/sigma^2) ||g_hat||^2)"),
    "thm42_identity": ("per unit", "|lhs - rhs| / (|curvature term| + |mean term|)"),
    "obs43": ("per BN layer", "max|z - y| / max|y|"),
    "thm44": ("per weight layer", "max|code - X^T (gamma/sigma) P g_hat| / (lambda max_j (|gamma_j|/sigma_j) ||g_hat_j||); "
                                  "bound violations counted separately"),
    "lemma45_identity": ("per weight layer", "|lhs - rhs| / (||W0 - W*||^2 + (||W*||^2 - <W*,W0>)^2/||W*||^2)"),
    "lemma45_premise": ("per regression problem", "relative loss excess (min over gamma, beta of L_hat(k W*) - min L_hat) "
                                              "/ min over gamma, beta of L_hat(k W*)"),
    "scale_invariance": ("per weight layer", "max of the relative errors of output, loss and a * grad"),
    "normalizer_scale_invariance": ("per normalizer and input", "max over a global and a local scale (per channel, "
                                    "sample, sample and group, or output unit) of the relative errors of the output "
                                    "and of a * dL/dx (minibn.theory.normalizer_scale_invariance)"),
    "layernorm_projection": ("per batch", "max over samples of |J_n 1|, |J_n x_n| (relative), the asymmetry and "
                             "non-idempotence of J_n / s_n, |s_n - inv_std_n| / inv_std_n and the cross-sample "
                             "entries (minibn.theory.normalizer_projection); rank m - 2 and central differences "
                             "within 1e-6 required too"),
    "weight_grad_orthogonal": ("per weight layer and gradient", "max over units of |<g_j, W_j>| / (||W_j|| lambda (|gamma_j|/sigma_j) ||g_hat_j||), "
                               "for minibn's Dense -> BN gradient and, on trained networks, the network's own"),
    "gd_norm_growth": ("per weight layer and gradient", "max over units of | ||W_j - lr g_j||^2 - ||W_j||^2 - lr^2 "
                       "||g_j||^2 | / (||W_j|| + lr b_j)^2, b_j the bound on ||g_j|| above, lr the network's (random layers: 1, 0.1, 0.01, "
                       "0.001 in turn)"),
}


def render_report(doc):
    """report.md's text for the study's results ``doc`` (results.json)."""
    f = report.fmt
    results, cfg = doc, doc["config"]
    env = cfg.get("environment", {})
    checks = {c["name"]: c for c in results["checks"]}
    header = ["check", "statement", "holds", "instances (random / DLN / MLP / VGG)", "max rel. err", "tolerance", "measured"]
    rows = []
    for name, c in checks.items():
        by = c["by_source"]
        counts = " / ".join(str(by.get(s, {}).get("instances", 0)) for s in SOURCES)
        if "counterexample" in by:
            counts += " + 1 hand-made"
        rows.append([f"`{name}`", c["statement"], "**yes**" if c["holds"] else "**no**", counts, f(c["max_rel_err"]),
                     f(c["tolerance"]), MEASURED[name][0]])
    lines = ["# Section 4 of the paper, checked against minibn's code", "",
             "## The paper's statements: verdicts", "",
             "docs/protocol.md §4a names no claim of this study (its claims are the experiments'); the statements "
             "of §5 are judged instead, each as `theory.CHECK` by `minibn.claims.theory.judge`: reproduced when no "
             "instance is off by more than the tolerance. Also in `claims.json`.", "",
             verdicts.summary_table(rules.judge(doc)), "",
             "Every statement of docs/protocol.md §5, evaluated with minibn's own BatchNorm and Dense forward/backward "
             "(eps = 0, population variance, as the theory assumes) on random layers and on every BN layer of "
             "three trained networks at several points of training; the other normalizers' invariances "
             "(`normalizer_scale_invariance`, `layernorm_projection`) on random inputs of their own code. "
             "Derivations and the corrections to the published text: [docs/theory.md](../../docs/theory.md).", "",
             f"Command: `{cfg['command']}` — backend {cfg['backend']}, seed "
             f"{cfg['seed']}, {cfg['instances']} random instances, networks trained {cfg['steps']} steps and "
             f"checked every {cfg['every']} steps; machine: {env.get('processor', '?')} {env.get('cpu_count', '?')} "
             f"CPUs (Python {env.get('python', '?')}); wall time {cfg['wall_s']:.0f} s.", "",
             report.table(header, rows), "",
             "A statement **holds** when every instance agrees within the tolerance (for the two statements that "
             "do not hold, an instance *violates* it when the claim is off by more than the tolerance).", "",
             "## What each number is", ""]
    for name in MEASURED:
        lines.append(f"- `{name}` ({MEASURED[name][0]}): {MEASURED[name][1]}.")
    bj, t44, t42 = checks["bn_jacobian"], checks["thm44"], checks["thm42_identity"]
    lines += ["",
              "Sides: the left side of each identity is computed by minibn's layer code (BatchNorm backward of unit "
              "cotangents for the Jacobian; backward passes for gradients; second derivatives of L_hat by Richardson-"
              "extrapolated central differences of minibn's gradients), the right side from first principles "
              "(mean, population sigma and y_hat recomputed from the layer's input batch).", "",
              f"- BN Jacobian, central differences of minibn's forward against (gamma/sigma) P: max rel. err "
              f"{f(bj.get('max_rel_err_numeric'))} (tolerance {theorychecks.NUMERIC_JACOBIAN_TOLERANCE:g}); the largest "
              f"conditioning max|y|/sigma met was {f(bj.get('max_conditioning'))}.",
              f"- Theorem 4.4: the bound's largest ratio ||dL_hat/dW_j||^2 / (lambda^2 ||dL_hat/dy_j||^2) was "
              f"{f(t44.get('max_bound_ratio'))} (<= 1; {t44['violations']} violations).",
              f"- Theorem 4.2: downstream Hessians are exact (random instances, half of them) or differences of "
              f"gradients (the others and all networks); units whose finite differences straddle a ReLU/max-pool "
              f"kink even at the smallest step are skipped: {t42.get('skipped_at_kinks', 0)} skipped (" +
              ", ".join(f"{s}: {t42['by_source'].get(s, {}).get('skipped_at_kinks', 0)}" for s in SOURCES) + ").", "",
              "## The statements that fail", "",
              "### Theorem 4.1 as printed (1/sqrt(m))", ""]
    tp = checks["thm41_printed"]
    ce = tp["counterexample"]
    lines += [f"Violated on {tp['violations']} of {tp['instances']} units (every unit with <g_hat, y_hat> != 0 "
              f"and m > 1 violates it, because the printed right side is the true value minus "
              f"(1/sqrt(m) - 1/m) <g_hat, y_hat>^2 gamma^2/sigma^2). Relative violations ranged from "
              f"{f(tp.get('min_rel_violation'))} to {f(tp['max_rel_err'])} (the bound on it is sqrt(m) - 1).", "",
              f"Hand-made instance: m = 4, y = (1, 2, 3, 5), gamma = 1, beta = 0, {ce['loss']}. Then L_hat = m/2 "
              f"is constant, the BN gradient is zero: lhs = {f(ce['lhs'])}, and the 1/m right side = "
              f"{f(ce['rhs_1_over_m'])}, but the printed right side = {f(ce['rhs_printed'])} < 0.", ""]
    for src in SOURCES:
        first = tp["by_source"].get(src, {}).get("first_violation")
        if first:
            loc = f"step {first['step']}, layer {first['layer']}, " if "step" in first else ""
            lines.append(f"- first violation in `{src}`: {loc}unit {first['unit']}, m = {first['m']}: lhs = "
                         f"{f(first['lhs'], 6)} > printed rhs = {f(first['rhs_printed'], 6)} (1/m rhs = "
                         f"{f(first['rhs_1_over_m'], 6)}, <g_hat, y_hat> = {f(first['g_dot_yhat'])})")
    lp = checks["lemma45_premise"]
    cx = lp["counterexample"]
    at = cx["at_k_w_star"]
    lines += ["", "### Lemma 4.5's premise", "",
              "One neuron y = x w (no bias), identity activation, summed squared error, three data points "
              "x = (1,0), (0,1), (1,1) with targets t = (1, 2, 4). The BN network is the same neuron followed by BN "
              "(eps = 0) with trainable gamma, beta.", "",
              f"- Standard network: w* = ({f(cx['w_star'][0], 6)}, {f(cx['w_star'][1], 6)}) (exactly (4/3, 7/3)), "
              f"loss {f(cx['standard_loss'], 6)} (1/3), gradient norm {f(cx['standard_grad_norm'])}: an optimum.",
              f"- BN network on the ray k w*: the best gamma, beta (least squares) give loss {f(at[0]['bn_loss'], 6)} "
              f"(exactly 2/37) for every k; there d/dgamma, d/dbeta = {f(max(a['grad_gamma_beta'] for a in at))} but "
              "||d/dw|| = " + ", ".join(f"{f(a['grad_w_norm'], 4)} (k = {a['k']:g})" for a in at) +
              ", i.e. (1/k) times a nonzero vector: no point (k w*, gamma, beta) is stationary.",
              f"- BN optimum: w = ({f(cx['bn_opt_w'][0], 6)}, {f(cx['bn_opt_w'][1], 6)}) (and its positive multiples, "
              f"gamma rescaled), "
              f"gamma = {f(cx['bn_opt_gamma'], 6)}, beta = {f(cx['bn_opt_beta'], 6)}: loss {f(cx['bn_opt_loss'])} "
              f"(gradient norm {f(cx['bn_opt_grad_norm'])}), strictly below 2/37.",
              f"- Consequently the lemma's inequality fails at the initialization W0 = w* (<W0, w*> > 0): its right "
              f"side is 0 but the squared distance to the closest BN optimum is {f(cx['lemma_lhs'], 6)} (4/117).",
              f"- Random problems of the same kind (n = d+1 .. 10 Gaussian points in R^d, d = 2 or 3, shifted by a "
              f"random offset, Gaussian targets): the premise fails on {lp['by_source'].get('random', {}).get('violations', 0)} "
              f"of {lp['by_source'].get('random', {}).get('instances', 0)}, with relative loss excess up to "
              f"{f(lp['by_source'].get('random', {}).get('max_rel_err'))} (interpolated points: the BN optimum has loss 0) and "
              f"at least {f(lp.get('min_rel_loss_excess'))}. It holds only when w* is parallel to the "
              "slope of the least-squares fit with an intercept (e.g. for centred inputs; tests/test_theory.py checks "
              "that case too).", "",
              "## Trained networks", ""]
    for name, t in doc["networks"].items():
        losses = ", ".join(f"{s}: {f(v, 4)}" for s, v in zip(t["checked_steps"], t["loss_at_checked_steps"]))
        lines.append(f"- `{name}`: {t['description']}. {t['bn_layers']} BN layers, checked at steps "
                     f"{t['checked_steps']}; loss (eps = 0, batch of that step) {losses}.")
    lines += ["", "During a check every BN layer runs with eps = 0 in probe mode (batch statistics, no state change); "
              "training itself uses minibn's default eps = 1e-5. The downstream function of a BN layer is the rest of "
              "the real network and its loss. Lemma 4.5's identity is checked with W0 = the layer's initial weights "
              "and W* = its weights at the checked step (steps > 0).", ""]
    return "\n".join(lines)


def write(out, doc, arrays=None):
    """claims.json and report.md of the results ``doc`` in ``out`` (the study keeps no arrays)."""
    verdicts.write(out, rules.judge(doc))
    report.write_markdown(out, render_report(doc))


def main(argv=None):
    """``python -m minibn.studies.theory_report DIR``: rebuild DIR/report.md from its results."""
    return report.main("minibn.studies.theory_report", write, "theory", argv)


if __name__ == "__main__":
    sys.exit(main())
