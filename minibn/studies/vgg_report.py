"""Figures, results files and report of the VGG study (:mod:`minibn.studies.vgg`).

    python -m minibn.studies.vgg_report DIR      # rebuild DIR's figures and report from DIR/results.json + .npz

Everything here reads the plain lists of the study's results; nothing measures. The
figure numbers follow the paper's VGG panels as minibn reads them (docs/vgg.md):

    fig1_accuracy, fig1_activations      E1: train/test accuracy at LR and LR_HIGH; activation histograms
    fig2_noisy_accuracy, fig2_noisy_activations   E2: noisy BN vs BN vs standard; activation ridges
    fig3_ics                             E3: ||G - G'|| and cos(G, G') per layer at LR and LR_LOW
    fig4_landscape                       E4: loss variation, gradient predictiveness, beta_eff
    fig5_lp_training, fig6_lp_landscape, fig12_lp_activations   E5: the Lp normalizations
    fig8_moments                         E2: step-to-step changes of the activation moments
    fig11_gradpred_vs_eta                E4: ||grad L(w - eta' g) - g|| against eta', coloured by step

Layer numbers count conv layers 1..n (docs/protocol.md §1); the paper's layer k of VGG-16's 13
becomes layer round(k n / 13) of a net with n conv layers. A study of several seeds draws, for
every curve, the median over seeds with its min-max band (a histogram: the median density and
its band); one seed draws its curves as they are.
"""

import os
import sys

from minibn import backend, io, report
from minibn.claims import vgg as rules
from minibn.claims import verdicts
from minibn.report import color, fmt, label
from minibn.results import (compared, conv_count, moment_series, name_of, runs_over_seeds, scaled_layers,
                            stack_ragged, tail_mean)

np = backend.host


# --- reading the results ----------------------------------------------------------

def samples(arrays, name, conv_layer):
    """(points, n_samples) activation samples of one conv layer of the run ``name`` (NaN where not
    finite); none (zero points) where results.npz has none."""
    return arrays.get(f"{name}/moments/{conv_layer}", np.zeros((0, 0)))


def moving_average(values, k=50):
    """Mean of the last ``k`` values at each point (fewer at the start); NaNs propagate."""
    csum = np.concatenate([[0.0], np.cumsum(values)])
    idx = np.arange(1, len(values) + 1)
    lo = np.maximum(idx - k, 0)
    return (csum[idx] - csum[lo]) / (idx - lo)


def final(run, key):
    values = run.get(key) or []
    return values[-1] if values else None


# --- figures ------------------------------------------------------------------------

def _acc_axes(ax, title):
    ax.set_xlabel("step")
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    ax.set_ylim(0, 1)


def _plot_acc(ax, runs, key, label, color, style="-"):
    """An accuracy curve: the median over seeds with its min-max band (one seed: its curve)."""
    runs = [run for run in runs if run.get(key)]
    if runs:
        steps, curves = report.aligned(runs, lambda run: run["eval_steps"], lambda run: run[key])
        report.line_with_band(ax, steps, curves, label, color, ls=style)


def fig_accuracy(doc, path, variants, lrs, title):
    fig, axes = report.new_figure(1, 3)
    styles = ["-", "--", ":"]
    losses = []
    for v in variants:
        for lr, style in zip(lrs, styles):
            runs = runs_over_seeds(doc, v, lr)
            if not runs:
                continue
            legend = report.diverged_label(f"{label(v)}, LR {lr:g}", runs)
            _plot_acc(axes[0, 0], runs, "train_acc", legend, color(v), style)
            _plot_acc(axes[0, 1], runs, "test_acc", legend, color(v), style)
            steps, curves = report.aligned(runs, lambda run: run["steps"], lambda run: run["loss"])
            curves = [report.drawable(c, log=True) for c in curves]
            loss = report.median_band(curves)[0]
            axes[0, 2].plot(steps, loss, color=color(v), lw=0.3, alpha=0.25)
            report.line_with_band(axes[0, 2], steps, [moving_average(c) for c in curves], legend, color(v), log=True,
                                  ls=style, lw=1.2)
            for run in runs:
                report.mark_divergence(axes[0, 2], run["steps"], report.drawable(run["loss"], log=True),
                                       run["diverged_at"], color(v))
            losses.append(loss)
    _acc_axes(axes[0, 0], f"{title}: training accuracy (eval mode)")
    _acc_axes(axes[0, 1], f"{title}: test accuracy")
    report.log_scale(axes[0, 2], *losses)
    axes[0, 2].set_xlabel("step")
    axes[0, 2].set_title("training loss (mean of 50 steps; x: diverged)")
    axes[0, 0].legend(fontsize=7)
    report.save(fig, path)


