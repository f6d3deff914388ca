"""The sharpness study: later explanations of why normalization helps, measured with minibn's
instruments on the paper's networks (beyond the paper; docs/sharpness.md).

    python -m minibn.studies.sharpness [--backend numpy|cupy] [--preset smoke|cpu|paper] [--out DIR]
                                       [--data-dir DIR] [--seed N] [--seeds K] [--resume] [--jobs N]
                                       [--parts dln width vgg depth] [--executor local|dask]
                                       [--scheduler ADDRESS]

Four parts, each a set of independent runs (one task each, resumable):

* ``dln``: edge of stability on the paper's deep linear network (Cohen et al. 2021). Full-batch
  GD for standard, BN and the Lp variants at the study's learning rates; every ``measure_every``
  steps the top eigenvalue of the train-mode Hessian on the full batch (Lanczos, largest
  algebraic), the curvature along the gradient, beta_eff of the landscape probe at eta' = eta,
  and the effective learning rate of every weight feeding a normalizer (Arora et al. 2019); the
  Hessian's eigenvalue density (SLQ, Ghorbani et al. 2019) at initialization and at the end,
  in train and eval mode, for the standard and BN networks.
* ``width``: the DLN study's runs (its instruments, :func:`minibn.studies.dln.run_one`) at
  several widths, for its key claims.
* ``vgg``: a VGG on CIFAR-10 trained by minibatch SGD (standard and BN): the top eigenvalue every
  ``measure_every`` steps on a fixed measurement set of training images in chunks (each chunk's
  own batch statistics), the effective learning rate, and SLQ densities at initialization and at
  the end in train and eval mode.
* ``depth``: gradient norms and the rank of the representations against depth at
  initialization (Yang et al. 2019, Daneshmand et al. 2020) for the DLN and a deep ReLU MLP,
  standard, BN and the Lp variants.

Writes DIR/runs/NAME/result.json per run, then DIR/results.json, the figures, claims.json and
report.md (:mod:`minibn.studies.sharpness_report`). From Python, :func:`run` does the same.
"""

import argparse
import os
import sys
import time

from minibn import backend, io, models, nn, train
from minibn.data import cifar10
from minibn.data.synthetic import linear_regression
from minibn.measure import depth, effective_lr, hessian, landscape, slq
from minibn.nn import normalization
from minibn.optim import SGD
from minibn.studies import common, dln, vgg

PARTS = ("dln", "width", "vgg", "depth")
LP = ("l1", "l2", "linf")
EOS_VARIANTS = ("standard", "batchnorm", *LP)
SLQ_VARIANTS = ("standard", "batchnorm")
SLQ_MODES = ("train", "eval")

PRESETS = {
    "paper": {
        "dln": {"dln_preset": "paper", "runs": [[v, 1e-6] for v in EOS_VARIANTS] + [["standard", 1e-7], ["batchnorm", 1e-7]],
                "measure_every": 100, "lanczos_tol": 1e-4, "slq_steps": 90, "slq_probes": 4},
        "width": {"dln_preset": "paper", "widths": [10, 20, 30],
                  "runs": [["standard", 1e-6], ["batchnorm", 1e-6], ["standard", 1e-7], ["batchnorm", 1e-7]]},
        "vgg": {"config": "vgg16", "width": 1.0, "steps": 15_000, "batch": 128, "lr": 0.1, "train_size": None,
                "measure_size": 4160, "chunk": 130, "measure_every": 1000, "lanczos_tol": 1e-3,
                "lanczos_iterations": 10, "elr_every": 100, "slq_steps": 90, "slq_probes": 4, "test_size": 10_000,
                "checkpoint_every": 500},
        "depth": {"dln": {"depth": 25, "width": 10, "samples": 1000}, "mlp": {"depth": 50, "width": 256, "samples": 512},
                  "variants": list(EOS_VARIANTS)},
    },
    # sized to finish within an hour on 2 cores (docs/sharpness.md, "Presets")
    "cpu": {
        "dln": {"dln_preset": "paper", "runs": [[v, 1e-6] for v in EOS_VARIANTS] + [["standard", 1e-7], ["batchnorm", 1e-7]],
                "measure_every": 200, "lanczos_tol": 1e-4, "slq_steps": 90, "slq_probes": 4},
        "width": {"dln_preset": "paper", "widths": [10, 20, 30], "runs": [["standard", 1e-6], ["batchnorm", 1e-6]]},
        "vgg": {"config": [8, "M", 16, "M", 32, "M", 32, "M"], "width": 1.0, "steps": 1000, "batch": 128, "lr": 0.1,
                "train_size": None, "measure_size": 4160, "chunk": 130, "measure_every": 1000, "lanczos_tol": 1e-3,
                "lanczos_iterations": 5, "elr_every": 50, "slq_steps": 10, "slq_probes": 2, "test_size": 2000,
                "checkpoint_every": 250},
        "depth": {"dln": {"depth": 25, "width": 10, "samples": 1000}, "mlp": {"depth": 32, "width": 64, "samples": 256},
                  "variants": list(EOS_VARIANTS)},
    },
    # the whole pipeline in seconds, for tests
    "smoke": {
        "dln": {"dln_preset": "smoke", "runs": [[v, 1e-4] for v in EOS_VARIANTS], "measure_every": 10,
                "lanczos_tol": 1e-4, "slq_steps": 8, "slq_probes": 2},
        "width": {"dln_preset": "smoke", "widths": [4, 6], "runs": [["standard", 1e-4], ["batchnorm", 1e-4]]},
        "vgg": {"config": [4, "M", 8, "M"], "width": 1.0, "steps": 6, "batch": 16, "lr": 0.1, "train_size": 80,
                "measure_size": 40, "chunk": 20, "measure_every": 3, "lanczos_tol": 1e-3, "lanczos_iterations": 5,
                "elr_every": 2, "slq_steps": 4, "slq_probes": 2, "test_size": 20, "checkpoint_every": 3},
        "depth": {"dln": {"depth": 6, "width": 4, "samples": 64}, "mlp": {"depth": 6, "width": 8, "samples": 32},
                  "variants": list(EOS_VARIANTS)},
    },
}


