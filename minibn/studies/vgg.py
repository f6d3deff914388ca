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

import math
import os
import sys
import time

from minibn import backend, io, models, nn, results, train
from minibn.data import cifar10
from minibn.measure import ics, landscape, moments
from minibn.nn import normalization
from minibn.optim import SGD
from minibn.results import Run, compared
from minibn.studies import common, vgg_report

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


def plan(cfg, experiments):
    """``{name: spec}`` of the runs the experiments need for every seed of ``cfg["seeds"]``, each spec
    with its :class:`~minibn.results.Run`, instruments and experiments; the added variants run
    wherever BN does."""
    runs = {}
    for seed in cfg["seeds"]:
        for exp in experiments:
            entries = [(v, which) for variant, which in EXPERIMENTS[exp]
                       for v in (compared(cfg) if variant == "batchnorm" else [variant])]
            for variant, which in entries:
                run = Run(variant, cfg[which], seed)
                runs.setdefault(run.name, {"run": run, "experiments": []})["experiments"].append(exp)
    for spec in runs.values():
        run = spec["run"]
        is_base = run.lr == cfg["lr"]
        spec["ics"] = run.variant in ("standard", *compared(cfg)) and (is_base or run.lr == cfg["lr_low"])
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


def load_data(data_dir, train_size, test_size, subset_size):
    """CIFAR-10's training set (its first ``train_size`` images; None: all), test set (first
    ``test_size``) and a fixed balanced subset of the training images (the first ``subset_size``/10
    of each class, in file order, as ``subset_x``, ``subset_y``), loaded once per process: a worker
    serves several runs, and only the last data asked for is kept."""
    key = (data_dir, train_size, test_size, subset_size)
    if key not in _DATA:
        d = cifar10.load(data_dir, train_size=train_size, test_size=test_size)
        pick = cifar10.balanced_subset(d["train_y"], subset_size)
        d["subset_x"], d["subset_y"] = d["train_x"][pick], d["train_y"][pick]
        _DATA.clear()
        _DATA[key] = d
    return _DATA[key]


def run_one(job):
    """Train one configuration with its instruments; returns (and stores) its result dict."""
    cfg, spec, name = job["config"], job["spec"], job["name"]
    folder = os.path.join(job["out"], "runs", name)
    done = os.path.join(folder, "result.json")
    if job["resume"] and os.path.exists(done):
        return {**io.read_json(done), "experiments": job["experiments"]}
    os.makedirs(folder, exist_ok=True)
    xp = backend.get(cfg["backend"])
    data = load_data(cfg["data_dir"], cfg["train_size"], cfg["eval_test_size"], cfg["eval_train_size"])
    run = spec["run"]
    seed = run.seed
    normalization.get(run.variant, job["module"])  # a spawned worker imports a user's variant here
    model = models.vgg(cfg["config"], norm=run.variant, width=cfg["width"], rng=seed, dtype="float32")
    model.to(cfg["backend"])
    stream = train.MiniBatches(backend.to_device(data["train_x"], xp), backend.to_device(data["train_y"], xp),
                               cfg["batch"], seed=seed)
    eval_sets = {split: (backend.to_device(data[f"{part}_x"], xp), backend.to_device(data[f"{part}_y"], xp))
                 for split, part in (("eval", "subset"), ("test", "test"))}

    started = time.perf_counter()

    def evaluate(m, step):
        train_acc, train_loss = accuracy(m, *eval_sets["eval"])
        test_acc, test_loss = accuracy(m, *eval_sets["test"])
        print(f"[{name}] step {step}/{cfg['steps']}: train acc {train_acc:.3f}, test acc {test_acc:.3f} "
              f"({time.perf_counter() - started:.0f} s)", flush=True)
        return {"train_acc": train_acc, "test_acc": test_acc, "train_loss": train_loss, "test_loss": test_loss}

    lr, every = run.lr, cfg["measure_every"]
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
        "variant": run.variant, "lr": lr, "seed": seed, "experiments": job["experiments"],
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


OPTIONS = (
    *common.shared_options("runs/vgg-<preset>"),
    common.Option("preset", "cpu", "paper: VGG-16, 15,000 steps (GPU); cpu: VGG-11 at 1/8 width, 2,000 steps (~1 h on "
                                   "2 cores); smoke: seconds, for tests", choices=sorted(PRESETS)),
    common.Option("experiments", tuple(EXPERIMENTS), "comma-separated subset of E1..E5 (from Python: a list) [all]"),
    common.Option("data_dir", None, "folder with the python-version CIFAR-10 batches [$MINIBN_DATA/cifar10, else "
                                    "~/.cache/minibn/cifar10, downloaded there if absent]", metavar="DIR"),
    common.Option("steps", None, "training steps per run [the preset's]", type=int),
    common.Option("only", None, "train only these runs of the plan (e.g. batchnorm_lr0.1_seed0; from Python: a list), "
                                "to split a study over several processes or machines sharing --out by hand "
                                "(--executor dask splits it for you); a last --resume without --only writes the "
                                "whole report", metavar="RUN,..."),
    common.Option("lr", None, "the base learning rate of every experiment [0.1]", type=float),
    common.Option("lr_high", None, "E1's large learning rate [0.5]", type=float),
    common.Option("lr_low", None, "E3's small learning rate [0.01]", type=float),
    common.Option("variants", None, "normalizers to run beside BN, wherever BN runs, at its LRs, of every registered "
                                    "normalizer (e.g. layernorm groupnorm weightnorm) [none]", nargs="+", metavar="V"),
)
DEFAULT_OUT = os.path.join("runs", "vgg-{preset}")


