"""The VGG / CIFAR-10 study: the paper's VGG experiments E1-E5 of docs/protocol.md §4.

    python -m minibn.studies.vgg [--backend numpy|cupy] [--preset smoke|cpu|paper]
                                 [--experiments E1,E2,...] [--out DIR] [--data-dir DIR]
                                 [--seed N] [--seeds K] [--resume] [--jobs N] [--steps N]
                                 [--lr LR] [--lr-high LR] [--lr-low LR] [--variants V ...]
                                 [--executor local|dask] [--scheduler ADDRESS]

A run is one (variant, LR) configuration; an experiment names the runs it needs, and a
run that serves several experiments is trained once:

    E1  standard, batchnorm at LR and LR_HIGH               accuracy, activation histograms
    E2  standard, batchnorm, noisy, standard_noisy at LR    accuracy, activation moments
    E3  standard, batchnorm at LR and LR_LOW                internal covariate shift per layer
    E4  standard, batchnorm at LR                           landscape along the gradient
    E5  standard, batchnorm, l1, l2, linf at LR             accuracy, activations, landscape

(LR 0.1, LR_HIGH 0.5, LR_LOW 0.01 by default.) ``--variants layernorm groupnorm ...`` adds
other normalizers of the registry beside BN: each runs wherever ``batchnorm`` runs in the
chosen experiments, at the same LRs, with BN's instruments. Each run carries every
instrument any experiment asks of it (ICS for E3's runs, landscape probes for every run at
LR, activation moments for all), so a run's result does not depend on which experiments
were selected. The runs of one seed share it: the same initial weights (models.vgg draws
the noise generators apart) and the same batches. ``--seeds K`` repeats every run with
seeds seed, seed+1, ..., seed+K-1; runs are named by variant, LR and seed
(``batchnorm_lr0.1_seed0``), so a resumed study may add seeds.

Runs train in ``--jobs`` worker processes, or as Dask tasks across machines sharing DIR
(``--executor dask``, docs/distributed.md). The study writes DIR/runs/NAME/result.json per
finished run (a resumed study keeps them),
then DIR/results.json (+ results.npz with the activation samples), the figures and
DIR/report.md (:mod:`minibn.studies.vgg_report`). From Python,
:func:`run` does the same and returns the results (docs/studies.md).
"""

import argparse
import math
import os
import sys
import time

from minibn import backend, io, models, nn, train
from minibn.data import cifar10
from minibn.measure import ics, landscape, moments
from minibn.nn import normalization
from minibn.optim import SGD
from minibn.studies import common

#: The variants a run may use; each experiment below names its own.
VARIANTS = tuple(normalization.REGISTRY)
EXPERIMENTS = {
    "E1": [("standard", "lr"), ("batchnorm", "lr"), ("standard", "lr_high"), ("batchnorm", "lr_high")],
    "E2": [("standard", "lr"), ("batchnorm", "lr"), ("noisy", "lr"), ("standard_noisy", "lr")],
    "E3": [("standard", "lr"), ("batchnorm", "lr"), ("standard", "lr_low"), ("batchnorm", "lr_low")],
    "E4": [("standard", "lr"), ("batchnorm", "lr")],
    "E5": [("standard", "lr"), ("batchnorm", "lr"), ("l1", "lr"), ("l2", "lr"), ("linf", "lr")],
}
ETA_MULTIPLIERS = [0.5, 1.0, 2.0, 4.0]
#: A training-batch loss above this marks the run diverged (docs/vgg.md): cross-entropy starts at
#: ln 10 = 2.3 for ten classes, and a loss of 1000 means logits a thousand apart on the wrong
#: class, from which plain SGD does not come back (such runs reach 1e18 and more, still finite).
DIVERGED_LOSS = 1e3