# --- the DLN: edge of stability, effective LR, densities ------------------------------------

def dln_setting(cfg):
    """The DLN preset (minibn.studies.dln.PRESETS) a part builds on."""
    return dln.PRESETS[cfg["dln_preset"]]


def densities(model, loss_fn, x, target, part, seed):
    """SLQ in train and eval mode: ``{mode: spectral_density(...)}``."""
    return {mode: slq.spectral_density(model, loss_fn, x, target, steps=part["slq_steps"], probes=part["slq_probes"],
                                       mode=mode, seed=seed) for mode in SLQ_MODES}


def _initial(folder, compute):
    """The run's measurements at initialization, computed once (a resumed run reads them back)."""
    path = os.path.join(folder, "initial.json")
    if os.path.exists(path):
        return io.read_json(path)
    value = compute()
    io.write_json(path, value)
    return value


def run_dln(spec):
    part, seed, variant, lr = spec["config"]["dln"], spec["seed"], spec["variant"], spec["lr"]
    setting = dln_setting(part)
    folder = os.path.join(spec["out"], "runs", spec["name"])
    os.makedirs(folder, exist_ok=True)
    xp = backend.get(spec["config"]["backend"])
    rng = backend.rng(seed)
    X, Y, _ = linear_regression(setting["samples"], setting["width"], setting["width"], rng=rng)
    model = models.dln(setting["depth"], setting["width"], norm=None if variant == "standard" else variant,
                       norm_layers=setting["norm_layers"], rng=rng, dtype="float64")
    model.to(spec["config"]["backend"])
    X, Y = backend.to_device(X, xp), backend.to_device(Y, xp)
    with_slq = variant in SLQ_VARIANTS
    initial = _initial(folder, lambda: {"slq": densities(model, dln.loss_fn, X, Y, part, seed) if with_slq else None})
    every = part["measure_every"]
    callbacks = [
        hessian.HessianRecorder(dln.loss_fn, every, which="LA", tol=part["lanczos_tol"], seed=seed, name="hessian"),
        landscape.LandscapeRecorder(dln.loss_fn, etas=[lr], every=every),
        effective_lr.EffectiveLRRecorder(dln.loss_fn, every),
    ]
    out = train.train(model, dln.loss_fn, train.FullBatch(X, Y), SGD(model, lr), setting["steps"], callbacks=callbacks,
                      log_every=setting["log_every"], checkpoint=os.path.join(folder, "checkpoint.npz"),
                      checkpoint_every=setting["checkpoint_every"], resume=spec["resume"], progress=False)
    final = densities(model, dln.loss_fn, X, Y, part, seed) if with_slq and out["diverged_at"] is None else None
    ls = out["callbacks"]["landscape"]
    return {"part": "dln", "variant": variant, "lr": lr, "seed": seed, "steps": out["steps"], "loss": out["loss"],
            "diverged_at": out["diverged_at"], "hessian": out["callbacks"]["hessian"],
            "beta_eff": {"steps": ls["steps"], "beta_eff": ls["beta_eff"]},
            "effective_lr": out["callbacks"]["effective_lr"], "slq": {"initial": initial["slq"], "final": final},
            "wall_s": out["wall_s"]}


