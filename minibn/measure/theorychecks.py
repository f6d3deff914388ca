"""The paper's Section 4 statements as an instrument: checked on every BN layer of a model
while it trains (used by :mod:`minibn.studies.theory`; derivations in docs/theory.md).

:class:`TheoryChecks` is a training callback. At its steps it evaluates, with the functions
of :mod:`minibn.theory`, each statement on each BatchNorm layer of the model, with that layer's
actual input batch, gamma, beta, and the rest of the network and its loss as the downstream
function; each instance is tallied in a :class:`Tally` (per statement and per source: how many
instances, the largest relative error, the violations). During a check the BN layers run with
eps = 0, as the theory assumes, in probe mode; the model's snapshot puts back everything else,
so training around the check is unchanged.
"""

import math

from minibn import backend, nn, theory
from minibn.measure import Recorder
from minibn.nn import im2col

STATEMENTS = {
    "bn_jacobian": "dz_j/dy_j = (gamma/sigma_j) P_j with P_j = I - 11^T/m - y_hat y_hat^T/m, a symmetric projection "
                   "(P 1 = P y_hat = 0, P^2 = P)",
    "thm41": "Theorem 4.1 with 1/m: ||grad_{y_j} L_hat||^2 = (gamma^2/sigma_j^2)(||g_hat_j||^2 - <1,g_hat_j>^2/m "
             "- <g_hat_j,y_hat_j>^2/m) (the '<=' holds with equality)",
    "thm41_printed": "Theorem 4.1 as printed, with 1/sqrt(m) on the last term: ||grad_{y_j} L_hat||^2 <= "
                     "(gamma^2/sigma_j^2)(||g_hat_j||^2 - <1,g_hat_j>^2/m - <g_hat_j,y_hat_j>^2/sqrt(m))",
    "thm42_identity": "Theorem 4.2 proof identity (eq. 50): g'^T (d2 L_hat/dy_j dy_j) g' = (gamma^2/sigma^2) g'^T H g' "
                      "- (gamma/(m sigma^2)) <g_hat_j, y_hat_j> ||g'||^2, g' = grad_{y_j} L_hat, H = d2L/dz_j dz_j",
    "obs43": "Observation 4.3: gamma = sigma_j, beta = mu_j reproduces y_j exactly",
    "thm44": "Theorem 4.4: dL_hat/dW_{.j} = X^T dL_hat/dy_j, hence ||dL_hat/dW_{.j}||^2 <= lambda^2 ||dL_hat/dy_j||^2 "
             "with lambda = ||X||_2",
    "lemma45_identity": "Lemma 4.5 identity: ||W0 - k W*||^2 = ||W0 - W*||^2 - (||W*||^2 - <W*,W0>)^2/||W*||^2, "
                        "k = <W*,W0>/||W*||^2",
    "lemma45_premise": "Lemma 4.5 premise: for a standard-network optimum W*, k W* (k > 0) is an optimum of the "
                       "BN network",
    "scale_invariance": "BN(a W x) = BN(W x) for a > 0 (same output and loss), and grad_W at a W = (1/a) grad_W at W",
    "normalizer_scale_invariance": "each registered normalizer (eps = 0) is invariant to a positive scale a of what it "
                                   "normalizes, y(a x) = y(x) and a dL/dx(a x) = dL/dx(x), for the scales its registry "
                                   "entry's invariance names (the table of docs/theory.md): per channel (a scale of the "
                                   "preceding weights' unit), per sample, per sample and group (so each to any scale of "
                                   "the preceding weights), or, for a reparametrization of the weights (WeightNorm), "
                                   "per output unit of its direction v",
    "layernorm_projection": "LayerNorm (eps = 0, gamma = 1): per sample n, dy_n/dx_n = inv_std_n P_n with P_n = I - "
                            "11^T/m - x_hat_n x_hat_n^T/m a symmetric projection of rank m - 2 (P 1 = P x_hat = 0, "
                            "P^2 = P), and dy_n/dx_l = 0 for l != n (no coupling across the batch)",
    "weight_grad_orthogonal": "a weight feeding BN (eps = 0) has its gradient orthogonal to it, unit by unit: "
                              "<dL/dW_j, W_j> = 0 (Arora, Li, Lyu 2019)",
    "gd_norm_growth": "under one plain GD step (no momentum, no weight decay) such a weight's norm grows as "
                      "||W_j - lr g_j||^2 = ||W_j||^2 + lr^2 ||g_j||^2 (Arora, Li, Lyu 2019)",
}