PRESETS = {
    # docs/protocol.md §1 exactly: VGG-16, 15,000 steps of batch 128; meant for a GPU.
    "paper": {"config": "vgg16", "width": 1.0, "steps": 15_000, "batch": 128, "train_size": None,
              "eval_train_size": 10_000, "eval_test_size": 10_000, "eval_every": 500, "measure_every": 100,
              "checkpoint_every": 500, "moment_samples": 512, "lr": 0.1, "lr_high": 0.5, "lr_low": 0.01},
    # what 2 CPU cores finish in about an hour (reasons in docs/vgg.md): VGG-11 at 1/8 width.
    "cpu": {"config": "vgg11", "width": 0.125, "steps": 2000, "batch": 128, "train_size": None,
            "eval_train_size": 2000, "eval_test_size": 2000, "eval_every": 250, "measure_every": 100,
            "checkpoint_every": 250, "moment_samples": 256, "lr": 0.1, "lr_high": 0.5, "lr_low": 0.01},
    # the whole pipeline in seconds, for tests: two tiny conv layers on a small subset.
    "smoke": {"config": [4, "M", 8, "M"], "width": 1.0, "steps": 6, "batch": 16, "train_size": 80,
              "eval_train_size": 40, "eval_test_size": 20, "eval_every": 3, "measure_every": 3,
              "checkpoint_every": 3, "moment_samples": 32, "lr": 0.1, "lr_high": 0.5, "lr_low": 0.01},
}


def loss_fn(logits, labels):
    return nn.softmax_cross_entropy(logits, labels)


loss_fn.tangent = nn.losses.softmax_cross_entropy_tangent   # for the exact Hessian-vector products


def run_name(variant, lr, seed):
    return f"{variant}_lr{lr:g}_seed{seed}"


def compared(cfg):
    """BN and the normalizers ``--variants`` adds beside it (the study's config; none before the option)."""
    return ["batchnorm", *(v for v in cfg.get("variants", []) if v != "batchnorm")]


def plan(cfg, experiments):
    """``{name: spec}`` of the runs the experiments need for every seed of ``cfg["seeds"]``, each
    with its seed, instruments and experiments; the added variants run wherever BN does."""
    runs = {}
    for seed in cfg["seeds"]:
        for exp in experiments:
            entries = [(v, which) for variant, which in EXPERIMENTS[exp]
                       for v in (compared(cfg) if variant == "batchnorm" else [variant])]
            for variant, which in entries:
                lr = cfg[which]
                spec = runs.setdefault(run_name(variant, lr, seed),
                                       {"variant": variant, "lr": lr, "seed": seed, "experiments": []})
                spec["experiments"].append(exp)
    for spec in runs.values():
        is_base = spec["lr"] == cfg["lr"]
        spec["ics"] = spec["variant"] in ("standard", *compared(cfg)) and (is_base or spec["lr"] == cfg["lr_low"])
        spec["landscape"] = is_base
    return runs


def conv_layers(model):
    """Model indices of the conv layers, in order (the paper's layer numbers 1, 2, ... count them); a
    WeightNorm-reparametrized conv counts as the conv it wraps."""
    return [i for i, layer in enumerate(model) if isinstance(getattr(layer, "layer", layer), nn.Conv2d)]


def preactivation_layers(model):
    """For conv layer k (1-based), the index of the ReLU after it: its input is the pre-activation
    (conv output, after the normalization and noise where there are any)."""
    relus = [i for i, layer in enumerate(model) if isinstance(layer, nn.ReLU)]
    return [min(r for r in relus if r > c) for c in conv_layers(model)]


def accuracy(model, x, labels, chunk=500):
    """Eval-mode (running statistics, no noise) accuracy and mean cross-entropy over ``x``."""
    correct, total_loss = 0, 0.0
    xp = backend.array_module(x)
    with backend.host.errstate(all="ignore"):
        for start in range(0, x.shape[0], chunk):
            logits = model.forward(x[start:start + chunk], "eval")
            y = labels[start:start + chunk]
            correct += int((logits.argmax(axis=1) == y).sum())
            finite = bool(xp.isfinite(logits).all())
            total_loss += loss_fn(logits, y)[0] * y.shape[0] if finite else math.nan
    return correct / x.shape[0], total_loss / x.shape[0]


_DATA = {}


