"""The theory study: docs/protocol.md §5 checked on random instances and on trained networks.

    python -m minibn.studies.theory [--out DIR] [--backend numpy|cupy] [--seed N]
                                    [--instances N] [--steps N] [--every N] [--units N]
                                    [--networks dln mlp vgg]

Every statement of Section 4 is evaluated with :mod:`minibn.theory`, i.e. with
minibn's own BatchNorm and Dense code at eps = 0, on

* ``--instances`` random layers (batch size m, widths, the scale and offset of the
  batch, gamma, beta and a smooth downstream loss with an exact Hessian-vector
  product all drawn at random), and
* every BN layer of three trained networks, at steps 0, ``--every``, 2 ``--every``, ...
  of training, through the instrument :class:`minibn.measure.theorychecks.TheoryChecks`
  (each layer's actual input batch, weights, gamma, beta, and the real downstream
  network + loss as the downstream function): the paper's deep linear network with BN
  (full-batch GD on summed squared error), a small ReLU MLP with BN and a small VGG
  (conv -> BN -> ReLU, minibatch SGD on cross-entropy) on synthetic data;

the two identities of a weight feeding BN (its gradient orthogonal to it; one plain GD step
growing its squared norm by lr^2 ||g||^2) on the random layers and the trained networks' BN
layers, and the other normalizers' invariances (BatchNorm without gamma, beta, LayerNorm, GroupNorm,
WeightNorm) and LayerNorm's per-sample projection on ``--instances`` random inputs of their code.

Writes ``DIR/results.json`` = ``{"study", "config", "checks": [{"name", "statement", "holds",
"instances", "max_rel_err", ...}, ...], "networks"}`` and ``DIR/report.md``
(:mod:`minibn.studies.theory_report`). From Python, :func:`run` does the same and returns
the results (docs/studies.md).

There is no ``--resume``: the whole study takes one to two minutes on two cores, and its
outcome is one tally over all instances, which a resumed study would have to checkpoint
with every network's training for no saving worth the code. For the same reason it takes no
``--jobs`` or ``--executor``: it is one process, not a set of independent runs to spread over
workers or machines (docs/distributed.md).
"""

import os
import sys
import time

from minibn import backend, models, nn, theory, train
from minibn.data.synthetic import linear_regression
from minibn.measure.theorychecks import (NUMERIC_JACOBIAN_TOLERANCE, TOLERANCE, Tally, TheoryChecks, check_bn_layer,
                                         check_scale_invariant_weight, check_weight_layer)
from minibn.optim import SGD
from minibn.studies import common, folder, theory_report

NETWORKS = ("dln", "mlp", "vgg")


# --- random instances ---------------------------------------------------------------------

def random_instances(tally, n, rng, xp):
    for i in range(n):
        m, C, d = int(rng.integers(3, 65)), int(rng.integers(1, 7)), int(rng.integers(1, 9))
        scale = float(10.0 ** rng.uniform(-2, 2))
        x = rng.standard_normal((m, d)) * scale + rng.uniform(-5, 5) * scale
        W = rng.standard_normal((d, C))
        gamma = 10.0 ** rng.uniform(-1, 1, size=C) * rng.choice([-1.0, 1.0], size=C)
        beta = rng.uniform(-3, 3, size=C)
        kind = theory.SMOOTH_LOSSES[i % len(theory.SMOOTH_LOSSES)]
        loss, hvp = theory.smooth_loss(kind, (m, C), rng, xp=xp)
        x, W, gamma, beta = (backend.to_device(a, xp) for a in (x, W, gamma, beta))
        exact = i % 2 == 0          # half the instances use the exact HVP, half differences of the gradient
        check_bn_layer(tally, "random", x @ W, gamma, beta, loss, range(C), rng, hvp=hvp if exact else None)
        check_weight_layer(tally, "random", x, W, gamma, beta, loss)
        # a step size from the instance's number, so the random stream (and every other check) is unchanged
        check_scale_invariant_weight(tally, "random", x, W, gamma, beta, loss, lr=10.0 ** -(i % 4))
        a = float(10.0 ** rng.uniform(-3, 3))
        s = theory.scale_invariance(x, W, gamma, beta, loss, a)
        tally.add("scale_invariance", "random", max(
            theory.relative_error(s["z_scaled"], s["z"]),
            abs(s["loss_scaled"] - s["loss"]) / max(abs(s["loss"]), theory.TINY),
            theory.relative_error(s["a_grad_W_scaled"], s["grad_W"], s["grad_scale"])))
        size = int(rng.integers(1, 200))
        W0, W_star = rng.standard_normal(size) * float(10.0 ** rng.uniform(-2, 2)), rng.standard_normal(size)
        li = theory.lemma_4_5_identity(backend.to_device(W0, xp), backend.to_device(W_star, xp))
        tally.add("lemma45_identity", "random", abs(li["lhs"] - li["rhs"]) / li["scale"])
        d_in = int(rng.integers(2, 4))
        points = int(rng.integers(d_in + 1, 11))
        premise(tally, "random", backend.to_device(rng.standard_normal((points, d_in)) + rng.uniform(-2, 2, size=d_in), xp),
                backend.to_device(rng.standard_normal(points), xp))


