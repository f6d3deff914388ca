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

import argparse
import math
import os
import sys
import time

from minibn import backend, io, models, nn, train
from minibn.data.synthetic import linear_regression
from minibn.measure import hessian, ics, landscape, moments
from minibn.nn import normalization
from minibn.optim import SGD
from minibn.studies import common

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


def run_name(variant, lr, seed):
    return f"{variant}_lr{lr:g}_seed{seed}"


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


def run_one(spec):
    """Train one configuration with the instruments attached; returns its result dict."""
    cfg, name = spec["config"], spec["name"]
    folder = os.path.join(spec["out"], "runs", name)
    done = os.path.join(folder, "result.json")
    if spec["resume"] and os.path.exists(done):
        return io.read_json(done)
    xp = backend.get(cfg["backend"])
    normalization.get(spec["variant"], spec["module"])  # a spawned worker imports a user's variant here
    X, Y, model = data_and_model(cfg, spec["variant"], spec["seed"])
    model.to(cfg["backend"])
    X, Y = backend.to_device(X, xp), backend.to_device(Y, xp)
    lr = spec["lr"]
    etas = [m * lr for m in cfg["eta_multipliers"]]
    every = cfg["measure_every"]
    moment_layers = moment_layer_indices(model, cfg["moment_layers"])
    callbacks = [
        ics.ICSRecorder(loss_fn, every=every),
        landscape.LandscapeRecorder(loss_fn, etas=etas, every=every),
        moments.MomentsRecorder(moment_layers, every=every, n_samples=cfg["moment_samples"], seed=spec["seed"]),
    ]
    start, start_cpu = time.perf_counter(), time.process_time()
    out = train.train(model, loss_fn, train.FullBatch(X, Y), SGD(model, lr), cfg["steps"], callbacks=callbacks,
                      log_every=cfg["log_every"], checkpoint=os.path.join(folder, "checkpoint.npz"),
                      checkpoint_every=cfg["checkpoint_every"], resume=spec["resume"],
                      progress={"desc": name, "position": _worker_slot(), "leave": False})
    top = None
    if out["diverged_at"] is None:
        top = hessian.top_eigenvalue(model, loss_fn, X, Y, method="power", iterations=cfg["hessian_iterations"],
                                     seed=spec["seed"])["eigenvalue"]
    result = {
        "variant": spec["variant"], "lr": lr, "seed": spec["seed"],
        "steps": out["steps"], "loss": out["loss"], "diverged_at": out["diverged_at"],
        "ics": out["callbacks"]["ics"], "landscape": out["callbacks"]["landscape"],
        "moments": {"steps": out["callbacks"]["moments"]["steps"],  # keyed by block number, as the paper's figures
                    "blocks": {str(b): out["callbacks"]["moments"]["layers"][str(i)]
                               for b, i in zip(cfg["moment_layers"], moment_layers)}},
        "hessian_top": top, "wall_s": time.perf_counter() - start, "cpu_s": time.process_time() - start_cpu,
    }
    io.write_json(done, result)
    return result


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m minibn.studies.dln",
        description="The paper's deep linear network experiments (ICS, landscape, Lp variants) on the embedded "
                    "synthetic data: 25 linear 10x10 layers, 1000 samples, summed squared error, full-batch GD.")
    common.add_options(p, "runs/dln-<preset>")
    p.add_argument("--preset", default="paper", choices=sorted(PRESETS),
                   help="paper: docs/protocol.md's full scale (8 runs x 10,000 steps); smoke: the same pipeline, tiny [paper]")
    p.add_argument("--seed", type=int, default=0, help="first seed: data, target A, initial weights and noise [0]")
    p.add_argument("--seeds", type=int, default=1, help="repeat every run with this many seeds (seed, seed+1, ...) [1]")
    p.add_argument("--variants", nargs="+", default=None, metavar="V",
                   help=f"only these variants, of {', '.join(normalization.REGISTRY)} "
                        f"[the preset's: {', '.join(DEFAULT_VARIANTS)}]")
    p.add_argument("--lr", nargs="+", type=float, default=None, metavar="LR",
                   help="run every chosen variant at each of these learning rates [the preset's pairs]")
    p.add_argument("--steps", type=int, default=None, help="training steps per run [the preset's]")
    p.add_argument("--no-report", action="store_true",
                   help="write results.json and results.npz but no figures or report.md (build them later with "
                        "python -m minibn.studies.dln_report DIR)")
    args = p.parse_args(argv)
    try:
        validate(args)
    except ValueError as err:
        p.error(str(err))
    return args


