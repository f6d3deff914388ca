"""The deep linear network study: the paper's DLN experiments (E3, E4, E5 of docs/protocol.md §4).

    python -m minibn.studies.dln [--backend numpy|cupy] [--preset smoke|paper] [--out DIR]
                                 [--seed N] [--seeds K] [--resume] [--variants ...] [--lr ...]
                                 [--steps N] [--jobs N] [--executor local|dask] [--scheduler ADDRESS]

Each run trains a 25-layer 10x10 linear network (optionally normalized after each of
the first 24 layers) by full-batch gradient descent on summed squared error, with
internal covariate shift, the landscape probes along the gradient and activation
moments measured every 100 steps. Runs are independent, resumable, and run in
``--jobs`` worker processes, or as Dask tasks across machines (``--executor dask``,
docs/distributed.md). The study writes DIR/results.json (+ results.npz),
the figures, and DIR/report.md (see :mod:`minibn.studies.dln_report`). From Python,
:func:`run` does the same and returns the results (docs/studies.md).
"""

import os
import sys
import time

from minibn import backend, io, models, nn, results, train
from minibn.data.synthetic import linear_regression
from minibn.measure import hessian, ics, landscape, moments
from minibn.nn import normalization
from minibn.optim import SGD
from minibn.results import Run
from minibn.studies import common, dln_report

#: minibn's own variants. A run accepts every name registered when it starts, a user's too
#: (normalization.register; docs/your-own-layer.md).
VARIANTS = tuple(normalization.REGISTRY)
#: The variants the presets run: those of the paper's DLN experiments (docs/protocol.md §4).
DEFAULT_VARIANTS = ("standard", "batchnorm", "noisy", "l1", "l2", "linf")

PRESETS = {
    "paper": {
        "depth": 25, "width": 10, "samples": 1000, "norm_layers": 24, "steps": 10_000,
        "measure_every": 100, "log_every": 10, "checkpoint_every": 1000,
        "eta_multipliers": [0.01, 0.1, 1.0, 10.0, 30.0], "moment_layers": [1, 9, 11, 17, 24],
        "moment_samples": 1000, "runs": [[v, 1e-6] for v in DEFAULT_VARIANTS] + [["standard", 1e-7], ["batchnorm", 1e-7]],
        "hessian_iterations": 30,
    },
    "smoke": {
        "depth": 6, "width": 4, "samples": 64, "norm_layers": 5, "steps": 40,
        "measure_every": 10, "log_every": 1, "checkpoint_every": 10,
        "eta_multipliers": [0.01, 0.1, 1.0, 10.0, 30.0], "moment_layers": [1, 3, 5],
        "moment_samples": 64, "runs": [[v, 1e-4] for v in DEFAULT_VARIANTS] + [["standard", 1e-5], ["batchnorm", 1e-5]],
        "hessian_iterations": 10,
    },
}


def loss_fn(pred, target):
    return nn.squared_error(pred, target, reduction="sum")


loss_fn.tangent = nn.losses.squared_error_tangent   # for the exact Hessian-vector products


def moment_layer_indices(model, blocks):
    """Layer index whose *input* is the pre-activation the next block sees after block k (1-based)."""
    groups = model.blocks()
    out = []
    for k in blocks:
        if not 1 <= k < len(groups):
            raise ValueError(f"dln: moment layer {k} is not a block in 1..{len(groups) - 1} of this network")
        out.append(groups[k][0])  # the first layer of block k+1 sees block k's output
    return out


def _worker_slot():
    """1, 2, ... in a pool's worker processes (0 in the main process): each run's bar gets its own line."""
    import multiprocessing

    identity = multiprocessing.current_process()._identity
    return identity[0] if identity else 0


def data_and_model(cfg, variant, seed):
    """``(X, Y, model)`` of a run on the host: the seed draws the data, then the network's weights."""
    rng = backend.rng(seed)
    X, Y, _ = linear_regression(cfg["samples"], cfg["width"], cfg["width"], rng=rng)
    model = models.dln(cfg["depth"], cfg["width"], norm=None if variant == "standard" else variant,
                       norm_layers=cfg["norm_layers"], rng=rng, dtype="float64")
    return X, Y, model