TOLERANCE = {"bn_jacobian": 1e-11, "thm41": 1e-11, "thm41_printed": 1e-11, "thm42_identity": 1e-6,
             "obs43": 1e-11, "thm44": 1e-11, "lemma45_identity": 1e-11, "lemma45_premise": 1e-9,
             "scale_invariance": 1e-11, "normalizer_scale_invariance": 1e-9, "layernorm_projection": 1e-10,
             "weight_grad_orthogonal": 1e-11, "gd_norm_growth": 1e-11}
NUMERIC_JACOBIAN_TOLERANCE = 1e-6


class Tally:
    """Per check and per source: instances, the largest relative error, violations, extras."""

    def __init__(self):
        self.checks = {name: {"instances": 0, "max_rel_err": 0.0, "violations": 0, "by_source": {}} for name in STATEMENTS}

    def add(self, name, source, err, violated=None):
        err = float(err)
        if violated is None:
            violated = not err <= TOLERANCE[name]           # NaN counts as a violation
        for entry in (self.checks[name], self.checks[name]["by_source"].setdefault(
                source, {"instances": 0, "max_rel_err": 0.0, "violations": 0})):
            entry["instances"] += 1
            entry["max_rel_err"] = max(entry["max_rel_err"], err) if math.isfinite(err) else float("nan")
            entry["violations"] += int(bool(violated))
        return violated

    def extra(self, name, key, value):
        self.checks[name][key] = value

    def bump(self, name, key, value, combine=max):
        c = self.checks[name]
        c[key] = value if key not in c else combine(c[key], value)

    def results(self):
        out = []
        for name, c in self.checks.items():
            holds = c["instances"] > 0 and c["violations"] == 0
            out.append({"name": name, "statement": STATEMENTS[name], "holds": holds, "instances": c["instances"],
                        "max_rel_err": c["max_rel_err"], "tolerance": TOLERANCE[name],
                        **{k: v for k, v in c.items() if k not in ("instances", "max_rel_err")}})
        return {"checks": out}


# --- one layer's checks -----------------------------------------------------------------

def check_bn_layer(tally, source, y, gamma, beta, downstream, units, rng, hvp=None, jacobian_rows=None, where=None):
    """Every BN-only statement on one BN layer: its input y, gamma, beta, downstream loss."""
    kappa = theory.conditioning(y)
    tally.bump("bn_jacobian", "max_conditioning", kappa)
    m = theory.rows(y).shape[0]
    rows_idx = None if jacobian_rows is None or m <= jacobian_rows else sorted(rng.choice(m, jacobian_rows, replace=False))
    jac = theory.bn_jacobian(y, gamma, beta, rows_idx=rows_idx)
    err = max(theory.relative_error(jac["code"], jac["theory"]), jac["annihilated"], jac.get("idempotence", 0.0))
    numeric = theory.relative_error(jac["numeric"], jac["theory"])
    tally.add("bn_jacobian", source, err, violated=not (err <= TOLERANCE["bn_jacobian"] and numeric <= NUMERIC_JACOBIAN_TOLERANCE))
    tally.bump("bn_jacobian", "max_rel_err_numeric", numeric)

    z, _ = theory.bn_forward(y, gamma, beta)
    _, g_hat = downstream(z)
    r = theory.theorem_4_1(y, gamma, beta, g_hat)
    for j in range(len(r["lhs"])):
        scale = max(float(r["scale"][j]), theory.TINY)
        lhs, rhs, printed = float(r["lhs"][j]), float(r["rhs"][j]), float(r["rhs_printed"][j])
        tally.add("thm41", source, abs(lhs - rhs) / scale)
        violation = max(0.0, lhs - printed) / scale
        tally.bump("thm41_printed", "min_rel_violation", violation, combine=min)
        if tally.add("thm41_printed", source, violation, violated=violation > TOLERANCE["thm41_printed"]):
            if "first_violation" not in tally.checks["thm41_printed"]["by_source"][source]:
                tally.checks["thm41_printed"]["by_source"][source]["first_violation"] = {
                    **(where or {}), "unit": j, "m": m, "lhs": lhs, "rhs_printed": printed, "rhs_1_over_m": rhs,
                    "g_dot_yhat": float(r["g_dot_yhat"][j])}

    for j in units:
        res, step = None, 1e-3
        for _ in range(3):          # a kink (ReLU, max-pool) within the steps: retry with smaller steps
            res = theory.theorem_4_2(y, gamma, beta, downstream, j, hvp=hvp, rel_step=step)
            if res["spread"] < 1e-7:
                break
            step /= 10.0
        if res["spread"] >= 1e-7:
            for entry in (tally.checks["thm42_identity"], tally.checks["thm42_identity"]["by_source"].setdefault(
                    source, {"instances": 0, "max_rel_err": 0.0, "violations": 0})):
                entry["skipped_at_kinks"] = entry.get("skipped_at_kinks", 0) + 1
            continue
        tally.add("thm42_identity", source, abs(res["lhs"] - res["rhs"]) / max(res["scale"], theory.TINY))

    o = theory.observation_4_3(y)
    tally.add("obs43", source, theory.relative_error(o["z"], o["y"]))