def check(opts):
    """The VGG study's own options checked, the data folder included (:func:`minibn.studies.common.checked`
    does the rest)."""
    if opts["preset"] not in PRESETS:
        raise ValueError(f"--preset must be one of {sorted(PRESETS)}, got {opts['preset']!r}")
    names = [e.upper() for e in common.as_list(opts["experiments"]) or []]
    unknown = [e for e in names if e not in EXPERIMENTS]
    if not names or unknown:
        raise ValueError(f"--experiments: unknown {unknown or opts['experiments']!r}; choose from {', '.join(EXPERIMENTS)}")
    opts["experiments"] = sorted(set(names))
    for key in ("lr", "lr_high", "lr_low"):
        if opts[key] is not None:
            opts[key] = common.check_lr(key, opts[key])
    opts["steps"] = common.check_positive("steps", opts["steps"])
    opts["variants"] = common.check_variants(opts["variants"], opts["jobs"], opts["executor"])
    try:
        opts["data_dir"] = cifar10.locate(opts["data_dir"])
    except cifar10.CIFARDataError as err:
        raise ValueError(str(err)) from None
    if opts["only"] is not None:
        planned = plan(build_config(opts), opts["experiments"])
        opts["only"] = common.unique(common.as_list(opts["only"]))
        unknown = [r for r in opts["only"] if r not in planned]
        if not opts["only"] or unknown:
            raise ValueError(f"--only: {unknown or 'no run'} not in the plan of these experiments: {', '.join(planned)}")
    return opts


def build_config(opts):
    """The study's config: the preset's settings with the options' steps and LRs, the seeds, the backend,
    the data folder, the landscape grid and the normalizers run beside BN."""
    cfg = dict(PRESETS[opts["preset"]])
    cfg.update({key: opts[key] for key in ("steps", "lr", "lr_high", "lr_low") if opts[key] is not None})
    cfg.update(preset=opts["preset"], seeds=list(range(opts["seed"], opts["seed"] + opts["seeds"])),
               backend=opts["backend"], data_dir=os.path.abspath(str(opts["data_dir"])), eta_multipliers=ETA_MULTIPLIERS)
    if opts["variants"]:
        cfg["variants"] = list(opts["variants"])
    return cfg


#: A run's cost relative to the others, so the costliest start first: noise is drawn at every step,
#: and ICS measures every layer's gradient twice.
COST = {"noisy": 3, "standard_noisy": 2}


def execute(opts, command):
    """Train the runs the experiments need and write the results, figures and report."""
    cfg = build_config(opts)
    runs = plan(cfg, opts["experiments"])
    tasks = [common.task(opts, cfg, name, spec={k: v for k, v in spec.items() if k != "experiments"},
                         experiments=spec["experiments"], module=normalization.get(spec["run"].variant).module)
             for name, spec in runs.items() if not opts["only"] or name in opts["only"]]

    def order(tasks):  # seed by seed, so an interrupted study leaves whole seeds; the costliest first
        return sorted(tasks, key=lambda t: (t["spec"]["run"].seed,
                                            -(COST.get(t["spec"]["run"].variant, 1) + 2 * t["spec"]["ics"])))

    # runs are named by variant, LR and seed, so the seeds and added variants may change on resume
    title = f"vgg study, preset {opts['preset']} ({', '.join(opts['experiments'])}, {cfg['steps']} steps)"
    # which experiments use a run changes nothing of its training: a resumed run is kept when they change
    results_, wall = common.train_runs("vgg", title, opts, cfg, tasks, run_one, command, may_change=("seeds", "variants"),
                                       order=order, labels=("experiments",))
    doc = common.document("vgg", opts, cfg, results_, command, wall, experiments=opts["experiments"])
    if opts["only"]:   # the other processes of the split may still be training theirs
        print(f"trained {len(results_)} runs of the plan (--only); the study's results.json and report: the same "
              f"command with --resume and without --only, once every run is trained", flush=True)
        return io.jsonable(doc)
    return common.write_results(opts, doc, split_run, vgg_report)


def split_run(name, run):
    """``(run for results.json, arrays for results.npz)``: each conv layer's activation samples move to
    a (points, samples) float32 array ``NAME/moments/K``."""
    mom = dict(run["moments"])
    layers, arrays = {}, {}
    for k, (layer, rec) in enumerate(sorted(mom["layers"].items(), key=lambda kv: int(kv[0])), start=1):
        rec = dict(rec)
        arrays[f"{name}/moments/{k}"] = results.stack_ragged(rec.pop("samples", []), "float32")  # as recorded
        layers[layer] = rec
    return {**run, "moments": {**mom, "layers": layers}}, arrays


run, main = common.entry_points(__name__, OPTIONS)


if __name__ == "__main__":
    sys.exit(main())