# --- the DLN study's claims at other widths ---------------------------------------------------

LANDSCAPE_SUMMARY = ("steps", "eta", "loss_min", "loss_max", "gradpred_min", "gradpred_max", "beta_eff", "nonfinite")


def run_width(spec):
    part = spec["config"]["width"]
    cfg = {**dln_setting(part), "width": spec["width"], "backend": spec["config"]["backend"]}
    # the DLN study's own run folder (checkpoint, full result.json) under DIR/width/runs/NAME
    inner = {"config": cfg, "name": spec["name"], "out": os.path.join(spec["out"], "width"), "seed": spec["seed"], "variant": spec["variant"],
             "lr": spec["lr"], "resume": spec["resume"], "module": normalization.get(spec["variant"]).module}
    result = dln.run_one(inner)
    # what the DLN claims read; the raw probes and activation samples stay in the run's folder
    return {"part": "width", "width": spec["width"], "variant": result["variant"], "lr": result["lr"],
            "seed": result["seed"], "steps": result["steps"], "loss": result["loss"],
            "diverged_at": result["diverged_at"], "ics": result["ics"],
            "landscape": {k: result["landscape"][k] for k in LANDSCAPE_SUMMARY if k in result["landscape"]},
            "wall_s": result["wall_s"]}


# --- the VGG -----------------------------------------------------------------------------------

_DATA = {}


def vgg_data(part, data_dir):
    """CIFAR-10 for the part, loaded once per process: training set, test subset, and the fixed
    measurement set (the first measure_size/10 training images of each class, in file order)."""
    key = (data_dir, part["train_size"], part["test_size"], part["measure_size"])
    if key not in _DATA:
        d = cifar10.load(data_dir, train_size=part["train_size"], test_size=part["test_size"])
        pick = cifar10.balanced_subset(d["train_y"], part["measure_size"])
        d["measure_x"], d["measure_y"] = d["train_x"][pick], d["train_y"][pick]
        _DATA.clear()
        _DATA[key] = d
    return _DATA[key]


def chunks(x, target, size):
    """The measurement set as consecutive chunks of ``size`` images (the last one may be shorter)."""
    starts = range(0, x.shape[0], size)
    return [x[s:s + size] for s in starts], [target[s:s + size] for s in starts]


def run_vgg(spec):
    part, seed, variant = spec["config"]["vgg"], spec["seed"], spec["variant"]
    folder = os.path.join(spec["out"], "runs", spec["name"])
    os.makedirs(folder, exist_ok=True)
    xp = backend.get(spec["config"]["backend"])
    data = vgg_data(part, spec["config"]["data_dir"])
    model = models.vgg(part["config"], norm=variant, width=part["width"], rng=seed, dtype="float32")
    model.to(spec["config"]["backend"])
    dev = lambda a: backend.to_device(a, xp)  # noqa: E731
    measure = chunks(dev(data["measure_x"]), dev(data["measure_y"]), part["chunk"])
    initial = _initial(folder, lambda: {"slq": densities(model, vgg.loss_fn, *measure, part, seed)})
    callbacks = [
        hessian.HessianRecorder(vgg.loss_fn, part["measure_every"], which="LA", tol=part["lanczos_tol"],
                                iterations=part["lanczos_iterations"], seed=seed, data=measure, curvature=False),
        effective_lr.EffectiveLRRecorder(vgg.loss_fn, part["elr_every"]),
    ]
    stream = train.MiniBatches(dev(data["train_x"]), dev(data["train_y"]), part["batch"], seed=seed)
    out = train.train(model, vgg.loss_fn, stream, SGD(model, part["lr"]), part["steps"], callbacks=callbacks,
                      log_every=1, checkpoint=os.path.join(folder, "checkpoint"),
                      checkpoint_every=part["checkpoint_every"], resume=spec["resume"], progress=False,
                      diverge_above=vgg.DIVERGED_LOSS)
    final, test_acc = None, None
    if out["diverged_at"] is None:
        final = densities(model, vgg.loss_fn, *measure, part, seed)
        test_acc = vgg.accuracy(model, dev(data["test_x"]), dev(data["test_y"]))[0]
    return {"part": "vgg", "variant": variant, "lr": part["lr"], "seed": seed, "steps": out["steps"],
            "loss": out["loss"], "diverged_at": out["diverged_at"], "hessian": out["callbacks"]["hessian"],
            "effective_lr": out["callbacks"]["effective_lr"], "slq": {"initial": initial["slq"], "final": final},
            "test_acc": test_acc, "measure_images": int(data["measure_x"].shape[0]), "wall_s": out["wall_s"]}