def fig_histograms(doc, arrays, path, variants, paper_layers, lr):
    layers = scaled_layers(conv_count(doc), paper_layers)
    fig, axes = report.new_figure(1, len(layers))
    for ax, layer in zip(axes[0], layers):
        for v in variants:
            runs = runs_over_seeds(doc, v, lr)
            last = [a[-1] for a in (samples(arrays, name_of(doc, run), layer) for run in runs) if len(a)]
            if last:
                report.histogram_with_band(ax, stack_ragged(last), label(v), color(v))
        ax.set_title(f"conv layer {layer}: pre-activations at the last step")
        ax.set_xlabel("value")
        ax.legend(fontsize=7)
    report.save(fig, path)


def fig_ridges(doc, arrays, path, variants, paper_layers, lr):
    layers = scaled_layers(conv_count(doc), paper_layers)
    present = [v for v in variants if runs_over_seeds(doc, v, lr)]
    fig, axes = report.new_figure(max(1, len(present)), len(layers), width=3.6, height=3.0)
    for row, v in enumerate(present):
        runs = runs_over_seeds(doc, v, lr)
        for col, layer in enumerate(layers):
            ax = axes[row, col]
            # per measured step, one row of samples per seed (a seed that diverged earlier: none)
            steps, by_seed = report.aligned(runs, lambda run: run["moments"]["steps"],
                                     lambda run: list(samples(arrays, name_of(doc, run), layer)), [])
            report.ridge(ax, [stack_ragged(rows) for rows in zip(*by_seed)], steps, color=color(v), bins=25)
            ax.set_title(f"{label(v)}, layer {layer}", fontsize=9)
    report.save(fig, path)


def beside_bn(doc, variants):
    """``variants`` with the normalizers the study added beside BN (``--variants``) after ``batchnorm``."""
    return [w for v in variants for w in (compared(doc["config"]) if v == "batchnorm" else [v])]


def fig_ics(doc, path, lrs, variants=("standard", "batchnorm"), paper_layers=(5, 10)):
    n = conv_count(doc)
    layers = scaled_layers(n, paper_layers)
    fig, axes = report.new_figure(1 + 2 * len(layers), len(lrs), width=4.4, height=2.6)
    for col, lr in enumerate(lrs):
        for v in variants:
            runs = runs_over_seeds(doc, v, lr)
            _plot_acc(axes[0, col], runs, "train_acc", label(v), color(v))
            runs = [run for run in runs if run.get("ics")]
            for k, layer in enumerate(layers):
                for ax, key in ((axes[1 + k, col], "l2"), (axes[1 + len(layers) + k, col], "cos")):
                    if runs:
                        steps, curves = report.aligned(runs, lambda run: run["ics"]["steps"],
                                                lambda run: [row[layer - 1] for row in run["ics"][key]])
                        report.line_with_band(ax, steps, curves, label(v), color(v), log=key == "l2", lw=1.5)
        _acc_axes(axes[0, col], f"LR {lr:g}: training accuracy")
        axes[0, col].legend(fontsize=7)
        for k, layer in enumerate(layers):
            axes[1 + k, col].set_title(f"LR {lr:g}, layer {layer}: ||G - G'||", fontsize=9)
            report.log_scale(axes[1 + k, col], *(line.get_ydata() for line in axes[1 + k, col].get_lines()))
            axes[1 + len(layers) + k, col].set_title(f"LR {lr:g}, layer {layer}: cos(G, G')", fontsize=9)
            axes[1 + len(layers) + k, col].set_ylim(-1.05, 1.05)
    for ax in axes[-1]:
        ax.set_xlabel("step")
    report.save(fig, path)