def validate(args):
    """Every option checked before any work starts."""
    args.lr = common.unique(args.lr)
    args.jobs = common.check_jobs(args.jobs, args.backend, args.executor)
    args.variants = common.check_variants(args.variants, args.jobs, args.executor)
    if args.lr is not None:
        bad = [lr for lr in args.lr if not (math.isfinite(lr) and lr > 0)]
        if bad:
            raise ValueError(f"--lr must be positive and finite, got {bad}")
    if args.steps is not None and args.steps < 1:
        raise ValueError(f"--steps must be a positive integer, got {args.steps}")
    if args.seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {args.seeds}")
    common.check_seed(args.seed)
    common.check_backend(args.backend)
    common.check_executor(args.executor, args.scheduler, args.backend)
    args.out = args.out or os.path.join("runs", f"dln-{args.preset}")
    common.check_writable_dir(args.out)


def build_config(args):
    cfg = {k: v for k, v in PRESETS[args.preset].items()}
    if args.steps is not None:
        cfg["steps"] = args.steps
    runs = cfg["runs"]
    if args.lr is not None:
        variants = args.variants or list(dict.fromkeys(v for v, _ in runs))
        runs = [[v, lr] for v in variants for lr in args.lr]
    elif args.variants:
        runs = [r for r in runs if r[0] in args.variants]
        runs += [[v, runs[0][1] if runs else cfg["runs"][0][1]] for v in args.variants if v not in {r[0] for r in runs}]
    cfg["runs"] = runs
    cfg["seeds"] = list(range(args.seed, args.seed + args.seeds))
    cfg["backend"] = args.backend
    return cfg


def run(out=None, *, preset="paper", variants=None, lr=None, steps=None, seed=0, seeds=1, backend="numpy",
        resume=False, jobs=1, executor="local", scheduler=None, report=True, command=None):
    """Run the study (the command line's options as arguments) and return what results.json holds.

    A bad option raises ValueError before any work starts. Writes into ``out`` as the command
    line does (``report=False``: results only, as ``--no-report``; ``executor="dask"`` with
    ``jobs=None``: a local cluster sized to the machine)."""
    args = argparse.Namespace(out=out, preset=preset, variants=variants, lr=lr, steps=steps, seed=seed, seeds=seeds,
                              backend=backend, resume=resume, jobs=jobs, executor=executor, scheduler=scheduler,
                              no_report=not report)
    validate(args)
    return run_validated(args, command or f"minibn.studies.dln.run(out={args.out!r}, preset={preset!r}, ...)")


def run_validated(args, command):
    cfg = build_config(args)
    # Runs are named by variant, LR and seed, so the seed list may grow or shrink on resume;
    # every other setting must match the runs already in the folder.
    common.record_config(args.out, cfg, args.resume, may_change=("seeds",))
    specs = [{"name": run_name(v, lr, s), "variant": v, "lr": lr, "seed": s, "config": cfg, "out": args.out,
              "resume": args.resume, "module": normalization.get(v).module}
             for s in cfg["seeds"] for v, lr in cfg["runs"]]
    print(f"dln study, preset {args.preset}: {len(specs)} runs of {cfg['steps']} steps on {args.backend}, "
          f"{common.describe_executor(args.executor, args.jobs, args.scheduler)} -> {args.out}", flush=True)
    started = time.perf_counter()
    results = run_all(specs, args.jobs, args.executor, args.scheduler)
    common.raise_failures(args.out, common.failures_of(results), common.resume_command(command))
    total = time.perf_counter() - started
    from minibn.studies import dln_report

    doc = {"study": "dln", "preset": args.preset,
           "config": {**cfg, "environment": common.environment(cfg["backend"]), "command": command, "wall_s": total},
           "runs": results}
    slim = dln_report.write_all(args.out, doc, figures=not args.no_report)
    print(f"done in {total:.1f} s: {os.path.join(args.out, 'results.json' if args.no_report else 'report.md')}")
    return slim


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    command = "python -m minibn.studies.dln " + " ".join(argv)
    return common.main_guard(lambda: run_validated(args, command), args.out, command)


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


def schedule(specs, seconds):
    """The runs in the order they start: seed by seed, so an interrupted study leaves whole seeds;
    within a seed the costliest first (``seconds`` per step of each variant, as
    :func:`step_seconds` gives), so that no worker is left alone with a long run at the end."""
    return sorted(specs, key=lambda s: (s["seed"], -seconds[s["variant"]]))


def run_all(specs, jobs, executor="local", scheduler=None):
    """Runs in ``jobs`` worker processes (spawned with one BLAS thread each), or as Dask tasks
    (:func:`minibn.studies.common.run_tasks`), in the order of :func:`schedule`."""
    from tqdm.auto import tqdm

    order = specs
    if len(specs) > 1 and (jobs is None or jobs > 1 or executor == "dask"):
        order = schedule(specs, step_seconds(specs[0]["config"], dict.fromkeys(s["variant"] for s in specs)))
    results = {}
    bar = tqdm(total=len(order), desc="runs", disable=None)
    backend_name = specs[0]["config"]["backend"] if specs else "numpy"
    for spec, result in common.run_tasks(run_one, order, executor, jobs, scheduler, backend_name):
        results[spec["name"]] = result
        bar.update()
    bar.close()
    return {spec["name"]: results[spec["name"]] for spec in specs}


if __name__ == "__main__":
    sys.exit(main())
