"""The paper's Section 4 (and Appendix C) as functions of a layer's actual arrays.

Setup (docs/protocol.md §5, derivations in docs/theory.md), in the symbols of minibn's layers.
One weight layer x = h W (+ b) on a batch of m rows, then BatchNorm with **eps = 0** and
the **population** variance; for a unit (channel) j, with columns of length m:

    mu_j = 1^T x_j / m,   std_j^2 = var_j = ||x_j - mu_j 1||^2 / m,   x_hat_j = (x_j - mu_j 1) / std_j
    y_j = gamma_j x_hat_j + beta_j,    dy_j = dL/dy_j (the downstream gradient)
    P_j = I - 1 1^T / m - x_hat_j x_hat_j^T / m          (||x_hat_j||^2 = m)

(the paper writes y, y_hat, sigma, z, g_hat for x, x_hat, std, y, dy).

Every function returns the two sides of one statement: the side computed by minibn's
own layer code (``minibn.nn.batchnorm.forward_inplace``/``backward_inplace`` with eps = 0,
the pair BatchNorm trains with, and ``minibn.nn.dense.forward``/``backward``) and the side
the theory predicts, computed here from first principles (:func:`column_stats` recomputes
mu, std and x_hat). A check therefore fails if either the code or the statement is
wrong. Conv layers fit the same frame: channels-last makes every axis but the last a
batch axis, so a channel's "column" pools the N*H*W values of that channel (m = N*H*W),
and the conv is a Dense layer on the im2col patch matrix.

A *downstream loss* is a callable ``loss(y) -> (value, dL/dy)`` (a minibn loss with
its target bound, or the rest of a network); :func:`smooth_loss` builds random smooth
ones with exact Hessian-vector products. Relative errors are
``max|a - b| / max(max|a|, max|b|, scale)`` (:func:`relative_error`).
"""

import math

from minibn import backend, gradcheck
from minibn.nn import batchnorm, conv, dense
from minibn.nn.layer import Layer
from minibn.nn.losses import softmax_cross_entropy, squared_error
from minibn.nn.normalization import INVARIANCES
from minibn.nn.normalization import channel_rows as rows

TINY = 1e-300


def relative_error(a, b, scale=0.0):
    """max|a - b| / max(max|a|, max|b|, scale): 0 for equal arrays, ~1e-16 at float64 rounding."""
    xp = backend.array_module(a, b)
    a, b = xp.asarray(a), xp.asarray(b)
    diff = float(abs(a - b).max()) if a.size else 0.0
    size = max(float(abs(a).max()) if a.size else 0.0, float(abs(b).max()) if b.size else 0.0, float(scale), TINY)
    return diff / size


def conditioning(x):
    """max over channels of max|x_j| / std_j: how much float64 rounding the mean subtraction
    amplifies (errors of every BN quantity grow like this times 1e-16)."""
    _, std, _, _ = column_stats(x)
    return float((abs(rows(x)).max(axis=0) / std).max())


def column_stats(x):
    """First principles, per column of ``rows(x)``: (mu, std, x_hat, m) with the population std."""
    x = rows(x)
    m = x.shape[0]
    mu = x.sum(axis=0) / m
    centred = x - mu
    std = ((centred * centred).sum(axis=0) / m) ** 0.5
    return mu, std, centred / std, m


def bn_forward(x, gamma, beta):
    """minibn's BatchNorm forward with eps = 0 (batch statistics, as the layer trains): ``(y, cache)``."""
    return batchnorm.forward_inplace(x, gamma, beta, eps=0.0)


def bn_input_grad(x, gamma, beta, dy):
    """dL_hat/dx by minibn's BatchNorm backward (eps = 0) for the downstream gradient dy."""
    _, cache = bn_forward(x, gamma, beta)
    dx, _ = batchnorm.backward_inplace(dy, cache)
    return dx


def projection_grad(x, gamma, dy):
    """The theory's dL_hat/dx = (gamma/std) P dy = (gamma/(m std)) (m dy - 1<1,dy> - x_hat<dy,x_hat>)."""
    _, std, x_hat, m = column_stats(x)
    dy2 = rows(dy)
    dx = (gamma / (m * std)) * (m * dy2 - dy2.sum(axis=0) - x_hat * (dy2 * x_hat).sum(axis=0))
    return dx.reshape(dy.shape)


# --- BN's Jacobian ------------------------------------------------------------------