def load_data(cfg, data_dir):
    """CIFAR-10 for this preset, loaded once per process (workers serve several runs)."""
    key = (data_dir, cfg["train_size"], cfg["eval_train_size"], cfg["eval_test_size"])
    if key not in _DATA:
        d = cifar10.load(data_dir, train_size=cfg["train_size"], test_size=cfg["eval_test_size"])
        pick = cifar10.balanced_subset(d["train_y"], cfg["eval_train_size"])
        d["eval_x"], d["eval_y"] = d["train_x"][pick], d["train_y"][pick]
        _DATA.clear()
        _DATA[key] = d
    return _DATA[key]


def run_one(job):
    """Train one configuration with its instruments; returns (and stores) its result dict."""
    cfg, spec, name = job["config"], job["spec"], job["name"]
    folder = os.path.join(job["out"], "runs", name)
    done = os.path.join(folder, "result.json")
    if job["resume"] and os.path.exists(done):
        return io.read_json(done)
    os.makedirs(folder, exist_ok=True)
    xp = backend.get(cfg["backend"])
    data = load_data(cfg, cfg["data_dir"])
    seed = spec["seed"]
    normalization.get(spec["variant"], job["module"])  # a spawned worker imports a user's variant here
    model = models.vgg(cfg["config"], norm=spec["variant"], width=cfg["width"], rng=seed, dtype="float32")
    model.to(cfg["backend"])
    stream = train.MiniBatches(backend.to_device(data["train_x"], xp), backend.to_device(data["train_y"], xp),
                               cfg["batch"], seed=seed)
    eval_sets = {split: (backend.to_device(data[f"{split}_x"], xp), backend.to_device(data[f"{split}_y"], xp))
                 for split in ("eval", "test")}

    started = time.perf_counter()

    def evaluate(m, step):
        train_acc, train_loss = accuracy(m, *eval_sets["eval"])
        test_acc, test_loss = accuracy(m, *eval_sets["test"])
        print(f"[{name}] step {step}/{cfg['steps']}: train acc {train_acc:.3f}, test acc {test_acc:.3f} "
              f"({time.perf_counter() - started:.0f} s)", flush=True)
        return {"train_acc": train_acc, "test_acc": test_acc, "train_loss": train_loss, "test_loss": test_loss}

    lr, every = spec["lr"], cfg["measure_every"]
    # train mode: the activation distributions show the noise, as the paper's Fig 2 does
    callbacks = [moments.MomentsRecorder(preactivation_layers(model), every=every, n_samples=cfg["moment_samples"],
                                         seed=seed, mode="train")]
    if spec["ics"]:
        callbacks.append(ics.ICSRecorder(loss_fn, every=every))
    if spec["landscape"]:
        callbacks.append(landscape.LandscapeRecorder(loss_fn, [m * lr for m in ETA_MULTIPLIERS], every=every))
    out = train.train(model, loss_fn, stream, SGD(model, lr), cfg["steps"], callbacks=callbacks, evaluate=evaluate,
                      eval_every=cfg["eval_every"], log_every=1, checkpoint=os.path.join(folder, "checkpoint"),
                      checkpoint_every=cfg["checkpoint_every"], resume=job["resume"], progress=name,
                      diverge_above=DIVERGED_LOSS)
    record = out["callbacks"]
    result = {
        "variant": spec["variant"], "lr": lr, "seed": seed, "experiments": spec["experiments"],
        "steps": out["steps"], "loss": out["loss"], "diverged_at": out["diverged_at"],
        "eval_steps": out["eval_steps"], **{k: out["eval"].get(k, []) for k in
                                           ("train_acc", "test_acc", "train_loss", "test_loss")},
        "ics": ({"layers": list(range(1, len(model.blocks()) + 1)), **record["ics"]} if spec["ics"] else None),
        "landscape": record.get("landscape"),
        "moments": {"conv_layers": list(range(1, len(conv_layers(model)) + 1)), **record["moments"]},
        "wall_s": out["wall_s"],
    }
    io.write_json(done, result)
    return result


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m minibn.studies.vgg",
        description="The paper's VGG/CIFAR-10 experiments (docs/protocol.md §4): E1 accuracy at two LRs, E2 noisy BN, "
                    "E3 internal covariate shift, E4 landscape along the gradient, E5 Lp normalizations.")
    common.add_options(p, "runs/vgg-<preset>")
    p.add_argument("--preset", default="cpu", choices=sorted(PRESETS),
                   help="paper: VGG-16, 15,000 steps (GPU); cpu: VGG-11 at 1/8 width, 2,000 steps (~1 h on 2 cores); "
                        "smoke: seconds, for tests [cpu]")
    p.add_argument("--experiments", default="E1,E2,E3,E4,E5", help="comma-separated subset of E1..E5 [all]")
    p.add_argument("--data-dir", default=None, help="folder with the python-version CIFAR-10 batches "
                   "[$MINIBN_DATA/cifar10, else ~/.cache/minibn/cifar10, downloaded there if absent]")
    p.add_argument("--seed", type=int, default=0, help="first seed: initial weights, batch order and noise [0]")
    p.add_argument("--seeds", type=int, default=1, help="repeat every run with this many seeds (seed, seed+1, ...) [1]")
    p.add_argument("--steps", type=int, default=None, help="training steps per run [the preset's]")
    p.add_argument("--only", default=None, metavar="RUN,...",
                   help="train only these runs of the plan (e.g. batchnorm_lr0.1_seed0), to split a study over several "
                        "processes or machines sharing --out by hand (--executor dask splits it for you); a last "
                        "--resume without --only writes the whole report")
    p.add_argument("--lr", type=float, default=None, help="the base learning rate of every experiment [0.1]")
    p.add_argument("--lr-high", type=float, default=None, help="E1's large learning rate [0.5]")
    p.add_argument("--lr-low", type=float, default=None, help="E3's small learning rate [0.01]")
    p.add_argument("--variants", nargs="+", default=None, metavar="V",
                   help=f"normalizers to run beside BN, wherever BN runs, at its LRs, of "
                        f"{', '.join(normalization.REGISTRY)} (e.g. layernorm groupnorm weightnorm) [none]")
    args = p.parse_args(argv)
    try:
        validate(args)
    except ValueError as err:
        p.error(str(err))
    return args