def landscape_curves(runs, key):
    return report.aligned(runs, lambda run: run["landscape"]["steps"], lambda run: run["landscape"][key])


def fig_landscape(doc, path, variants, lr):
    fig, axes = report.new_figure(1, 3)
    for v in variants:
        runs = [run for run in runs_over_seeds(doc, v, lr) if run.get("landscape")]
        if not runs:
            continue
        # a run's band is its range over the eta' grid: several seeds draw the median of each edge,
        # and dotted lines at the lowest low edge and the highest high edge over seeds
        for ax, low, high in ((axes[0, 0], "loss_min", "loss_max"), (axes[0, 1], "gradpred_min", "gradpred_max")):
            (steps, lows), (_, highs) = landscape_curves(runs, low), landscape_curves(runs, high)
            (lo, lo_min, _), (hi, _, hi_max) = report.median_band(lows), report.median_band(highs)
            report.range_band(ax, steps, lo, hi, label(v), color(v))
            if len(runs) > 1:
                ax.plot(steps, report.drawable(lo_min, log=True), ":", color=color(v), lw=0.8)
                ax.plot(steps, report.drawable(hi_max, log=True), ":", color=color(v), lw=0.8)
        report.line_with_band(axes[0, 2], *landscape_curves(runs, "beta_eff"), label(v), color(v), log=True, lw=1.5)
    axes[0, 0].set_title(f"loss variation along the gradient (LR {lr:g})")
    axes[0, 1].set_title("gradient predictiveness ||∇L(w-η'g) - g||")
    axes[0, 2].set_title("effective β-smoothness")
    report.log_scale(axes[0, 2], *(line.get_ydata() for line in axes[0, 2].get_lines()))
    for ax in axes[0]:
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    report.save(fig, path)


def fig_gradpred_vs_eta(doc, path, lr, variants=("standard", "batchnorm")):
    import matplotlib.cm as cm

    panels = [(v, [run for run in runs_over_seeds(doc, v, lr) if run.get("landscape")]) for v in variants]
    panels = [(v, runs) for v, runs in panels if runs]
    fig, axes = report.new_figure(1, max(1, len(panels)))
    for ax, (v, runs) in zip(axes[0], panels):
        ls = runs[0]["landscape"]
        steps, by_seed = report.aligned(runs, lambda run: run["landscape"]["steps"], lambda run: run["landscape"]["grad_diff"],
                                 [None] * len(ls["eta"]))
        for s, diffs in zip(steps, zip(*by_seed)):
            report.line_with_band(ax, ls["eta"], diffs, None, cm.viridis(s / max(1, steps[-1])), log=True,
                                  marker="o", ms=2, lw=0.8)
        ax.set_xscale("log")
        report.log_scale(ax, *(line.get_ydata() for line in ax.get_lines()))
        ax.set_xticks(ls["eta"], [f"{e:g}" for e in ls["eta"]])
        ax.minorticks_off()
        ax.set_xlabel("η'")
        ax.set_title(f"{label(v)}: ||∇L(w-η'g) - g|| (colour: step 0 → {steps[-1]})", fontsize=9)
    report.save(fig, path)


def fig_moments(doc, path, variants, lr, paper_layers=(2, 9, 13)):
    layers = scaled_layers(conv_count(doc), paper_layers)
    fig, axes = report.new_figure(2, len(layers))
    for v in variants:
        runs = runs_over_seeds(doc, v, lr)
        if not runs:
            continue
        for col, layer in enumerate(layers):
            for row, key in enumerate(("mean_change", "var_change")):
                steps, curves = report.aligned(runs, lambda run: run["moments"]["steps"],
                                        lambda run: moment_series(run, layer)[key])
                report.line_with_band(axes[row, col], steps, curves, label(v), color(v), log=True, lw=1.5)
    for col, layer in enumerate(layers):
        axes[0, col].set_title(f"layer {layer}: mean over units of |Δμ|", fontsize=9)
        axes[1, col].set_title(f"layer {layer}: mean over units of |Δσ²|", fontsize=9)
        for row in range(2):
            report.log_scale(axes[row, col], *(line.get_ydata() for line in axes[row, col].get_lines()))
            axes[row, col].set_xlabel("step")
    axes[0, 0].legend(fontsize=7)
    report.save(fig, path)


