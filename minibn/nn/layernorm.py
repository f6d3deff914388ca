"""Layer normalization: each sample normalized over all of its features (Ba, Kiros and Hinton, 2016).

For a sample n, its m values x_i: the C features of an (N, C) input, or all H*W*C values of a
channels-last (N, H, W, C) one, i.e. GroupNorm with one group (:mod:`minibn.nn.groupnorm`,
whose code this is, with G = 1):

Forward (every mode: the statistics are the sample's own), :func:`forward`:

    mu      = (1/m) sum_i x_i
    var     = (1/m) sum_i (x_i - mu)^2
    inv_std = 1 / sqrt(var + eps)
    x_hat   = (x - mu) * inv_std
    y       = gamma * x_hat + beta                (gamma, beta per feature: the last axis)

Backward, with dy = dL/dy (derived in docs/layers/layernorm.md), :func:`backward`:

    dbeta  = sum over samples (and positions) of dy
    dgamma = sum over samples (and positions) of dy * x_hat
    dx_hat = dy * gamma
    dx     = (inv_std / m) * (m * dx_hat - sum_i dx_hat_i - x_hat * sum_i dx_hat_i x_hat_i)

with the sums over i running over the sample. With gamma = 1 this is dx = inv_std P dy, P = I -
11^T/m - x_hat x_hat^T/m per sample: BatchNorm's projection with a sample in place of a channel.
No running statistics: train, eval and probe are one map, and samples never mix.
"""

from minibn.nn import groupnorm
from minibn.nn.groupnorm import Cache  # noqa: F401  (the cache is GroupNorm's, G = 1)
from minibn.nn.normalization import register


def forward(x, gamma, beta, eps=1e-5):
    """``(y, Cache)``: GroupNorm's forward with one group (module docstring)."""
    return groupnorm.forward(x, gamma, beta, 1, eps)


def backward(dy, cache):
    """``(dx, {"gamma", "beta"})``: GroupNorm's backward with one group (module docstring)."""
    return groupnorm.backward(dy, cache)


class LayerNorm(groupnorm.GroupNorm):
    """``LayerNorm(normalized_features, eps=1e-5)``: params ``"gamma"`` (=1), ``"beta"`` (=0) per
    feature (the last axis, which must have ``normalized_features`` entries); no state."""

    def __init__(self, normalized_features, eps=1e-5, *, dtype="float32", xp=None):
        super().__init__(1, normalized_features, eps, dtype=dtype, xp=xp)

    def describe(self):
        return f"LayerNorm({self.num_features}, eps={self.eps:g})"


register("layernorm", "LayerNorm", lambda num_features, *, dtype, eps=1e-5, **_: LayerNorm(num_features, eps, dtype=dtype),
         color="C8", doc="layers/layernorm.md", backward=groupnorm.backward, pools="sample", centres=True,
         invariance="per sample")