# --- depth at initialization -------------------------------------------------------------------

def mlp(depth_, width, classes, norm, rng, dtype="float64"):
    """A deep ReLU MLP: ``depth_`` Dense(width) [-> norm] -> ReLU blocks, then Dense -> ``classes``."""
    rng = backend.rng(rng)
    noise_rng = rng.spawn(1)[0]
    layers = []
    for _ in range(depth_):
        layers += models.normalized(norm, nn.Dense(width, width, rng=rng, dtype=dtype), width, noise_rng, dtype)
        layers.append(nn.ReLU())
    layers.append(nn.Dense(width, classes, rng=rng, dtype=dtype))
    return nn.Sequential(layers)


def run_depth(spec):
    part, seed = spec["config"]["depth"], spec["seed"]
    xp = backend.get(spec["config"]["backend"])
    out = {"part": "depth", "seed": seed, "networks": {}}
    start = time.perf_counter()
    d = part["dln"]
    for variant in part["variants"]:
        rng = backend.rng(seed)
        X, Y, _ = linear_regression(d["samples"], d["width"], d["width"], rng=rng)
        model = models.dln(d["depth"], d["width"], norm=None if variant == "standard" else variant, rng=rng)
        model.to(spec["config"]["backend"])
        out["networks"].setdefault("dln", {})[variant] = depth.depth_profile(
            model, dln.loss_fn, backend.to_device(X, xp), backend.to_device(Y, xp))
    m = part["mlp"]
    for variant in part["variants"]:
        rng = backend.rng(seed)
        x = rng.standard_normal((m["samples"], m["width"]))
        labels = (x @ rng.standard_normal((m["width"], 10))).argmax(axis=1)   # a random linear teacher's classes
        model = mlp(m["depth"], m["width"], 10, None if variant == "standard" else variant, rng)
        model.to(spec["config"]["backend"])
        out["networks"].setdefault("mlp", {})[variant] = depth.depth_profile(
            model, nn.softmax_cross_entropy, backend.to_device(x, xp), backend.to_device(labels, xp))
    out["wall_s"] = time.perf_counter() - start
    return out


RUNNERS = {"dln": run_dln, "width": run_width, "vgg": run_vgg, "depth": run_depth}


def run_one(spec):
    """One run of any part; a finished run (result.json) is read back on --resume."""
    done = os.path.join(spec["out"], "runs", spec["name"], "result.json")
    if spec["resume"] and os.path.exists(done):
        return io.read_json(done)
    result = RUNNERS[spec["part"]](spec)
    io.write_json(done, result)
    return io.read_json(done)


# --- plan, options, main -----------------------------------------------------------------------

def plan(cfg, out, resume):
    """The runs of every selected part and seed, as task specs."""
    specs = []
    base = {"config": cfg, "out": out, "resume": resume}
    for seed in cfg["seeds"]:
        if "dln" in cfg["parts"]:
            specs += [{**base, "part": "dln", "name": f"dln_{v}_lr{lr:g}_seed{seed}", "variant": v, "lr": lr,
                       "seed": seed} for v, lr in cfg["dln"]["runs"]]
        if "width" in cfg["parts"]:
            specs += [{**base, "part": "width", "name": f"width{w}_{v}_lr{lr:g}_seed{seed}", "width": w, "variant": v,
                       "lr": lr, "seed": seed} for w in cfg["width"]["widths"] for v, lr in cfg["width"]["runs"]]
        if "vgg" in cfg["parts"]:
            specs += [{**base, "part": "vgg", "name": f"vgg_{v}_seed{seed}", "variant": v, "seed": seed}
                      for v in SLQ_VARIANTS]
        if "depth" in cfg["parts"]:
            specs.append({**base, "part": "depth", "name": f"depth_seed{seed}", "seed": seed})
    return specs