def singular_values(Y):
    """The singular values of the host target ``Y``, largest first: what the loss-scale claim needs of
    a run (its rank-k residuals, :func:`minibn.results.rank_residuals`)."""
    return [float(s) for s in backend.host.linalg.svd(Y, compute_uv=False)]


def run_one(task):
    """Train one run with the instruments attached; returns (and stores) its result dict."""
    cfg, run = task["config"], task["run"]
    folder = os.path.join(task["out"], "runs", task["name"])
    done = os.path.join(folder, "result.json")
    if task["resume"] and os.path.exists(done):
        result = io.read_json(done)
        if "target_singular_values" not in result:  # a run finished before runs recorded them
            result["target_singular_values"] = singular_values(data_and_model(cfg, "standard", run.seed)[1])
        return result
    xp = backend.get(cfg["backend"])
    normalization.get(run.variant, task["module"])  # a spawned worker imports a user's variant here
    X, Y, model = data_and_model(cfg, run.variant, run.seed)
    target = singular_values(Y)
    model.to(cfg["backend"])
    X, Y = backend.to_device(X, xp), backend.to_device(Y, xp)
    every = cfg["measure_every"]
    moment_layers = moment_layer_indices(model, cfg["moment_layers"])
    callbacks = [
        ics.ICSRecorder(loss_fn, every=every),
        landscape.LandscapeRecorder(loss_fn, etas=[m * run.lr for m in cfg["eta_multipliers"]], every=every),
        moments.MomentsRecorder(moment_layers, every=every, n_samples=cfg["moment_samples"], seed=run.seed),
    ]
    start, start_cpu = time.perf_counter(), time.process_time()
    out = train.train(model, loss_fn, train.FullBatch(X, Y), SGD(model, run.lr), cfg["steps"], callbacks=callbacks,
                      log_every=cfg["log_every"], checkpoint=os.path.join(folder, "checkpoint.npz"),
                      checkpoint_every=cfg["checkpoint_every"], resume=task["resume"],
                      progress={"desc": task["name"], "position": _worker_slot(), "leave": False})
    top = None
    if out["diverged_at"] is None:
        top = hessian.top_eigenvalue(model, loss_fn, X, Y, method="power", iterations=cfg["hessian_iterations"],
                                     seed=run.seed)["eigenvalue"]
    result = {
        "variant": run.variant, "lr": run.lr, "seed": run.seed,
        "steps": out["steps"], "loss": out["loss"], "diverged_at": out["diverged_at"],
        "ics": out["callbacks"]["ics"], "landscape": out["callbacks"]["landscape"],
        "moments": {"steps": out["callbacks"]["moments"]["steps"],  # keyed by block number, as the paper's figures
                    "blocks": {str(b): out["callbacks"]["moments"]["layers"][str(i)]
                               for b, i in zip(cfg["moment_layers"], moment_layers)}},
        "hessian_top": top, "target_singular_values": target,
        "wall_s": time.perf_counter() - start, "cpu_s": time.process_time() - start_cpu,
    }
    io.write_json(done, result)
    return result


#: Raw probe values per measurement point and eta', too big for results.json: results.npz holds them.
RAW_PROBES = ("loss", "grad_diff", "beta")


def split_run(name, run):
    """``(run for results.json, arrays for results.npz)``: the raw per-eta' probe values (``NAME/loss``,
    ...) and the activation samples of each moment block (``NAME/moments/BLOCK/samples``) move to
    (points, ...) arrays."""
    arrays = {}
    ls = dict(run.get("landscape") or {})
    grid = len(ls.get("eta", []))
    for key in RAW_PROBES:
        if key in ls:
            arrays[f"{name}/{key}"] = results.floats([v for row in ls.pop(key) for v in row]).reshape(-1, grid)
    mom = run.get("moments") or {}
    blocks = {}
    for block, rec in (mom.get("blocks") or {}).items():
        rec = dict(rec)
        if "samples" in rec:
            arrays[f"{name}/moments/{block}/samples"] = results.stack_ragged(rec.pop("samples")).reshape(
                len(mom["steps"]), -1)
        blocks[block] = rec
    return {**run, "landscape": ls, "moments": {**mom, "blocks": blocks}}, arrays


