"""Depth at initialization: gradient norms and the rank of the representations, layer by layer
(Yang et al., ICLR 2019; Daneshmand et al., NeurIPS 2020; beyond the paper).

:func:`depth_profile` runs one batch through the model (``mode``: "probe", the train-mode
function with batch statistics, or "eval") and reports, for the K weight layers in order
(k = 1..K):

    grad_norm[k]   ||dL/dW_k||_F, the gradient of weight layer k (Yang et al.: with BN it grows
                   with depth, i.e. towards the input, at initialization);
    representation k: the input of weight layer k + 1 (for k = K, the network's output) as a
                   matrix A of N rows, one per sample (a conv map flattened per sample, H*W*C
                   columns), uncentred; with s_i its singular values and C = A^T A / N:
    rank[k]            #{s_i > s_max max(N, D) u}, u the dtype's unit roundoff (NumPy's
                       matrix_rank rule);
    stable_rank[k]     sum s_i^2 / s_max^2 = ||A||_F^2 / ||A||_2^2;
    effective_rank[k]  tr(C)^2 / ||C||_F^2 = (sum s_i^2)^2 / sum s_i^4 (Daneshmand et al.'s
                       measure of rank collapse: 1 when every sample maps along one direction).

The representation is uncentred on purpose: a collapse onto one direction shared by all samples
is what the measure must see, and centring would remove it. Cost: one forward and backward,
plus one SVD of an N x D matrix per weight layer (min(N, D)^2 max(N, D)).
"""

import math

from minibn import backend


def weight_layers(model):
    return [i for i, layer in enumerate(model) if "W" in layer.params]


def spectrum_stats(a):
    """``{"rank", "stable_rank", "effective_rank"}`` of the rows of ``a`` (N samples, any shape after)."""
    xp = backend.array_module(a)
    A = a.reshape(a.shape[0], -1)
    s = backend.to_host(xp.linalg.svd(A, compute_uv=False)).astype("float64")
    np = backend.host
    if not np.isfinite(s).all() or s.size == 0 or s[0] == 0:
        return {"rank": 0 if s.size and s[0] == 0 else None, "stable_rank": None, "effective_rank": None}
    tol = s[0] * max(A.shape) * np.finfo(A.dtype).eps
    sq = s * s
    return {"rank": int((s > tol).sum()), "stable_rank": float(sq.sum() / sq[0]),
            "effective_rank": float(sq.sum() ** 2 / (sq * sq).sum())}


def depth_profile(model, loss_fn, x, target, mode="probe"):
    """Per weight layer: gradient norm and the rank measures of its representation (module
    docstring). Returns ``{"mode", "samples", "layers", "grad_norm", "rank", "stable_rank",
    "effective_rank", "features"}`` (lists over the K weight layers; ``features`` = D).
    Leaves the model as it found it."""
    if mode not in ("probe", "eval"):
        raise ValueError(f"depth_profile: mode must be 'probe' or 'eval', got {mode!r}")
    layers = weight_layers(model)
    if not layers:
        raise ValueError(f"depth_profile: {model.describe()} has no weight layer")
    with model.snapshot():
        inputs = [x]
        for layer in model:
            inputs.append(layer.forward(inputs[-1], mode))
        model.value_and_grad(loss_fn, x, target, mode=mode)
        xp = model.xp
        grad_norm = [float(xp.linalg.norm(model[i].grads["W"])) for i in layers]
    reps = [inputs[i] for i in layers[1:]] + [inputs[-1]]
    stats = [spectrum_stats(r) for r in reps]
    clean = lambda v: None if v is None or (isinstance(v, float) and not math.isfinite(v)) else v  # noqa: E731
    return {"mode": mode, "samples": int(x.shape[0]), "layers": layers,
            "grad_norm": [clean(g) for g in grad_norm],
            "rank": [s["rank"] for s in stats], "stable_rank": [s["stable_rank"] for s in stats],
            "effective_rank": [s["effective_rank"] for s in stats],
            "features": [int(r[0].size) for r in reps]}
