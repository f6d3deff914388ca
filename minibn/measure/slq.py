"""The Hessian's eigenvalue density by stochastic Lanczos quadrature (SLQ; Ghorbani, Krishnan,
Xiao, ICML 2019; Lin, Saad, Yang 2016), on exact Hessian-vector products (beyond the paper).

For a symmetric n x n matrix H with eigenpairs (lambda_i, q_i), the spectral density is
phi(t) = (1/n) sum_i delta(t - lambda_i). For a probe v of unit norm,

    v^T f(H) v = sum_i (q_i^T v)^2 f(lambda_i),

and ``steps`` = k Lanczos steps from v build the tridiagonal T_k = Q^T H Q (alpha on the
diagonal, beta beside it, Q the orthonormal Krylov basis) whose eigenpairs (theta_j, s_j) give
the Gauss quadrature of that sum: nodes theta_j, weights tau_j = s_j[0]^2 (sum_j tau_j = 1),
exact for every polynomial f of degree <= 2k - 1. With Gaussian probes, E[v v^T] = I/n, so
sum_j tau_j f(theta_j) is an unbiased estimate of (1/n) tr f(H); averaged over ``probes``
probes and smoothed by a Gaussian kernel of width sigma,

    phi_sigma(t) = (1/probes) sum_probes sum_j tau_j exp(-(t - theta_j)^2 / (2 sigma^2)) / (sigma sqrt(2 pi)),

a density of integral 1 whose mean is the estimate of tr(H)/n and whose second moment is the
estimate of tr(H^2)/n plus sigma^2. The largest node is Lanczos' estimate of lambda_max (it
converges first, from below); outliers far above the bulk show as isolated nodes of weight
about 1/n.

Choices where the papers are silent or differ (docs/sharpness.md):

* full re-orthogonalization of every new Lanczos vector against the basis (twice, classical
  Gram-Schmidt), so no ghost copies of converged eigenvalues appear: O(n k) memory and
  O(n k^2) work, small beside k products on the networks measured here;
* a step whose beta falls below 1e-10 times the largest |alpha| or beta so far ends the run for
  that probe (the Krylov space is exhausted: n < k on a small network);
* sigma = ``sigma_rel`` (default 0.01) times the width of the node range, over all probes;
  the grid spans the nodes plus 8 sigma on each side (the kernel mass beyond is below 1e-15);
* ``mode="train"``: the Hessian of the train-mode loss (batch statistics; the instruments'
  probe mode), ``"eval"``: of the eval-mode loss (running statistics, what PyHessian measures).

Cost: ``probes * steps`` Hessian-vector products (fewer where the space is exhausted), plus
one gradient at setup; ``hvps`` in the result counts them.
"""

import math

from minibn import backend
from minibn.measure import json_float
from minibn.measure.hessian import DEFAULT_EPS, HessianOperator

MODES = {"train": "probe", "eval": "eval"}
BREAKDOWN = 1e-10


def lanczos(matvec, v0, steps):
    """``(alpha, beta)`` of ``steps`` Lanczos steps from v0 (fewer when the space is exhausted),
    with full re-orthogonalization: T = tridiag(beta, alpha, beta) = Q^T H Q, Q[:, 0] = v0/||v0||."""
    xp = backend.array_module(v0)
    q = v0 / xp.linalg.norm(v0)
    basis = xp.empty((steps, q.size), dtype=q.dtype)
    alpha, beta = [], []
    for j in range(steps):
        basis[j] = q
        w = matvec(q)
        alpha.append(float(xp.vdot(q, w)))
        for _ in range(2):  # classical Gram-Schmidt, twice: orthogonal to working precision
            w = w - basis[:j + 1].T @ (basis[:j + 1] @ w)
        b = float(xp.linalg.norm(w))
        scale = max(max(abs(a) for a in alpha), max(beta, default=0.0))
        if j == steps - 1 or not math.isfinite(b) or b <= BREAKDOWN * scale:
            break
        beta.append(b)
        q = w / b
    return alpha, beta


def gauss_quadrature(alpha, beta):
    """``(nodes, weights)``: the eigenvalues theta_j of the tridiagonal T and tau_j = s_j[0]^2."""
    np = backend.host
    T = np.diag(np.asarray(alpha, dtype="float64"))
    if beta:
        off = np.asarray(beta, dtype="float64")
        T += np.diag(off, 1) + np.diag(off, -1)
    nodes, vectors = np.linalg.eigh(T)
    return nodes, vectors[0] ** 2


