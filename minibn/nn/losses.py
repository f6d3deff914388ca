"""Losses: each returns ``(loss, dpred)``; the loss is a Python float on NumPy and a 0-d
device array on CuPy (``float(loss)`` reads it: a device-to-host transfer that waits for
the GPU, which the training loop does on logging steps only; see
:func:`minibn.backend.scalar`).

Softmax cross-entropy, averaged over the batch of N rows with integer labels c_n:

    p = softmax(z),  L = -(1/N) sum_n log p[n, c_n],  dL/dz = (p - onehot(c)) / N

Squared error:

    "sum":  L = sum (pred - target)^2,               dL/dpred = 2 (pred - target)
    "mean": L = (1/K) sum (pred - target)^2,         dL/dpred = 2 (pred - target) / K
            (K = number of elements)

Second order: the tangent of dpred when pred moves along pred_t (the target fixed),
:func:`loss_tangent` finds it for a loss function:

    softmax cross-entropy:  dz_t = p * (z_t - sum_k p_k z_t_k) / N        (row by row)
    squared error:          dpred_t = 2 pred_t  ("sum"),   2 pred_t / K  ("mean")
"""

import functools

from minibn import backend
from minibn.nn.layer import LayerError, check_input


def check_labels(labels, num_classes):
    """Raise LayerError unless every label lies in [0, num_classes): two reads of the range.

    :func:`softmax_cross_entropy` calls it on host labels; device labels are checked once
    where the data enters (the studies call it on their label arrays before training), not
    on every loss call. Unchecked, CuPy would wrap an out-of-range label silently.
    """
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= num_classes:
        raise LayerError(f"softmax_cross_entropy: labels must lie in [0, {num_classes}), got range [{low}, {high}]")


def softmax_cross_entropy(logits, labels):
    check_input("softmax_cross_entropy", "logits", logits, ndims=(2,))
    xp = backend.array_module(logits)
    labels = xp.asarray(labels)
    if labels.shape != logits.shape[:1] or labels.dtype.kind not in "iu":
        raise LayerError(
            f"softmax_cross_entropy: labels must be integers of shape ({logits.shape[0]},) "
            f"for logits of shape {tuple(logits.shape)}, got shape {tuple(labels.shape)} dtype {labels.dtype}"
        )
    n, k = logits.shape
    if n == 0:
        raise LayerError(f"softmax_cross_entropy: the batch is empty (logits of shape {tuple(logits.shape)}); "
                         f"a mean over no samples is undefined")
    if xp is backend.host:  # on a GPU reading the range back would stall every step: see check_labels
        check_labels(labels, k)
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = xp.exp(shifted)
    total = exp.sum(axis=1, keepdims=True)
    rows = xp.arange(n)
    log_p = shifted[rows, labels] - xp.log(total[:, 0])
    loss = backend.scalar(-log_p.mean())
    dlogits = exp / total
    dlogits[rows, labels] -= 1.0
    dlogits *= 1.0 / n
    return loss, dlogits


REDUCTIONS = ("sum", "mean")


def squared_error(pred, target, reduction="sum"):
    check_input("squared_error", "pred", pred)
    check_input("squared_error", "target", target, dtype=pred.dtype, dtype_of="pred's values")
    if target.shape != pred.shape:
        raise LayerError(f"squared_error: target shape {tuple(target.shape)} differs from pred shape {tuple(pred.shape)}")
    if reduction not in REDUCTIONS:
        raise LayerError(f"squared_error: reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if reduction == "mean" and pred.size == 0:
        raise LayerError(f"squared_error: reduction 'mean' of an empty pred (shape {tuple(pred.shape)}) is undefined")
    diff = pred - target
    loss = backend.scalar((diff * diff).sum())
    scale = 2.0
    if reduction == "mean":
        loss /= diff.size
        scale /= diff.size
    return loss, diff * scale


def softmax_cross_entropy_tangent(logits, labels, logits_t):
    """dz_t, the tangent of :func:`softmax_cross_entropy`'s dL/dz along logits_t (module docstring)."""
    xp = backend.array_module(logits)
    exp = xp.exp(logits - logits.max(axis=1, keepdims=True))
    p = exp / exp.sum(axis=1, keepdims=True)
    return p * (logits_t - (p * logits_t).sum(axis=1, keepdims=True)) * (1.0 / logits.shape[0])


def squared_error_tangent(pred, target, pred_t, reduction="sum"):
    """dpred_t, the tangent of :func:`squared_error`'s dL/dpred along pred_t."""
    return pred_t * (2.0 if reduction == "sum" else 2.0 / pred.size)


TANGENTS = {softmax_cross_entropy: softmax_cross_entropy_tangent, squared_error: squared_error_tangent}


def loss_tangent(loss_fn):
    """``tangent(pred, target, pred_t)`` for one of minibn's losses, or a ``functools.partial`` of one
    (its keywords carried over); a function with a ``tangent`` attribute supplies its own.
    Anything else is a TypeError: the exact Hessian-vector product needs it."""
    own = getattr(loss_fn, "tangent", None)
    if own is not None:
        return own
    if isinstance(loss_fn, functools.partial) and loss_fn.func in TANGENTS and not loss_fn.args:
        return functools.partial(TANGENTS[loss_fn.func], **loss_fn.keywords)
    if loss_fn in TANGENTS:
        return TANGENTS[loss_fn]
    raise TypeError(f"exact Hessian-vector product: no tangent known for the loss {loss_fn!r}; give it a "
                    f"'tangent(pred, target, pred_t)' attribute (the tangent of dL/dpred), or use product='fd'")