def bn_jacobian(x, gamma, beta, rows_idx=None, numeric=True):
    """dy_j/dx_j for every channel j, three ways, as arrays of shape (C, r, m):

    ``code``: row k of each channel's Jacobian is minibn's backward of the unit cotangent
    e_k (put in every channel at once: BN never mixes channels); ``numeric``: central
    differences of minibn's forward (gradcheck.numerical_jacobian), transposed to rows;
    ``theory``: (gamma/std) P. ``rows_idx`` (default all m) picks which rows k to build,
    for channels with many values (conv). Also ``annihilated``: max |code @ 1| and
    |code @ x_hat| relative to the rows' size (P 1 = P x_hat = 0), and when all rows are
    built ``idempotence``: relative error of (P_code)^2 = P_code, P_code = (std/gamma) code.
    """
    x2 = rows(x).copy()
    m, C = x2.shape
    xp = backend.array_module(x2)
    idx = list(range(m)) if rows_idx is None else [int(k) for k in rows_idx]
    _, std, x_hat, _ = column_stats(x2)
    _, cache = bn_forward(x2, gamma, beta)
    code = []
    for k in idx:
        unit = xp.zeros_like(x2)
        unit[k, :] = 1.0
        code.append(batchnorm.backward_inplace(unit, cache)[0])    # (m, C): row k of every channel
    code = xp.stack(code, axis=0).transpose(2, 0, 1)                 # (C, r, m)
    eye_rows = xp.eye(m, dtype=x2.dtype)[idx]                        # (r, m)
    x_hat_c = x_hat.T                                                # (C, m)
    P_rows = eye_rows[None] - 1.0 / m - x_hat_c[:, idx, None] * x_hat_c[:, None, :] / m
    theory = (gamma / std)[:, None, None] * P_rows
    out = {"code": code, "theory": theory, "m": m, "rows": idx}
    scale = float(abs(theory).max())
    probes = xp.stack([xp.ones_like(x_hat_c), x_hat_c], axis=2)      # (C, m, 2)
    out["annihilated"] = float(abs(code @ probes).max()) / max(scale * math.sqrt(m), TINY)
    if len(idx) == m:
        P_code = code * (std / gamma)[:, None, None]
        out["idempotence"] = relative_error(P_code @ P_code, P_code)
    if numeric:
        cols = []
        for j in range(C):
            sub = x2[idx, j].copy()
            work = x2.copy()

            def column_out(j=j, sub=sub, work=work):
                work[idx, j] = sub
                return bn_forward(work, gamma, beta)[0][:, j]
            cols.append(gradcheck.numerical_jacobian(column_out, sub, eps=1e-5 * float(std[j])).T)
        out["numeric"] = xp.stack(cols, axis=0)
    return out


# --- Theorem 4.1 --------------------------------------------------------------------

def theorem_4_1(x, gamma, beta, dy):
    """Per channel: ``lhs`` = ||dL_hat/dx_j||^2 from minibn's backward, ``rhs`` = the theorem's

        (gamma^2/std^2) (||dy||^2 - <1,dy>^2/m - <dy,x_hat>^2/m)      (equality),

    ``rhs_printed`` = the published form with 1/sqrt(m) on the last term, ``scale``
    = (gamma^2/std^2) ||dy||^2, the size the errors are measured against, and
    ``g_dot_yhat`` = <dy, x_hat> (the key keeps the paper's <g_hat, y_hat>).
    """
    _, std, x_hat, m = column_stats(x)
    dy2 = rows(dy)
    dx = rows(bn_input_grad(x, gamma, beta, dy))
    factor = gamma * gamma / (std * std)
    sq, s1, sx = (dy2 * dy2).sum(axis=0), dy2.sum(axis=0), (dy2 * x_hat).sum(axis=0)
    return {"lhs": (dx * dx).sum(axis=0),
            "rhs": factor * (sq - s1 * s1 / m - sx * sx / m),
            "rhs_printed": factor * (sq - s1 * s1 / m - sx * sx / math.sqrt(m)),
            "scale": factor * sq, "m": m, "g_dot_yhat": sx}


# --- Theorem 4.2 --------------------------------------------------------------------

def second_derivative(grad_fn, x, v, h):
    """d^2/dt^2 f(x + t v) at t = 0 from gradients: Richardson extrapolation of the central
    difference D(h) = <grad(x + h v) - grad(x - h v), v> / (2h). Returns (estimate, spread):
    the estimates from steps (h, h/2) and (h/2, h/4) differ by ``spread``, O(h^4) for a smooth
    f and O(1) when a kink (ReLU, max-pool) lies within the steps."""
    def D(step):
        return float(((grad_fn(x + step * v) - grad_fn(x - step * v)) * v).sum()) / (2.0 * step)
    d1, d2, d3 = D(h), D(h / 2), D(h / 4)
    r1, r2 = (4.0 * d2 - d1) / 3.0, (4.0 * d3 - d2) / 3.0
    return r2, abs(r2 - r1)