def step_rate(run):
    """Images/s of the run's bare training step: recorded by runs made before the benchmark moved
    to benchmarks/bench_vgg_variants.py, "-" for the others."""
    rate = run.get("step_images_per_s")
    return "-" if rate is None else f"{rate:.0f}"


def runs_table(doc):
    rows = []
    for name, run in doc["runs"].items():
        rows.append([name, ", ".join(run.get("experiments", [])), fmt(tail_mean(run["loss"])),
                     fmt(final(run, "train_acc")), fmt(final(run, "test_acc")),
                     "-" if run["diverged_at"] is None else run["diverged_at"],
                     f"{run['wall_s']:.0f}", step_rate(run)])
    return report.table(["run", "experiments", "final train loss", "train acc", "test acc", "diverged at",
                         "wall s", "step images/s"], rows)


FIGURES = ["fig1_accuracy", "fig1_activations", "fig2_noisy_accuracy", "fig2_noisy_activations", "fig3_ics",
           "fig4_landscape", "fig5_lp_training", "fig6_lp_landscape", "fig8_moments", "fig11_gradpred_vs_eta",
           "fig12_lp_activations"]


def seeds_text(cfg):
    """``seed 0`` or ``seeds 0, 1, 2``."""
    seeds = cfg["seeds"]
    return f"seed{'s' if len(seeds) > 1 else ''} {', '.join(str(s) for s in seeds)}"


def carried_over(doc, arrays):
    """``{variant: records}``: the claims about BN judged with each normalizer the study added beside
    BN in its place (:func:`minibn.claims.verdicts.carry_over`)."""
    return {v: verdicts.carry_over(lambda d: rules.judge(d, arrays), doc, v) for v in compared(doc["config"])[1:]}


def carry_over_lines(records, carried):
    if not carried:
        return []
    return [
        "## Other normalizers in BN's place", "",
        f"Which of the paper's conclusions about BN carry over to {', '.join(label(v) for v in carried)}: each "
        "claim that compares BN with the standard network, judged by its own rule on the same quantities with the "
        "normalizer's runs standing where BN's stand (`minibn.claims.verdicts.carry_over`; per seed in `carry_over.json`). "
        "BN's row repeats its verdict above. \"not measured\": the study has no run or experiment the rule needs.",
        "", verdicts.carry_over_table(records, carried, "vgg"), ""]


def report_markdown(doc, arrays, figures, records=None, carried=None):
    cfg = doc["config"]
    env = cfg["environment"]
    records = rules.judge(doc, arrays) if records is None else records
    carried = carried_over(doc, arrays) if carried is None else carried
    lines = [
        f"# VGG / CIFAR-10 study, preset `{doc['preset']}`", "",
        "## The paper's claims: verdicts", "",
        "Each claim of docs/protocol.md §4a that the selected experiments test, judged per seed by a rule of "
        f"`minibn/claims/vgg.py` ({rules.WRITTEN}; each rule is stated under \"Claims beside "
        "measurements\"); also in `claims.json`.", "",
        verdicts.summary_table(records), "",
        f"Command: `{cfg['command']}`  ",
        f"Machine: {env['platform']}, {env['processor']}, {env['cpu_count']} cores, Python {env['python']}, "
        f"NumPy {env['numpy']}, backend `{cfg['backend']}`  ",
        f"Time: the runs' wall times (training with instruments and evaluations) add up to "
        f"{sum(r['wall_s'] for r in doc['runs'].values()) / 60:.0f} min; this invocation took {cfg['wall_s'] / 60:.1f} min "
        f"(runs already finished are read back, not retrained)", "",
        f"Model: VGG `{cfg['config']}` at width {cfg['width']:g}, Glorot-uniform init; plain SGD (no momentum, no "
        f"weight decay), batch {cfg['batch']}, {cfg['steps']} steps, softmax cross-entropy; LR {cfg['lr']:g} "
        f"(E1 also {cfg['lr_high']:g}, E3 also {cfg['lr_low']:g}); {seeds_text(cfg)}. Accuracy in eval mode "
        f"(running statistics, no noise) on {cfg['eval_train_size']} training and {cfg['eval_test_size']} test images "
        f"every {cfg['eval_every']} steps; instruments every {cfg['measure_every']} steps; landscape grid "
        f"{cfg['eta_multipliers']}×LR.", "",
        *carry_over_lines(records, carried),
        "## Claims beside measurements", "",
        *verdicts.rules_text(records), "",
        "## Runs", "", runs_table(doc), "",
        "\"final train loss\" is the mean training-batch loss over the last 10% of steps (train mode: noisy BN's "
        "with its noise); accuracies are the last evaluation; \"step images/s\" times the bare training step "
        "(forward, backward, update) of the variant on this machine (`-`: not timed by the study; "
        "`python benchmarks/bench_vgg_variants.py --preset PRESET` times it).", "",
        "## Figures", "",
    ]
    lines += [f"![{f}]({f}.png)" for f in figures]
    return "\n".join(lines) + "\n"