#: rough cost of a run relative to the others, so the longest start first
COST = {"vgg": 3, "width": 2, "dln": 1, "depth": 0}


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m minibn.studies.sharpness",
                                description="Edge of stability, effective learning rate, Hessian densities, depth at "
                                            "initialization and the DLN's width, measured on the paper's networks.")
    common.add_options(p, "runs/sharpness-<preset>")
    p.add_argument("--preset", default="cpu", choices=sorted(PRESETS),
                   help="cpu: an hour on 2 cores; paper: the DLN at the paper's scale and VGG-16, for a GPU; "
                        "smoke: the pipeline in seconds [cpu]")
    p.add_argument("--parts", nargs="+", default=list(PARTS), choices=PARTS, help="the parts to run [all]")
    p.add_argument("--data-dir", default=None, help="CIFAR-10 folder for the vgg part [$MINIBN_DATA/cifar10 or the cache]")
    p.add_argument("--seed", type=int, default=0, help="first seed [0]")
    p.add_argument("--seeds", type=int, default=1, help="repeat every run with this many seeds [1]")
    args = p.parse_args(argv)
    try:
        validate(args)
    except ValueError as err:
        p.error(str(err))
    return args


def validate(args):
    """Every option checked before any work starts."""
    args.parts = common.unique(args.parts)
    unknown = [part for part in args.parts if part not in PARTS]
    if unknown or not args.parts:
        raise ValueError(f"--parts must name some of {list(PARTS)}, got {args.parts}")
    if args.preset not in PRESETS:
        raise ValueError(f"--preset must be one of {sorted(PRESETS)}, got {args.preset!r}")
    if args.seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {args.seeds}")
    common.check_seed(args.seed)
    args.jobs = common.check_jobs(args.jobs, args.backend, args.executor)
    common.check_backend(args.backend)
    common.check_executor(args.executor, args.scheduler, args.backend)
    args.out = args.out or os.path.join("runs", f"sharpness-{args.preset}")
    common.check_writable_dir(args.out)


def build_config(args):
    cfg = {k: v for k, v in PRESETS[args.preset].items()}
    cfg.update(preset=args.preset, parts=list(args.parts), seeds=list(range(args.seed, args.seed + args.seeds)),
               backend=args.backend, data_dir=args.data_dir)
    return cfg


def run(out=None, *, preset="cpu", parts=PARTS, data_dir=None, seed=0, seeds=1, backend="numpy", resume=False, jobs=1,
        executor="local", scheduler=None, report=True, command=None):
    """Run the study (the command line's options as arguments) and return what results.json holds."""
    args = argparse.Namespace(out=out, preset=preset, parts=list(parts), data_dir=data_dir, seed=seed, seeds=seeds,
                              backend=backend, resume=resume, jobs=jobs, executor=executor, scheduler=scheduler,
                              no_report=not report)
    validate(args)
    return run_validated(args, command or f"minibn.studies.sharpness.run(out={args.out!r}, preset={preset!r}, ...)")


def run_validated(args, command):
    cfg = build_config(args)
    common.record_config(args.out, cfg, args.resume, may_change=("seeds", "parts", "data_dir"))
    specs = plan(cfg, args.out, args.resume)
    print(f"sharpness study, preset {args.preset}: {len(specs)} runs ({', '.join(cfg['parts'])}) on {args.backend}, "
          f"{common.describe_executor(args.executor, args.jobs, args.scheduler)} -> {args.out}", flush=True)
    started = time.perf_counter()
    order = sorted(specs, key=lambda s: (s["seed"], -COST[s["part"]]))
    results = {}
    for spec, result in common.run_tasks(run_one, order, args.executor, args.jobs, args.scheduler, args.backend):
        results[spec["name"]] = result
        if not isinstance(result, common.Failure):
            print(f"  {spec['name']}: done ({result.get('wall_s', 0):.0f} s)", flush=True)
    common.raise_failures(args.out, common.failures_of(results), common.resume_command(command))
    total = time.perf_counter() - started
    from minibn.studies import sharpness_report

    doc = {"study": "sharpness", "preset": args.preset,
           "config": {**cfg, "environment": common.environment(args.backend), "command": command, "wall_s": total},
           "runs": {spec["name"]: results[spec["name"]] for spec in specs}}
    io.write_json(os.path.join(args.out, "results.json"), doc)
    if not getattr(args, "no_report", False):
        sharpness_report.write_report(args.out, doc)
    print(f"done in {total:.1f} s: {os.path.join(args.out, 'report.md')}")
    return io.jsonable(doc)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    command = "python -m minibn.studies.sharpness " + " ".join(argv)
    return common.main_guard(lambda: run_validated(args, command), args.out, command)


if __name__ == "__main__":
    sys.exit(main())