def validate(args):
    """Every option checked before any work starts (the data folder included)."""
    chosen = args.experiments.split(",") if isinstance(args.experiments, str) else args.experiments
    names = [e.strip().upper() for e in chosen if e.strip()]
    unknown = [e for e in names if e not in EXPERIMENTS]
    if not names or unknown:
        raise ValueError(f"--experiments: unknown {unknown or args.experiments!r}; choose from {', '.join(EXPERIMENTS)}")
    args.experiments = sorted(set(names))
    for opt in ("lr", "lr_high", "lr_low"):
        v = getattr(args, opt)
        if v is not None and not (math.isfinite(v) and v > 0):
            raise ValueError(f"--{opt.replace('_', '-')} must be positive and finite, got {v}")
    if args.steps is not None and args.steps < 1:
        raise ValueError(f"--steps must be a positive integer, got {args.steps}")
    if args.seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {args.seeds}")
    common.check_seed(args.seed)
    args.jobs = common.check_jobs(args.jobs, args.backend, args.executor)
    args.variants = common.check_variants(args.variants, args.jobs, args.executor)
    common.check_backend(args.backend)
    common.check_executor(args.executor, args.scheduler, args.backend)
    try:
        args.data_dir = cifar10.locate(args.data_dir)
    except cifar10.CIFARDataError as err:
        raise ValueError(str(err)) from None
    if args.only is not None:
        planned = plan(build_config(args), args.experiments)
        only = args.only.split(",") if isinstance(args.only, str) else args.only
        args.only = common.unique(r.strip() for r in only if r.strip())
        unknown = [r for r in args.only if r not in planned]
        if not args.only or unknown:
            raise ValueError(f"--only: {unknown or 'no run'} not in the plan of these experiments: {', '.join(planned)}")
    args.out = args.out or os.path.join("runs", f"vgg-{args.preset}")
    common.check_writable_dir(args.out)