def theorem_4_2(x, gamma, beta, loss, j, hvp=None, rel_step=1e-3):
    """The proof's identity (eq. 50) for unit j, with g' = dL_hat/dx_j and H = d^2L/dy_j dy_j:

        g'^T (d^2 L_hat / dx_j dx_j) g' = (gamma^2/std^2) g'^T H g' - (gamma/(m std^2)) <dy, x_hat> ||g'||^2

    ``lhs``: second derivative of L_hat(x) = loss(BN(x)) along g', from gradients of minibn's
    BN forward/backward (:func:`second_derivative`); ``rhs`` from H g' (``hvp(y, v)`` when
    given, else differences of the loss gradient in y) and first-principles statistics.
    Also ``curvature_term``, ``mean_term`` (the two terms of rhs), ``scale`` (their absolute
    sum) and ``spread`` (finite-difference consistency, relative to scale).
    """
    x = x.copy()
    _, std, x_hat, m = column_stats(x)
    y, _ = bn_forward(x, gamma, beta)
    _, dy = loss(y)

    def grad_L_hat(xx):
        return bn_input_grad(xx, gamma, beta, loss(bn_forward(xx, gamma, beta)[0])[1])

    g_prime = backend.array_module(x).zeros_like(x)
    g_prime[..., j] = grad_L_hat(x)[..., j]
    norm2 = float((g_prime * g_prime).sum())
    dy_dot_x_hat = float((rows(dy)[:, j] * x_hat[:, j]).sum())
    gam, sd = float(gamma[j]), float(std[j])
    if norm2 == 0.0:
        return {"lhs": 0.0, "rhs": 0.0, "curvature_term": 0.0, "mean_term": 0.0, "scale": 0.0, "spread": 0.0}
    v = g_prime / math.sqrt(norm2)
    lhs, spread_x = second_derivative(grad_L_hat, x, v, rel_step * sd * math.sqrt(m))
    lhs *= norm2
    if hvp is not None:
        quad, spread_y = float((g_prime * hvp(y, g_prime)).sum()), 0.0
    else:
        y_rms = math.sqrt(float((y[..., j] * y[..., j]).sum()) / m) or 1.0
        quad, spread_y = second_derivative(lambda yy: loss(yy)[1], y, v, rel_step * y_rms * math.sqrt(m))
        quad, spread_y = quad * norm2, spread_y * norm2
    curvature = gam * gam / (sd * sd) * quad
    mean_term = gam / (m * sd * sd) * dy_dot_x_hat * norm2
    scale = abs(curvature) + abs(mean_term)
    spread = (spread_x * norm2 + gam * gam / (sd * sd) * spread_y) / max(scale, TINY)
    return {"lhs": lhs, "rhs": curvature - mean_term, "curvature_term": curvature, "mean_term": mean_term,
            "scale": scale, "spread": spread}


# --- Observation 4.3 ----------------------------------------------------------------

def observation_4_3(x):
    """minibn's BN forward with gamma = std, beta = mu (eps = 0): its output should equal its
    input. Returns ``{"z": output, "y": input}`` (the keys keep the paper's z = BN(y))."""
    mu, std, _, _ = column_stats(x)
    y, _ = bn_forward(x, std, mu)
    return {"z": y, "y": x}


# --- Theorem 4.4 --------------------------------------------------------------------

def theorem_4_4(h, W, gamma, beta, loss, b=None, grad_W=None):
    """The weight gradient of Dense -> BN -> loss (h: (m, d) inputs or a conv's patch matrix,
    x = h W + b the BN's input).

    ``code``: dL_hat/dW from minibn's Dense backward of its BN backward (columns = units j);
    ``chain``: the theory's h^T (gamma/std) P dy from first principles; ``model``: a
    caller's ``grad_W`` (e.g. a trained network's Conv2d gradient reshaped to (d, C)) if
    given. Per unit: ``lhs`` = ||dL_hat/dW_j||^2 and ``bound`` = lambda^2 (gamma^2/std^2)
    (||dy||^2 - <1,dy>^2/m - <dy,x_hat>^2/m) with lambda = ||h||_2, so lhs <= bound.
    """
    x, dense_cache = dense.forward(h, W, b)
    y, bn_cache = bn_forward(x, gamma, beta)
    _, dy = loss(y)
    dx, _ = batchnorm.backward_inplace(dy, bn_cache)
    _, grads = dense.backward(dx, dense_cache)
    lam = spectral_norm(h)
    thm41 = theorem_4_1(x, gamma, beta, dy)
    code = grads["W"]
    out = {"code": code, "chain": h.T @ projection_grad(x, gamma, dy), "lam": lam,
           "lhs": (code * code).sum(axis=0), "bound": lam * lam * thm41["rhs"],
           "bound_scale": lam * lam * thm41["scale"], "grad_scale": math.sqrt(float(thm41["scale"].max())) * lam}
    if grad_W is not None:
        out["model"] = grad_W
    return out


def spectral_norm(h):
    """||h||_2, the largest singular value (lambda of Theorem 4.4)."""
    xp = backend.array_module(h)
    return float(xp.linalg.svd(h, compute_uv=False)[0])


# --- Lemma 4.5 ----------------------------------------------------------------------