def check_weight_layer(tally, source, x, W, gamma, beta, downstream, b=None, grad_W=None):
    """Theorem 4.4 on the weight layer feeding a BN layer (x: inputs or patch matrix, W: (d, C))."""
    r = theory.theorem_4_4(x, W, gamma, beta, downstream, b=b, grad_W=grad_W)
    err = theory.relative_error(r["code"], r["chain"], r["grad_scale"])
    if grad_W is not None:
        err = max(err, theory.relative_error(r["model"], r["chain"], r["grad_scale"]))
    over = r["lhs"] - r["bound"] - TOLERANCE["thm44"] * r["bound_scale"]
    tally.add("thm44", source, err, violated=not (err <= TOLERANCE["thm44"] and bool((over <= 0).all())))
    ratio = float((r["lhs"] / r["bound"]).max())
    tally.bump("thm44", "max_bound_ratio", ratio)


def check_scale_invariant_weight(tally, source, x, W, gamma, beta, downstream, lr, b=None, grad_W=None):
    """The two identities of a weight feeding BN (x: inputs or patch matrix, W: (d, C)): its
    gradient orthogonal to it, relative to ||W_j|| times the bound on ||g_j|| (theory.weight_gradient_orthogonality), and the norm growth of one plain GD
    step of ``lr``, relative to (||W_j|| + lr b_j)^2 with b_j that bound; for minibn's gradient of Dense -> BN ->
    downstream, and for ``grad_W`` (a trained network's own gradient) where given."""
    r = theory.weight_gradient_orthogonality(x, W, gamma, beta, downstream, b=b, grad_W=grad_W)
    xp = backend.array_module(W)
    pairs = [(r["inner"], r["grad_W_code"])] + ([(r["inner_model"], grad_W)] if grad_W is not None else [])
    for inner, g in pairs:
        tally.add("weight_grad_orthogonal", source, float((abs(inner) / xp.maximum(r["scale"], theory.TINY)).max()))
        growth = theory.gd_norm_growth(W, g, lr, r["grad_bound"])
        tally.add("gd_norm_growth", source,
                  float((abs(growth["lhs"] - growth["rhs"]) / xp.maximum(growth["scale"], theory.TINY)).max()))


def conv_patches(layer, x):
    """A Conv2d's input as the im2col patch matrix (N*Ho*Wo, kh*kw*C_in) its GEMM multiplies."""
    (kh, kw), (sh, sw), (ph, pw) = layer.kernel_size, layer.stride, layer.padding
    return im2col.im2col(im2col.pad(x, ph, pw), kh, kw, sh, sw)