def build_config(args):
    cfg = dict(PRESETS[args.preset])
    for key in ("steps", "lr", "lr_high", "lr_low"):
        if getattr(args, key) is not None:
            cfg[key] = getattr(args, key)
    cfg.update(preset=args.preset, seeds=list(range(args.seed, args.seed + args.seeds)), backend=args.backend,
               data_dir=os.path.abspath(str(args.data_dir)), eta_multipliers=ETA_MULTIPLIERS)
    if args.variants:
        cfg["variants"] = list(args.variants)
    return cfg


def run(out=None, *, preset="cpu", experiments=tuple(EXPERIMENTS), backend="numpy", data_dir=None, seed=0,
        seeds=1, resume=False, jobs=1, executor="local", scheduler=None, steps=None, only=None, lr=None, lr_high=None,
        lr_low=None, variants=None, command=None):
    """Run the study (the command line's options as arguments) and return what results.json holds.

    ``experiments`` and ``only`` take lists (or the command line's comma-separated strings); a bad
    option raises ValueError before any work starts. Writes into ``out`` as the command line does."""
    args = argparse.Namespace(out=out, preset=preset, experiments=experiments, backend=backend, data_dir=data_dir,
                              seed=seed, seeds=seeds, resume=resume, jobs=jobs, executor=executor,
                              scheduler=scheduler, steps=steps, only=only, lr=lr,
                              lr_high=lr_high, lr_low=lr_low, variants=variants)
    validate(args)
    return run_validated(args, command or f"minibn.studies.vgg.run(out={args.out!r}, preset={preset!r}, ...)")


def run_validated(args, command):
    cfg = build_config(args)
    # runs are named by variant and seed, so the seeds and added variants may change on resume
    # (as the DLN study's)
    common.record_config(args.out, cfg, args.resume, may_change=("seeds", "variants"))
    runs = plan(cfg, args.experiments)
    if args.only:
        runs = {name: spec for name, spec in runs.items() if name in args.only}
    jobs = [{"name": name, "spec": spec, "config": cfg, "out": args.out, "resume": args.resume,
             "module": normalization.get(spec["variant"]).module} for name, spec in runs.items()]
    print(f"vgg study, preset {args.preset} ({', '.join(args.experiments)}), seeds {cfg['seeds']}: {len(jobs)} runs of "
          f"{cfg['steps']} steps on {args.backend}, {common.describe_executor(args.executor, args.jobs, args.scheduler)}"
          f" -> {args.out}", flush=True)
    started = time.perf_counter()
    results = run_all(jobs, args.jobs, args.executor, args.scheduler)
    common.raise_failures(args.out, common.failures_of(results), common.resume_command(command))
    from minibn.studies import vgg_report

    doc = {"study": "vgg", "preset": args.preset, "experiments": args.experiments,
           "config": {**cfg, "environment": common.environment(cfg["backend"]), "command": command,
                      "wall_s": time.perf_counter() - started},
           "runs": results}
    slim = vgg_report.write_all(args.out, doc)
    print(f"done in {time.perf_counter() - started:.0f} s: {os.path.join(args.out, 'report.md')}", flush=True)
    return slim


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    command = "python -m minibn.studies.vgg " + " ".join(argv)
    return common.main_guard(lambda: run_validated(args, command), args.out, command)


def run_all(jobs, workers, executor="local", scheduler=None):
    """Runs in ``workers`` processes (spawned, one BLAS thread each), or as Dask tasks
    (:func:`minibn.studies.common.run_tasks`): seed by seed, so an interrupted study leaves whole
    seeds, and within a seed the costliest first."""
    cost = {"noisy": 3, "standard_noisy": 2}
    order = sorted(jobs, key=lambda j: (j["spec"]["seed"], -(cost.get(j["spec"]["variant"], 1) + 2 * j["spec"]["ics"])))
    results = {}
    backend_name = jobs[0]["config"]["backend"] if jobs else "numpy"
    for job, result in common.run_tasks(run_one, order, executor, workers, scheduler, backend_name):
        results[job["name"]] = result
        if executor == "dask" or workers > 1:
            print(f"{'failed' if isinstance(result, common.Failure) else 'finished'} {job['name']} "
                  f"({len(results)}/{len(order)})", flush=True)
    return {job["name"]: results[job["name"]] for job in jobs}


if __name__ == "__main__":
    sys.exit(main())