def smoothed_density(nodes, weights, grid, sigma):
    """phi_sigma on ``grid`` (host arrays): the probes' quadratures averaged, each node a Gaussian."""
    np = backend.host
    nodes, weights, grid = (np.asarray(a, dtype="float64") for a in (nodes, weights, grid))
    kernel = np.exp(-0.5 * ((grid[:, None] - nodes[None, :]) / sigma) ** 2) / (sigma * math.sqrt(2 * math.pi))
    return kernel @ weights


def spectral_density(model, loss_fn, x, target, *, steps=90, probes=4, mode="train", sigma_rel=0.01, grid=1000,
                     seed=0, eps=DEFAULT_EPS, product="auto"):
    """The Hessian's eigenvalue density by SLQ (module docstring) at the model's parameters.

    ``x``, ``target``: a batch, or lists of chunks (:class:`~minibn.measure.hessian.HessianOperator`).
    Returns ``{"mode", "steps", "probes", "hvps", "sigma", "nodes", "weights", "grid", "density",
    "lambda_max", "lambda_min", "moment1", "moment2"}``: per probe its nodes and weights, the
    smoothed density on ``grid`` points, the largest and smallest node over the probes, and the
    quadrature's estimates of tr(H)/n and tr(H^2)/n (averaged over the probes, without sigma).
    A non-finite product ends the measurement with ``None`` values.
    """
    if mode not in MODES:
        raise ValueError(f"spectral_density: mode must be one of {tuple(MODES)}, got {mode!r}")
    for name, value in (("steps", steps), ("probes", probes), ("grid", grid)):
        if int(value) != value or value < (2 if name == "grid" else 1):
            raise ValueError(f"spectral_density: {name} must be a positive integer, got {value!r}")
    if not sigma_rel > 0:
        raise ValueError(f"spectral_density: sigma_rel must be positive, got {sigma_rel!r}")
    np = backend.host
    rng = backend.rng(seed)
    nodes, weights = [], []
    with HessianOperator(model, loss_fn, x, target, eps=eps, product=product, mode=MODES[mode]) as op:
        for _ in range(int(probes)):
            alpha, beta = lanczos(op.matvec, op.random_vector(rng), min(int(steps), op.size))
            if not all(math.isfinite(a) for a in alpha):
                return _nonfinite(mode, steps, probes, op.hvps)
            theta, tau = gauss_quadrature(alpha, beta)
            nodes.append(theta)
            weights.append(tau)
        hvps = op.hvps
    every = np.concatenate(nodes)
    lo, hi = float(every.min()), float(every.max())
    sigma = sigma_rel * max(hi - lo, abs(hi), 1e-300)
    points = np.linspace(lo - 8 * sigma, hi + 8 * sigma, int(grid))
    density = smoothed_density(every, np.concatenate(weights) / len(nodes), points, sigma)
    m1 = float(np.mean([(t * w).sum() for t, w in zip(nodes, weights)]))
    m2 = float(np.mean([(t ** 2 * w).sum() for t, w in zip(nodes, weights)]))
    return {"mode": mode, "steps": int(steps), "probes": int(probes), "hvps": hvps, "sigma": sigma,
            "nodes": [t.tolist() for t in nodes], "weights": [w.tolist() for w in weights],
            "grid": points.tolist(), "density": density.tolist(), "lambda_max": hi, "lambda_min": lo,
            "moment1": json_float(m1), "moment2": json_float(m2)}


def _nonfinite(mode, steps, probes, hvps):
    return {"mode": mode, "steps": int(steps), "probes": int(probes), "hvps": hvps, "sigma": None, "nodes": [],
            "weights": [], "grid": [], "density": [], "lambda_max": None, "lambda_min": None, "moment1": None,
            "moment2": None}


def outlier_ratio(result):
    """lambda_max / sqrt(m2): how far the top eigenvalue stands above the spectrum's root mean
    square (m2, the estimate of tr(H^2)/n); large when isolated outliers sit above a narrow bulk."""
    top, m2 = result.get("lambda_max"), result.get("moment2")
    if top is None or m2 is None or not m2 > 0:
        return math.nan
    return top / math.sqrt(m2)