def lemma_4_5_identity(W0, W_star):
    """With k = <W*, W0>/||W*||^2: ``lhs`` = ||W0 - k W*||^2, ``rhs`` = ||W0 - W*||^2 - (||W*||^2 - <W*,W0>)^2/||W*||^2,
    ``scale`` = the sum of the magnitudes of rhs's terms."""
    a = float((W_star * W_star).sum())
    b = float((W_star * W0).sum())
    k = b / a
    d = W0 - k * W_star
    e = W0 - W_star
    far = float((e * e).sum())
    return {"lhs": float((d * d).sum()), "rhs": far - (a - b) ** 2 / a, "k": k, "scale": far + (a - b) ** 2 / a}


def bn_neuron(h, w, gamma, beta, t):
    """One neuron without bias, BN (eps = 0), identity activation, summed squared error, all by
    minibn's code: (loss, dL/dw, dL/dgamma, dL/dbeta)."""
    x, dense_cache = dense.forward(h, w)
    y, bn_cache = bn_forward(x, gamma, beta)
    loss, dy = squared_error(y, t, reduction="sum")
    dx, bn_grads = batchnorm.backward_inplace(dy, bn_cache)
    _, dense_grads = dense.backward(dx, dense_cache)
    return loss, dense_grads["W"], bn_grads["gamma"], bn_grads["beta"]


def best_affine(x, t):
    """The (gamma, beta) minimizing ||gamma x_hat + beta - t||^2 for x's normalized column: the
    least-squares fit beta = mean(t), gamma = <t, x_hat>/m (x_hat is centred with ||x_hat||^2 = m)."""
    _, _, x_hat, m = column_stats(x)
    tt = rows(t)
    return (tt * x_hat).sum(axis=0) / m, tt.sum(axis=0) / m


def lemma_4_5_premise(h, t, ks=(0.5, 1.0, 2.0)):
    """Does k W* (W* an optimum of the standard network) optimize the BN network?

    One neuron x = h w (no bias), identity activation, summed squared error against t.
    Standard network: w* solves the normal equations h^T h w = h^T t. BN network: the
    same neuron followed by BN (eps = 0) with trainable gamma, beta. At (k w*, gamma,
    beta), gamma and beta are stationary only at the least-squares fit (:func:`best_affine`);
    there the BN gradient in w is reported for each k (scale invariance makes it 1/k times
    the k = 1 value). The BN network's optimal weights are the multiples of the slope
    a of the least-squares fit t ~ h a + c with an intercept, and its optimal loss is that
    fit's residual. The premise holds for the instance iff w* is parallel to a.

    Also the lemma's inequality at the initialization W0 = w*: ``lemma_rhs`` is 0 there,
    and ``lemma_lhs`` = squared distance from W0 to the closest BN optimum (the line of a).
    """
    xp = backend.array_module(h, t)
    m, d = h.shape
    tt = t.reshape(m, 1)
    w_star = xp.linalg.solve(h.T @ h, h.T @ tt)                               # (d, 1)
    x_star, cache = dense.forward(h, w_star)
    std_loss, dpred = squared_error(x_star, tt, reduction="sum")
    std_grad = dense.backward(dpred, cache)[1]["W"]
    design = xp.concatenate([h, xp.ones((m, 1), dtype=h.dtype)], axis=1)
    coef = xp.linalg.lstsq(design, tt, rcond=None)[0]
    slope = coef[:d]
    gamma_opt, beta_opt = best_affine(h @ slope, tt)
    bn_opt_loss, bn_opt_gw, bn_opt_gg, bn_opt_gb = bn_neuron(h, slope, gamma_opt, beta_opt, tt)
    at_k = []
    for k in ks:
        gamma, beta = best_affine(h @ (k * w_star), tt)
        loss, gw, gg, gb = bn_neuron(h, k * w_star, gamma, beta, tt)
        at_k.append({"k": float(k), "gamma": float(gamma[0]), "beta": float(beta[0]), "bn_loss": loss,
                     "grad_w_norm": float(xp.sqrt((gw * gw).sum())),
                     "grad_gamma_beta": max(abs(float(gg[0])), abs(float(gb[0])))})
    proj = float((w_star * slope).sum()) / float((slope * slope).sum())
    gap = w_star - proj * slope
    parallel = relative_error(w_star, proj * slope)
    return {"x": h, "t": t, "w_star": w_star[:, 0], "standard_loss": std_loss,
            "standard_grad_norm": float(xp.sqrt((std_grad * std_grad).sum())),
            "bn_opt_w": slope[:, 0], "bn_opt_gamma": float(gamma_opt[0]), "bn_opt_beta": float(beta_opt[0]),
            "bn_opt_loss": bn_opt_loss,
            "bn_opt_grad_norm": float(xp.sqrt((bn_opt_gw * bn_opt_gw).sum() + bn_opt_gg[0] ** 2 + bn_opt_gb[0] ** 2)),
            "at_k_w_star": at_k, "lemma_lhs": float((gap * gap).sum()), "lemma_rhs": 0.0,
            "w_star_vs_bn_direction": parallel,
            "premise_holds": parallel < 1e-9 and at_k[0]["bn_loss"] <= bn_opt_loss + 1e-9 * (1.0 + abs(bn_opt_loss))}