OPTIONS = (
    *common.shared_options("runs/dln-<preset>"),
    common.Option("preset", "paper", "paper: docs/protocol.md's full scale (8 runs x 10,000 steps); smoke: the same "
                                     "pipeline, tiny", choices=sorted(PRESETS)),
    common.Option("variants", None, f"only these variants, of every registered normalizer "
                                    f"[the preset's: {', '.join(DEFAULT_VARIANTS)}]", nargs="+", metavar="V"),
    common.Option("lr", None, "run every chosen variant at each of these learning rates [the preset's pairs]",
                  type=float, nargs="+", metavar="LR"),
    common.Option("steps", None, "training steps per run [the preset's]", type=int),
)
DEFAULT_OUT = os.path.join("runs", "dln-{preset}")


def check(opts):
    """The DLN study's own options checked (:func:`minibn.studies.common.checked` does the rest)."""
    if opts["preset"] not in PRESETS:
        raise ValueError(f"--preset must be one of {sorted(PRESETS)}, got {opts['preset']!r}")
    if opts["lr"] is not None:
        opts["lr"] = common.unique(common.check_lr("lr", lr) for lr in opts["lr"])
    opts["steps"] = common.check_positive("steps", opts["steps"])
    opts["variants"] = common.check_variants(opts["variants"], opts["jobs"], opts["executor"])
    return opts


def build_config(opts):
    """The study's config: the preset's settings, its runs ``[[variant, lr], ...]`` as the options
    choose them, the seeds and the backend."""
    cfg = dict(PRESETS[opts["preset"]])
    if opts["steps"] is not None:
        cfg["steps"] = opts["steps"]
    runs, variants = cfg["runs"], opts["variants"]
    if opts["lr"] is not None:
        runs = [[v, lr] for v in variants or dict.fromkeys(v for v, _ in runs) for lr in opts["lr"]]
    elif variants:
        kept = [r for r in runs if r[0] in variants]
        lr = kept[0][1] if kept else runs[0][1]
        runs = kept + [[v, lr] for v in variants if v not in {r[0] for r in kept}]
    cfg.update(runs=runs, seeds=list(range(opts["seed"], opts["seed"] + opts["seeds"])), backend=opts["backend"],
               default_variants=list(DEFAULT_VARIANTS))
    return cfg


def execute(opts, command):
    """Train the runs of the options' config and write the results, then (``report``) the report."""
    cfg = build_config(opts)
    tasks = [common.task(opts, cfg, Run(v, lr, s).name, run=Run(v, lr, s), module=normalization.get(v).module)
             for s in cfg["seeds"] for v, lr in cfg["runs"]]

    def order(tasks):  # timing the variants costs about a second: worth it only where runs overlap
        if not common.in_parallel(opts) or len(tasks) < 2:
            return tasks
        return schedule(tasks, step_seconds(cfg, dict.fromkeys(t["run"].variant for t in tasks)))

    # runs are named by variant, LR and seed, so the seed list may grow or shrink on resume;
    # every other setting must match the runs already in the folder
    runs, wall = common.train_runs("dln", f"dln study, preset {opts['preset']} ({cfg['steps']} steps)", opts, cfg, tasks,
                                   run_one, command, may_change=("seeds", "default_variants"), order=order)
    doc = common.document("dln", opts, cfg, runs, command, wall)
    return common.write_results(opts, doc, split_run, dln_report)


run, main = common.entry_points(__name__, OPTIONS)


def step_seconds(cfg, variants, steps=5):
    """CPU seconds of one training step of each variant at the study's shapes, timed here over a
    few steps after a warm-up one (about a second in all): the runs' relative costs, so that
    :func:`schedule` can start the longest first. Timed on NumPy whatever the backend."""
    seconds = {}
    for variant in variants:
        X, Y, model = data_and_model(cfg, variant, seed=0)
        optimizer = SGD(model, 1e-12)
        model.value_and_grad(loss_fn, X, Y)
        start = time.process_time()
        for _ in range(steps):
            model.value_and_grad(loss_fn, X, Y)
            optimizer.step()
        seconds[variant] = (time.process_time() - start) / steps
    return seconds


def schedule(tasks, seconds):
    """The runs in the order they start: seed by seed, so an interrupted study leaves whole seeds;
    within a seed the costliest first (``seconds`` per step of each variant, as
    :func:`step_seconds` gives), so that no worker is left alone with a long run at the end."""
    return sorted(tasks, key=lambda t: (t["run"].seed, -seconds[t["run"].variant]))


if __name__ == "__main__":
    sys.exit(main())