class TheoryChecks(Recorder):
    """A training callback: at its steps, every statement on each BN layer of the model, tallied in
    ``tally`` under ``source``. ``result()``: ``{"steps": [t], "loss": [loss at t, eps = 0, probe mode]}``.

    A conv BN layer's "unit" is a channel, pooling its N*H*W values, and its weight layer is the
    GEMM of the im2col patch matrix. ``units_per_layer`` units per layer (drawn with ``seed``) get
    the Theorem 4.2 check, whose second derivatives are the costly part.
    """

    def __init__(self, tally, source, loss_fn, every, units_per_layer, seed, jacobian_rows=24):
        super().__init__("theory", every, {"steps": [], "loss": []})
        self.tally, self.source, self.loss_fn = tally, source, loss_fn
        self.units_per_layer, self.jacobian_rows = units_per_layer, jacobian_rows
        self.rng = backend.rng(seed)
        self.initial = None

    def __call__(self, step, model, x, target, optimizer):
        bns = [i for i, layer in enumerate(model) if isinstance(layer, nn.BatchNorm)]
        if self.initial is None:
            self.initial = {i - 1: model[i - 1].params["W"].copy() for i in bns}
        # eps is a setting, not state: the snapshot does not hold it, so it is put back here
        saved_eps = {i: model[i].eps for i in bns}
        try:
            for i in bns:
                model[i].eps = 0.0
            with model.snapshot():
                self._measure(step, model, x, target, bns, optimizer)
        finally:
            for i in bns:
                model[i].eps = saved_eps[i]

    def _downstream(self, model, i, target):
        """The loss as a function of BN layer i's output z: (loss, dloss/dz) through the rest of the model."""
        tail = nn.Sequential(model.layers[i + 1:])

        def loss(z):
            value, dout = self.loss_fn(tail.forward(z, "probe"), target)
            return value, tail.backward(dout)
        return loss

    def _outputs_and_grads(self, model, x, target):
        """Every layer's probe-mode output (``outputs[i]`` is layer i's input), the loss, and a copy
        of the parameter gradients of ``model.value_and_grad``."""
        outputs = [x]
        for layer in model:
            outputs.append(layer.forward(outputs[-1], "probe"))
        value = model.value_and_grad(self.loss_fn, x, target, mode="probe")
        grads = {(i, k): g.copy() for i, layer in enumerate(model) for k, g in layer.grads.items()}
        return outputs, value, grads

    def _measure(self, step, model, x, target, bns, optimizer):
        tally, src = self.tally, self.source
        acts, value, grads = self._outputs_and_grads(model, x, target)
        self.records["steps"].append(step)
        self.records["loss"].append(value)
        if not math.isfinite(value):     # a diverged network: nothing to check, recorded in the report
            return
        for i in bns:
            bn, weight = model[i], model[i - 1]
            gamma, beta = bn.params["gamma"], bn.params["beta"]
            y, C = acts[i], acts[i].shape[-1]
            downstream = self._downstream(model, i, target)
            units = sorted(self.rng.choice(C, min(C, self.units_per_layer), replace=False))
            check_bn_layer(tally, src, y, gamma, beta, downstream, units, self.rng, jacobian_rows=self.jacobian_rows,
                           where={"step": step, "layer": i})

            # Theorem 4.4 on the weight layer that feeds this BN layer
            W = weight.params["W"]
            patches = acts[i - 1] if W.ndim == 2 else conv_patches(weight, acts[i - 1])

            def downstream_rows(z2, shape=y.shape, downstream=downstream):
                v, d = downstream(z2.reshape(shape))
                return v, theory.rows(d)
            check_weight_layer(tally, src, patches, W.reshape(-1, C), gamma, beta, downstream_rows,
                               b=weight.params.get("b"), grad_W=grads[(i - 1, "W")].reshape(-1, C))
            check_scale_invariant_weight(tally, src, patches, W.reshape(-1, C), gamma, beta, downstream_rows,
                                         getattr(optimizer, "lr", 1.0), b=weight.params.get("b"),
                                         grad_W=grads[(i - 1, "W")].reshape(-1, C))

            # scale invariance on the whole network: W of layer i-1 times a
            a = float(10.0 ** self.rng.uniform(-1, 1))
            with model.snapshot():
                W *= a
                acts_a, value_a, grads_a = self._outputs_and_grads(model, x, target)
            others = [k for k in grads if k != (i - 1, "W")]
            xp = backend.array_module(W)
            flat = xp.concatenate([grads[k].ravel() for k in others])
            flat_a = xp.concatenate([grads_a[k].ravel() for k in others])
            gscale = float(abs(flat).max())
            tally.add("scale_invariance", src, max(
                theory.relative_error(acts_a[-1], acts[-1]),
                abs(value_a - value) / max(abs(value), theory.TINY),
                theory.relative_error(a * grads_a[(i - 1, "W")], grads[(i - 1, "W")]),
                theory.relative_error(flat_a, flat, gscale)))

            if step > 0:
                li = theory.lemma_4_5_identity(self.initial[i - 1], W)
                tally.add("lemma45_identity", src, abs(li["lhs"] - li["rhs"]) / li["scale"])