def normalizer_instances(tally, n, rng, xp):
    """Every registered normalizer's scale invariance, as its registry entry states it (docs/theory.md's
    table), and LayerNorm's projection, on their code through minibn.theory's generic functions: ``n``
    random inputs, dense or channels-last."""
    entries = [entry for entry in nn.normalization.REGISTRY.values() if entry.invariance is not None]
    for i in range(n):
        # at least 3 values per statistic: with 2, x_hat = (-1, 1) whatever x is, and the Jacobian is 0
        N, C = int(rng.integers(3, 6)), int(rng.choice([3, 4, 6]))
        shape = (N, C) if i % 2 == 0 else (N, int(rng.integers(1, 3)), int(rng.integers(1, 3)), C)
        scale = float(10.0 ** rng.uniform(-2, 2))
        x = backend.to_device(rng.standard_normal(shape) * scale + rng.uniform(-3, 3) * scale, xp)
        groups = int(rng.choice([g for g in (1, 2, 3) if C % g == 0 and x[0].size // g >= 3]))
        a = float(10.0 ** rng.uniform(-3, 3))
        for entry in entries:
            norm, u, local = theory.invariance_case(entry, x, rng, num_groups=groups)
            r = theory.normalizer_scale_invariance(norm, u, scales=(a, local), seed=i)
            tally.add("normalizer_scale_invariance", "random", max(r["max_output_error"], r["max_grad_error"]))

        layer = nn.LayerNorm(C, eps=0.0, dtype="float64").to(backend.name_of(xp))
        proj = theory.normalizer_projection(layer, x)
        flat = x.reshape(N, -1)
        inv_std = 1.0 / flat.std(axis=1)       # from first principles: the sample's population std
        err = max(proj["cross_column"], float(proj["ones"].max()), float(proj["input"].max()),
                  float(proj["symmetric"].max()), float(proj["idempotent"].max()),
                  theory.relative_error(xp.asarray(proj["scale"]), inv_std))
        rank_ok = all(int(k) == proj["m"] - 2 for k in proj["rank"])
        tally.add("layernorm_projection", "random", err,
                  violated=not (err <= TOLERANCE["layernorm_projection"] and rank_ok
                                and proj["numeric"] <= NUMERIC_JACOBIAN_TOLERANCE))
        tally.bump("layernorm_projection", "max_rel_err_numeric", proj["numeric"])


def premise(tally, source, x, t):
    r = theory.lemma_4_5_premise(x, t)
    on_ray = r["at_k_w_star"][0]["bn_loss"]
    excess = (on_ray - r["bn_opt_loss"]) / max(on_ray, theory.TINY)
    tally.add("lemma45_premise", source, excess, violated=not r["premise_holds"])
    tally.bump("lemma45_premise", "min_rel_loss_excess", excess, combine=min)
    return r


# --- trained networks ---------------------------------------------------------------------

def _mlp(rng, dtype):
    return nn.Sequential([nn.Dense(16, 32, rng=rng, dtype=dtype), nn.BatchNorm(32, dtype=dtype), nn.ReLU(),
                          nn.Dense(32, 32, rng=rng, dtype=dtype), nn.BatchNorm(32, dtype=dtype), nn.ReLU(),
                          nn.Dense(32, 4, rng=rng, dtype=dtype)])


def _teacher_labels(x, classes, rng):
    """Labels of a random linear teacher on the flattened inputs (learnable by the network)."""
    flat = x.reshape(len(x), -1)
    return (flat @ rng.standard_normal((flat.shape[1], classes))).argmax(axis=1)


def build_networks(seed):
    """The trained networks: name -> (model, loss_fn, stream, lr, description). Host arrays, float64."""
    rng = backend.rng(seed)
    out = {}
    X, Y, _ = linear_regression(1000, 10, 10, rng=rng)
    out["dln"] = (models.dln(depth=25, width=10, norm="batchnorm", rng=rng), _sum_squared, train.FullBatch(X, Y), 1e-6,
                  "deep linear network 25 x (10x10), BN after the first 24 layers, 1000 samples, full-batch GD on "
                  "summed squared error, LR 1e-6 (docs/protocol.md §1)")
    xm = rng.standard_normal((512, 16))
    out["mlp"] = (_mlp(rng, "float64"), nn.softmax_cross_entropy,
                  train.MiniBatches(xm, _teacher_labels(xm, 4, rng), 64, seed=seed), 0.1,
                  "MLP 16-32-32-4 (Dense -> BN -> ReLU twice), 512 Gaussian inputs with labels of a random linear "
                  "teacher, minibatch SGD (batch 64) on cross-entropy, LR 0.1")
    xv = rng.standard_normal((256, 8, 8, 3))
    model = models.vgg(config=[8, "M", 16, "M"], norm="batchnorm", num_classes=4, input_size=8, rng=rng, dtype="float64")
    out["vgg"] = (model, nn.softmax_cross_entropy, train.MiniBatches(xv, _teacher_labels(xv, 4, rng), 32, seed=seed),
                  0.05, "small VGG [8, M, 16, M] (conv3x3 -> BN -> ReLU, 2x2 max-pool, Dense 64 -> 4), 256 "
                        "Gaussian 8x8x3 images with labels of a random linear teacher, minibatch SGD (batch 32) on "
                        "cross-entropy, LR 0.05; conv BN units pool N*H*W values (m = 2048 and 512)")
    return out


def _sum_squared(pred, target):
    return nn.squared_error(pred, target, reduction="sum")


def _to_backend(stream, name):
    stream.x, stream.target = backend.to_device(stream.x, name), backend.to_device(stream.target, name)
    return stream


# --- main -----------------------------------------------------------------------------------

OPTIONS = (
    *common.shared_options("runs/theory", resume=False, runs=False),
    common.Option("seed", 0, "random instances, networks, data and the units checked", type=int),
    common.Option("instances", 300, "random layers checked", type=int),
    common.Option("steps", 300, "training steps of each network", type=int),
    common.Option("every", 100, "check the trained networks every this many steps", type=int),
    common.Option("units", 4, "units per BN layer for the Theorem 4.2 check", type=int),
    common.Option("networks", NETWORKS, "the trained networks to check [all]", nargs="*", choices=NETWORKS),
)
DEFAULT_OUT = os.path.join("runs", "theory")


def check(opts):
    """The theory study's own options checked (:func:`minibn.studies.common.checked` does the rest)."""
    for option in ("instances", "steps"):
        opts[option] = common.check_count(option, opts[option])
    for option in ("every", "units"):
        opts[option] = common.check_positive(option, opts[option], allow_none=False)
    unknown = [n for n in opts["networks"] if n not in NETWORKS]
    if unknown:
        raise ValueError(f"unknown network(s) {unknown}; choose from {list(NETWORKS)}")
    opts["networks"] = common.unique(opts["networks"])
    return opts


def execute(opts, command):
    """Every check on the random instances and the trained networks; writes results.json and (unless
    ``report`` is false) claims.json and report.md; returns what results.json holds."""
    settings = {key: opts[key] for key in ("seed", "backend", "instances", "steps", "every", "units")}
    settings["networks"] = list(opts["networks"])
    folder.record_study(opts["out"], "theory", settings, resume=False)
    xp = backend.get(opts["backend"])
    start = time.time()
    tally = Tally()
    rng = backend.rng(opts["seed"])
    print(f"theory: {opts['instances']} random instances", flush=True)
    random_instances(tally, opts["instances"], rng, xp)
    print(f"theory: {opts['instances']} random instances of the other normalizers", flush=True)
    normalizer_instances(tally, opts["instances"], rng, xp)

    ce = theory.lemma_4_5_counterexample(xp)
    premise_excess = (ce["at_k_w_star"][0]["bn_loss"] - ce["bn_opt_loss"]) / ce["at_k_w_star"][0]["bn_loss"]
    tally.add("lemma45_premise", "counterexample", premise_excess, violated=not ce["premise_holds"])
    tally.extra("lemma45_premise", "counterexample", ce)
    tally.extra("thm41_printed", "counterexample", _printed_counterexample(xp))

    trained = {}
    for name, (model, loss_fn, stream, lr, description) in build_networks(opts["seed"]).items():
        if name not in opts["networks"]:
            continue
        print(f"theory: training {name} for {opts['steps']} steps, checks every {opts['every']}", flush=True)
        model.to(opts["backend"])
        stream = _to_backend(stream, opts["backend"])
        cb = TheoryChecks(tally, name, loss_fn, opts["every"], opts["units"], opts["seed"])
        res = train.train(model, loss_fn, stream, SGD(model, lr), opts["steps"] + 1, callbacks=[cb], log_every=1,
                          progress=False)
        checked = cb.result()
        trained[name] = {"description": description, "checked_steps": checked["steps"],
                         "loss_at_checked_steps": checked["loss"],
                         "bn_layers": sum(isinstance(layer, nn.BatchNorm) for layer in model),
                         "diverged_at": res["diverged_at"]}
    config = {**settings, "command": command, "wall_s": time.time() - start,
              "environment": common.environment(opts["backend"])}
    doc = {"study": "theory", "config": config, **tally.results(), "networks": trained}
    for c in doc["checks"]:
        print(f"{c['name']:18s} holds={str(c['holds']):5s} instances={c['instances']:6d} max_rel_err={c['max_rel_err']:.3g}")
    return common.write_results(opts, doc, report=theory_report)


run, main = common.entry_points(__name__, OPTIONS)


def _printed_counterexample(xp):
    """L(z) = ||z||^2/2, gamma = 1, beta = 0, y = (1, 2, 3, 5): L_hat = ||y_hat||^2/2 = m/2 is constant,
    so the BN gradient is 0, while the printed bound is (1/sigma^2)(m - m^1.5) < 0."""
    y = backend.to_device(backend.host.asarray([[1.0], [2.0], [3.0], [5.0]]), xp)
    gamma, beta = xp.ones(1), xp.zeros(1)
    z, _ = theory.bn_forward(y, gamma, beta)
    r = theory.theorem_4_1(y, gamma, beta, z)
    return {"y": y[:, 0], "gamma": 1.0, "beta": 0.0, "loss": "L(z) = ||z||^2 / 2 (so g_hat = z = y_hat)",
            "m": 4, "lhs": float(r["lhs"][0]), "rhs_1_over_m": float(r["rhs"][0]),
            "rhs_printed": float(r["rhs_printed"][0])}


if __name__ == "__main__":
    sys.exit(main())