def lemma_4_5_counterexample(xp=None):
    """The documented instance: h = [[1,0],[0,1],[1,1]], t = [1,2,4] (three points, one neuron,
    identity activation). Exactly: w* = (4/3, 7/3) with standard loss 1/3; the best BN loss on
    the ray k w* is 2/37 for every k > 0; the BN optimum is the ray of (2, 3) with loss 0; and
    at W0 = w* the lemma claims 4/117 <= 0."""
    xp = backend.get(xp or "numpy")
    h = xp.asarray([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    t = xp.asarray([1.0, 2.0, 4.0])
    out = lemma_4_5_premise(h, t)
    out["exact"] = {"w_star": [4 / 3, 7 / 3], "standard_loss": 1 / 3, "bn_loss_on_ray": 2 / 37,
                    "bn_opt_w_direction": [2.0, 3.0], "bn_opt_loss": 0.0, "lemma_lhs": 4 / 117, "lemma_rhs": 0.0}
    return out


# --- Scale invariance ---------------------------------------------------------------

def scale_invariance(h, W, gamma, beta, loss, a, b=None):
    """Dense -> BN (eps = 0) -> loss at W and at a W (a > 0), by minibn's code: the BN outputs
    ``z``/``z_scaled`` (equal; the keys keep the paper's z), ``loss``/``loss_scaled`` (equal),
    ``grad_W`` and ``a * grad_W_scaled`` (equal: the gradient scales as 1/a), and ``grad_scale``
    = ||h||_2 max_j (|gamma_j|/std_j) ||dy_j||, the size of the gradient's bound (Theorem 4.4)
    that errors are measured against."""
    out = {}
    for tag, s in (("", 1.0), ("_scaled", float(a))):
        x, dense_cache = dense.forward(h, s * W, b)
        y, bn_cache = bn_forward(x, gamma, beta)
        value, dy = loss(y)
        dx, _ = batchnorm.backward_inplace(dy, bn_cache)
        out["z" + tag], out["loss" + tag] = y, value
        out["grad_W" + tag] = dense.backward(dx, dense_cache)[1]["W"]
        if not tag:
            r = theorem_4_1(x, gamma, beta, dy)
            out["grad_scale"] = spectral_norm(h) * math.sqrt(float(r["scale"].max()))
    out["a_grad_W_scaled"] = float(a) * out["grad_W_scaled"]
    return out


# --- Scale-invariant weights (Arora, Li, Lyu, ICLR 2019; beyond the paper) -------------

def weight_gradient_orthogonality(h, W, gamma, beta, loss, b=None, grad_W=None):
    """A weight feeding BN (eps = 0) has its gradient orthogonal to it, unit by unit: BN(x) is
    invariant to x_j -> a x_j (a > 0), so L(a W_j) is constant in a and its derivative at a = 1,
    <dL/dW_j, W_j>, is 0. Dense -> BN -> loss by minibn's code: per unit j ``inner`` =
    <dL_hat/dW_j, W_j> and ``scale`` = ||W_j|| lambda (|gamma_j|/std_j) ||dy_j||, the size the inner
    product is measured against (Theorem 4.4's bound on ||dL_hat/dW_j|| without its projection,
    lambda = ||h||_2: a gradient that is zero up to rounding is not measured against itself); with a
    caller's ``grad_W`` (a trained network's gradient as (d, C)) also ``inner_model`` for it.
    ``grad_W_code`` is the gradient computed here, ``grad_bound`` the bound per unit."""
    xp = backend.array_module(W)
    x, dense_cache = dense.forward(h, W, b)
    y, bn_cache = bn_forward(x, gamma, beta)
    _, dy = loss(y)
    dx, _ = batchnorm.backward_inplace(dy, bn_cache)
    g = dense.backward(dx, dense_cache)[1]["W"]
    bound = spectral_norm(h) * xp.sqrt(theorem_4_1(x, gamma, beta, dy)["scale"])
    out = {"inner": (g * W).sum(axis=0), "scale": xp.sqrt((W * W).sum(axis=0)) * bound, "grad_bound": bound,
           "grad_W_code": g}
    if grad_W is not None:
        out["inner_model"] = (grad_W * W).sum(axis=0)
    return out


def gd_norm_growth(W, grad_W, lr, grad_bound=None):
    """One plain GD step W' = W - lr g (no momentum, no weight decay) on a weight whose gradient is
    orthogonal to it grows its norm exactly as ||W'||^2 = ||W||^2 + lr^2 ||g||^2 (Arora et al.'s
    eq. for the effective learning rate lr / ||W||^2), unit by unit: ``lhs`` = ||W'_j||^2 computed
    from the stepped weight, ``rhs`` = ||W_j||^2 + lr^2 ||g_j||^2, and ``scale`` = (||W_j|| + lr
    b_j)^2, the most ||W'_j||^2 can be for a gradient bounded by b_j = ``grad_bound`` (default
    ||g_j||): the size a difference is measured against."""
    xp = backend.array_module(W)
    stepped = W - lr * grad_W
    norm_W, norm_g = xp.sqrt((W * W).sum(axis=0)), xp.sqrt((grad_W * grad_W).sum(axis=0))
    bound = norm_g if grad_bound is None else grad_bound
    return {"lhs": (stepped * stepped).sum(axis=0), "rhs": norm_W ** 2 + lr * lr * norm_g ** 2,
            "scale": (norm_W + lr * bound) ** 2}


# --- Smooth downstream losses with exact Hessian-vector products ----------------------

SMOOTH_LOSSES = ("quadratic_softplus", "logcosh_readout", "softmax_readout")


def _softplus(u, xp):
    return xp.maximum(u, 0.0) + xp.log1p(xp.exp(-abs(u)))


def _sigmoid(u, xp):
    e = xp.exp(-abs(u))
    return xp.where(u >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def smooth_loss(kind, shape, rng=None, xp=None, dtype="float64"):
    """A random smooth downstream loss on y (BN's output) of ``shape`` (m, C) with a non-trivial
    Hessian: ``(loss, hvp)``, loss(y) -> (value, dL/dy), hvp(y, v) -> (d^2L/dy^2) v exactly.

    - "quadratic_softplus": L = y^T A y / 2 + sum c * softplus(y) over vec(y), A symmetric
      (indefinite), c > 0; H = A + diag(c s (1 - s)), s = sigmoid(y).
    - "logcosh_readout": u = y V - T, L = sum log cosh(u); dL/dy = tanh(u) V^T,
      H v = ((1 - tanh(u)^2) * (v V)) V^T.
    - "softmax_readout": L = softmax cross-entropy of y V (mean over rows, minibn's loss);
      with p = softmax(y V) and q = v V: H v = ((p q - p <p, q>_row) / m) V^T.
    """
    xp = backend.get(xp or "numpy")
    rng = backend.rng(rng)
    m, C = shape

    def dev(a):
        return backend.to_device(a.astype(dtype), xp)

    if kind == "quadratic_softplus":
        n = m * C
        B = rng.standard_normal((n, n)) / math.sqrt(n)
        A, c = dev((B + B.T) / 2.0), dev(rng.uniform(0.5, 2.0, size=(m, C)))

        def loss(y):
            flat = y.reshape(-1)
            value = 0.5 * float(flat @ (A @ flat)) + float((c * _softplus(y, xp)).sum())
            return value, (A @ flat).reshape(y.shape) + c * _sigmoid(y, xp)

        def hvp(y, v):
            s = _sigmoid(y, xp)
            return (A @ v.reshape(-1)).reshape(y.shape) + c * s * (1.0 - s) * v
        return loss, hvp
    k = int(rng.integers(2, 6))
    V = dev(rng.standard_normal((C, k)) / math.sqrt(C))
    if kind == "logcosh_readout":
        T = dev(rng.standard_normal((m, k)))

        def loss(y):
            u = y @ V - T
            value = float((abs(u) + xp.log1p(xp.exp(-2.0 * abs(u))) - math.log(2.0)).sum())
            return value, xp.tanh(u) @ V.T

        def hvp(y, v):
            th = xp.tanh(y @ V - T)
            return ((1.0 - th * th) * (v @ V)) @ V.T
        return loss, hvp
    if kind == "softmax_readout":
        labels = xp.asarray(rng.integers(0, k, size=m))

        def loss(y):
            value, dlogits = softmax_cross_entropy(y @ V, labels)
            return value, dlogits @ V.T

        def hvp(y, v):
            logits = y @ V
            e = xp.exp(logits - logits.max(axis=1, keepdims=True))
            p = e / e.sum(axis=1, keepdims=True)
            q = v @ V
            return ((p * q - p * (p * q).sum(axis=1, keepdims=True)) / m) @ V.T
        return loss, hvp
    raise ValueError(f"smooth_loss: kind must be one of {SMOOTH_LOSSES}, got {kind!r}")


# --- Any normalizer: scale invariance and the Jacobian's projection structure -----------------

def normalizer_functions(norm):
    """``(forward(x) -> y, vjp(x, dys) -> [dx, ...])`` of a normalizer given as a :class:`Layer`
    (run in probe mode: batch statistics, and the layer left as it was) or as a pair
    ``(forward(x) -> (y, cache), backward(dy, cache) -> dx or (dx, grads))``, a functional core
    with its parameters bound (``(lambda x: batchnorm.forward(x, gamma, beta, 0.0), batchnorm.backward)``)."""
    if isinstance(norm, Layer):
        def forward(x):
            with norm.snapshot():
                return norm.forward(x, "probe")

        def vjp(x, dys):
            with norm.snapshot():
                norm.forward(x, "probe")
                return [norm.backward(dy) for dy in dys]
        return forward, vjp
    if isinstance(norm, (tuple, list)) and len(norm) == 2 and all(map(callable, norm)):
        core_forward, core_backward = norm

        def vjp(x, dys):
            _, cache = core_forward(x)
            out = [core_backward(dy, cache) for dy in dys]
            return [dx[0] if isinstance(dx, tuple) else dx for dx in out]
        return (lambda x: core_forward(x)[0]), vjp
    raise TypeError(f"theory: a normalizer is a minibn Layer or a pair (forward, backward) of callables, "
                    f"got {type(norm).__name__}")


def normalizer_scale_invariance(norm, x, dy=None, scales=(0.5, 2.0, 10.0), seed=0):
    """Is the normalizer ``norm`` (a Layer or a forward/backward pair, :func:`normalizer_functions`)
    invariant to a positive rescaling of its input, as BatchNorm with eps = 0 is?

    For each a of ``scales`` (a number, or an array broadcasting against x such as one positive
    scale per channel): ``output`` = relative_error(y(a x), y(x)), and ``grad`` =
    relative_error(a dL/dx(a x), dL/dx(x)) for the downstream gradient ``dy`` (random when None),
    since the input gradient of a scale-invariant map scales as 1/a. Both are ~1e-16 for
    BatchNorm with eps = 0; eps > 0 breaks the invariance by about eps / var. Also
    ``max_output_error`` and ``max_grad_error`` over the scales.
    """
    forward, vjp = normalizer_functions(norm)
    xp = backend.array_module(x)
    y = forward(x)
    if dy is None:  # not rng(seed): an input drawn with the same seed would make dy a multiple of x
        dy = backend.to_device(backend.rng([seed, 1]).standard_normal(y.shape), xp).astype(y.dtype)
    dx = vjp(x, [dy])[0]
    out = {"scales": list(scales), "output": [], "grad": []}
    for a in scales:
        if float(xp.asarray(a).min()) <= 0:
            raise ValueError(f"normalizer_scale_invariance: scales must be positive, got {a!r}")
        out["output"].append(relative_error(forward(a * x), y))
        out["grad"].append(relative_error(a * vjp(a * x, [dy])[0], dx))
    out["max_output_error"], out["max_grad_error"] = max(out["output"]), max(out["grad"])
    return out


def invariance_scale(invariance, shape, rng, groups=1, low=0.1, high=10.0):
    """A random positive scale (uniform in [low, high]) of the group that ``invariance`` names
    (:data:`minibn.nn.normalization.INVARIANCES`), a host array broadcasting against an array of
    ``shape``: "per channel" and "per unit", one per entry of the last axis (a channel of a
    channels-last input; an output unit of a weight); "per sample", one per sample (the first
    axis); "per sample and group", one per sample and group of ``shape[-1] // groups``
    consecutive channels."""
    n, c, ndim = shape[0], shape[-1], len(shape)
    if invariance in ("per channel", "per unit"):
        return rng.uniform(low, high, size=c)
    if invariance == "per sample":
        return rng.uniform(low, high, size=(n,) + (1,) * (ndim - 1))
    if invariance == "per sample and group":
        per_group = backend.host.repeat(rng.uniform(low, high, size=(n, groups)), c // groups, axis=1)
        return per_group.reshape(n, *(1,) * (ndim - 2), c)
    raise ValueError(f"invariance_scale: invariance must be one of {INVARIANCES}, got {invariance!r}")


def invariance_case(entry, x, rng, **options):
    """What the scale invariance of a registered normalizer (``entry``, a
    :class:`~minibn.nn.normalization.Normalizer`) is checked on, at a float64 input x of shape (N, C)
    or (N, H, W, C): ``(norm, u, local)``, so that ``normalizer_scale_invariance(norm, u,
    scales=(a, local))`` checks the entry's ``invariance`` fact.

    A normalizer the entry inserts: ``norm`` is ``entry.make(C, rng=rng, dtype="float64", eps=0.0,
    **options)`` on x's backend, and u is x. A reparametrization of the weights (``"per unit"``):
    ``norm`` is the map from the direction ``v`` of ``entry.reparametrize`` applied to a Dense (a
    2-D x) or a Conv2d (a 4-D x) of C outputs to its output at x, through the layer's
    ``apply``/``apply_backward`` in probe mode, and u is v. The parameters get random magnitudes in
    [0.5, 2] with random signs; ``local`` is :func:`invariance_scale` of the entry's invariance
    for u (the groups of a GroupNorm its ``num_groups``), on x's backend.
    """
    if entry.invariance is None:
        raise ValueError(f"invariance_case: the normalizer {entry.name!r} states no scale invariance")
    xp = backend.array_module(x)
    on, c = backend.name_of(xp), x.shape[-1]
    if entry.reparametrize is not None:
        weights = (dense.Dense(c, c, rng=rng, dtype="float64") if x.ndim == 2 else
                   conv.Conv2d(c, c, (min(2, x.shape[1]), min(2, x.shape[2])), rng=rng, dtype="float64"))
        layer = entry.reparametrize(weights)
    else:
        layer = entry.make(c, rng=rng, dtype="float64", eps=0.0, **options)
    params = {k: backend.to_device(rng.uniform(0.5, 2.0, size=p.shape) * rng.choice([-1.0, 1.0], size=p.shape), on)
              for k, p in layer.params.items()}
    layer.to(on)
    if entry.reparametrize is None:
        for k, p in params.items():
            layer.params[k][...] = p
        norm, u = layer, x
    else:
        def forward(v):
            return layer.apply({**params, "v": v}, x, "probe")

        def backward(dy, cache):
            return layer.apply_backward(dy, cache)[1]["v"]
        norm, u = (forward, backward), params["v"]
    local = invariance_scale(entry.invariance, u.shape, rng, groups=getattr(layer, "num_groups", 1))
    return norm, u, backend.to_device(local, on)


def normalizer_projection(norm, x, pooled_view=None, numeric=True):
    """The Jacobian of the normalizer ``norm`` (a Layer or a forward/backward pair) at x, and how
    far it is from BatchNorm's structure: per column j of the pooled view (the values that share
    one statistic; :func:`channel_rows` unless ``pooled_view`` or the layer's ``pooled_view`` says
    otherwise), J_j = dy_j/dx_j is (gamma/std) P with P the orthogonal projection that removes
    1 and x_hat (docs/theory.md).

    Built from ``m x C`` backward passes (row k = the backward of the unit cotangent e_k), so x
    must be small. Returns ``jacobian`` (x.size, x.size), ``m``, and arrays over columns:
    ``ones`` = ||J_j 1|| / (||J_j||_F ||1||) (0: blind to a shift of the column),
    ``input`` = ||J_j x_j|| / (||J_j||_F ||x_j||) (0: blind to a rescaling, what scale invariance
    implies), ``symmetric`` = relative_error(J_j, J_j^T), ``idempotent`` =
    relative_error(J_j J_j, s_j J_j) with ``scale`` s_j = tr(J_j J_j)/tr(J_j) (J_j = s_j P for a
    projection P; BatchNorm's s_j is gamma_j/std_j), ``rank`` (BatchNorm's: m - 2); and
    ``cross_column`` = max|dy_i/dx_l| over i, l in different columns relative to max|J| (0: the
    columns are normalized independently). With ``numeric``, ``numeric`` = relative_error of J
    against central differences of the forward (a check of the backward itself).
    """
    forward, vjp = normalizer_functions(norm)
    xp = backend.array_module(x)
    n = x.size
    if n > 1024:
        raise ValueError(f"normalizer_projection: the Jacobian takes one backward per value of x, so x may hold at "
                         f"most 1024 values; got shape {tuple(x.shape)}")
    x = xp.ascontiguousarray(x).copy()
    eye = xp.eye(n, dtype=x.dtype)
    J = xp.stack([dx.ravel() for dx in vjp(x, [eye[k].reshape(x.shape) for k in range(n)])], axis=0)
    view = pooled_view or getattr(norm, "pooled_view", rows)
    columns = view(xp.arange(n).reshape(x.shape))                    # (m, C): flat indices of each column
    m, C = columns.shape
    column_of = xp.empty(n, dtype=columns.dtype)
    column_of[columns.ravel()] = xp.tile(xp.arange(C, dtype=columns.dtype), m)
    top = max(float(abs(J).max()), TINY)
    apart = column_of[:, None] != column_of[None, :]
    out = {"jacobian": J, "m": m, "cross_column": float(abs(J[apart]).max()) / top if C > 1 else 0.0}
    stats = {k: [] for k in ("ones", "input", "symmetric", "idempotent", "scale", "rank")}
    flat = x.ravel()
    for j in range(C):
        idx = columns[:, j]
        Jj, xj, ones = J[idx][:, idx], flat[idx], xp.ones(m, dtype=x.dtype)
        size = max(float(xp.sqrt((Jj * Jj).sum())), TINY)
        stats["ones"].append(float(xp.linalg.norm(Jj @ ones)) / (size * math.sqrt(m)))
        stats["input"].append(float(xp.linalg.norm(Jj @ xj)) / (size * max(float(xp.linalg.norm(xj)), TINY)))
        stats["symmetric"].append(relative_error(Jj, Jj.T))
        trace = float(xp.trace(Jj))
        s = float((Jj * Jj.T).sum()) / trace if trace else math.nan
        stats["scale"].append(s)
        stats["idempotent"].append(relative_error(Jj @ Jj, s * Jj) if trace else math.nan)
        sv = xp.linalg.svd(Jj, compute_uv=False)
        stats["rank"].append(int((sv > 1e-9 * float(sv[0])).sum()) if float(sv[0]) > 0 else 0)
    out.update({k: backend.host.asarray(v) for k, v in stats.items()})
    if numeric:
        out["numeric"] = relative_error(gradcheck.numerical_jacobian(lambda: forward(x), x), J)
    return out