def write(out, doc, arrays):
    """The figures the study's experiments call for, claims.json (and carry_over.json) and report.md of
    the results ``doc`` and ``arrays``; returns the figures' names."""
    cfg = doc["config"]
    lr = cfg["lr"]
    made = []

    def make(name, fn, *args):
        if fn in NEEDS_ARRAYS and not arrays:   # a folder kept without its results.npz: the figure stays
            print(f"{out} has no results.npz: {name}.png is left as it is")
            if os.path.exists(path(name)):
                made.append(name)
            return
        fn(doc, *args) if fn not in NEEDS_ARRAYS else fn(doc, arrays, *args)
        made.append(name)

    path = lambda name: os.path.join(out, f"{name}.png")  # noqa: E731
    exps = doc["experiments"]
    std_bn = beside_bn(doc, ["standard", "batchnorm"])
    if "E1" in exps:
        make("fig1_accuracy", fig_accuracy, path("fig1_accuracy"), std_bn, [lr, cfg["lr_high"]], "E1")
        make("fig1_activations", fig_histograms, path("fig1_activations"), std_bn, (3, 11), lr)
    if "E2" in exps:
        variants = beside_bn(doc, ["standard", "standard_noisy", "batchnorm", "noisy"])
        make("fig2_noisy_accuracy", fig_accuracy, path("fig2_noisy_accuracy"), variants, [lr], "E2")
        make("fig2_noisy_activations", fig_ridges, path("fig2_noisy_activations"), variants, (2, 9, 13), lr)
        make("fig8_moments", fig_moments, path("fig8_moments"), variants, lr)
    if "E3" in exps:
        make("fig3_ics", fig_ics, path("fig3_ics"), [lr, cfg["lr_low"]], std_bn)
    if "E4" in exps:
        make("fig4_landscape", fig_landscape, path("fig4_landscape"), std_bn, lr)
        make("fig11_gradpred_vs_eta", fig_gradpred_vs_eta, path("fig11_gradpred_vs_eta"), lr, std_bn)
    if "E5" in exps:
        lp = beside_bn(doc, ["standard", "batchnorm", "l1", "l2", "linf"])
        make("fig5_lp_training", fig_accuracy, path("fig5_lp_training"), lp, [lr], "E5")
        make("fig6_lp_landscape", fig_landscape, path("fig6_lp_landscape"), lp, lr)
        make("fig12_lp_activations", fig_histograms, path("fig12_lp_activations"), lp, (3, 11), lr)
    records, carried = rules.judge(doc, arrays), carried_over(doc, arrays)
    verdicts.write(out, records)
    if carried:
        io.write_json(os.path.join(out, "carry_over.json"), carried)
    report.write_markdown(out, report_markdown(doc, arrays, made, records, carried))
    return made


NEEDS_ARRAYS = (fig_histograms, fig_ridges)


def main(argv=None):
    """``python -m minibn.studies.vgg_report DIR``: rebuild DIR's figures and report.md from its results."""
    return report.main("minibn.studies.vgg_report", write, "vgg", argv)


if __name__ == "__main__":
    sys.exit(main())
