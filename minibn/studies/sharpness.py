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

import os
import sys
import time

from minibn import backend, io, models, nn, train
from minibn.data.synthetic import linear_regression
from minibn.measure import depth, effective_lr, hessian, landscape, slq
from minibn.nn import normalization
from minibn.optim import SGD
from minibn.results import Run
from minibn.studies import common, dln, sharpness_report, vgg

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
    X, Y, model = dln.data_and_model(setting, variant, seed)
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
    inner = {"config": cfg, "name": spec["name"], "out": os.path.join(spec["out"], "width"),
             "run": Run(spec["variant"], spec["lr"], spec["seed"]), "resume": spec["resume"],
             "module": normalization.get(spec["variant"]).module}
    result = dln.run_one(inner)
    # what the DLN claims read; the raw probes and activation samples stay in the run's folder
    return {"part": "width", "width": spec["width"], "variant": result["variant"], "lr": result["lr"],
            "seed": result["seed"], "steps": result["steps"], "loss": result["loss"],
            "diverged_at": result["diverged_at"], "ics": result["ics"],
            "landscape": {k: result["landscape"][k] for k in LANDSCAPE_SUMMARY if k in result["landscape"]},
            "wall_s": result["wall_s"]}


# --- the VGG -----------------------------------------------------------------------------------

def chunks(x, target, size):
    """The measurement set as consecutive chunks of ``size`` images (the last one may be shorter)."""
    starts = range(0, x.shape[0], size)
    return [x[s:s + size] for s in starts], [target[s:s + size] for s in starts]


def run_vgg(spec):
    part, seed, variant = spec["config"]["vgg"], spec["seed"], spec["variant"]
    folder = os.path.join(spec["out"], "runs", spec["name"])
    os.makedirs(folder, exist_ok=True)
    xp = backend.get(spec["config"]["backend"])
    # the fixed measurement set: the first measure_size/10 training images of each class, in file order
    data = vgg.load_data(spec["config"]["data_dir"], part["train_size"], part["test_size"], part["measure_size"])
    model = models.vgg(part["config"], norm=variant, width=part["width"], rng=seed, dtype="float32")
    model.to(spec["config"]["backend"])
    dev = lambda a: backend.to_device(a, xp)  # noqa: E731
    measure = chunks(dev(data["subset_x"]), dev(data["subset_y"]), part["chunk"])
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
            "test_acc": test_acc, "measure_images": int(data["subset_x"].shape[0]), "wall_s": out["wall_s"]}


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

def plan(cfg, opts):
    """The runs of every selected part and seed, as tasks (:func:`minibn.studies.common.task`); a DLN
    run of part P is named ``P_`` + its :class:`~minibn.results.Run` name."""
    tasks = []
    for seed in cfg["seeds"]:
        if "dln" in cfg["parts"]:
            tasks += [common.task(opts, cfg, "dln_" + Run(v, lr, seed).name, part="dln", variant=v, lr=lr, seed=seed)
                      for v, lr in cfg["dln"]["runs"]]
        if "width" in cfg["parts"]:
            tasks += [common.task(opts, cfg, f"width{w}_" + Run(v, lr, seed).name, part="width", width=w, variant=v,
                                  lr=lr, seed=seed) for w in cfg["width"]["widths"] for v, lr in cfg["width"]["runs"]]
        if "vgg" in cfg["parts"]:
            tasks += [common.task(opts, cfg, f"vgg_{v}_seed{seed}", part="vgg", variant=v, seed=seed)
                      for v in SLQ_VARIANTS]
        if "depth" in cfg["parts"]:
            tasks.append(common.task(opts, cfg, f"depth_seed{seed}", part="depth", seed=seed))
    return tasks


#: rough cost of a run relative to the others, so the longest start first
COST = {"vgg": 3, "width": 2, "dln": 1, "depth": 0}


OPTIONS = (
    *common.shared_options("runs/sharpness-<preset>"),
    common.Option("preset", "cpu", "cpu: an hour on 2 cores; paper: the DLN at the paper's scale and VGG-16, for a "
                                   "GPU; smoke: the pipeline in seconds", choices=sorted(PRESETS)),
    common.Option("parts", PARTS, "the parts to run [all]", nargs="+", choices=PARTS),
    common.Option("data_dir", None, "CIFAR-10 folder for the vgg part [$MINIBN_DATA/cifar10 or the cache]",
                  metavar="DIR"),
)
DEFAULT_OUT = os.path.join("runs", "sharpness-{preset}")


def check(opts):
    """The sharpness study's own options checked (:func:`minibn.studies.common.checked` does the rest)."""
    opts["parts"] = common.unique(common.as_list(opts["parts"]))
    unknown = [part for part in opts["parts"] if part not in PARTS]
    if unknown or not opts["parts"]:
        raise ValueError(f"--parts must name some of {list(PARTS)}, got {opts['parts']}")
    if opts["preset"] not in PRESETS:
        raise ValueError(f"--preset must be one of {sorted(PRESETS)}, got {opts['preset']!r}")
    return opts


def build_config(opts):
    """The preset's parts, the DLN setting the width part builds on (which its claims read), the
    chosen parts, the seeds, the backend and the data folder."""
    cfg = {k: dict(v) for k, v in PRESETS[opts["preset"]].items()}
    cfg["width"]["setting"] = dln_setting(cfg["width"])
    cfg.update(preset=opts["preset"], parts=list(opts["parts"]),
               seeds=list(range(opts["seed"], opts["seed"] + opts["seeds"])), backend=opts["backend"],
               data_dir=opts["data_dir"])
    return cfg


def execute(opts, command):
    """Train the runs of every chosen part and write the results, figures and report."""
    cfg = build_config(opts)
    tasks = plan(cfg, opts)
    runs, wall = common.train_runs("sharpness", f"sharpness study, preset {opts['preset']} ({', '.join(cfg['parts'])})", opts, cfg,
                                   tasks, run_one, command, may_change=("seeds", "parts", "data_dir"),
                                   order=lambda tasks: sorted(tasks, key=lambda t: (t["seed"], -COST[t["part"]])))
    doc = common.document("sharpness", opts, cfg, runs, command, wall)
    return common.write_results(opts, doc, report=sharpness_report)


run, main = common.entry_points(__name__, OPTIONS)


if __name__ == "__main__":
    sys.exit(main())
