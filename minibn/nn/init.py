"""Weight initialization, drawn on the host from an explicit seed or Generator.

For a weight of shape ``(..., fan_in_last, out)`` (Dense ``(in, out)``, Conv2d
``(kh, kw, in, out)``): fan_in = prod(shape[:-1]), fan_out = prod(shape[:-2]) * out.

* Glorot uniform: W ~ U(-a, a), a = sqrt(6 / (fan_in + fan_out));
* Glorot normal:  W ~ N(0, s^2), s = sqrt(2 / (fan_in + fan_out)).

Both give Var(W) = 2 / (fan_in + fan_out). Draws are float64 on the host and
converted once, so a seed gives the same weights on NumPy and CuPy.
"""

import math

from minibn import backend


def fans(shape):
    if len(shape) < 2:
        raise ValueError(f"init: a weight needs at least 2 dimensions to have fans, got shape {tuple(shape)}")
    receptive = math.prod(shape[:-2])
    return receptive * shape[-2], receptive * shape[-1]


def glorot_uniform(shape, rng=None, dtype="float32"):
    fan_in, fan_out = fans(shape)
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    return backend.rng(rng).uniform(-limit, limit, size=shape).astype(dtype)


def glorot_normal(shape, rng=None, dtype="float32"):
    fan_in, fan_out = fans(shape)
    std = math.sqrt(2.0 / (fan_in + fan_out))
    return backend.rng(rng).normal(0.0, std, size=shape).astype(dtype)


INITIALIZERS = {"glorot_uniform": glorot_uniform, "glorot_normal": glorot_normal}


def get_initializer(name):
    if callable(name):
        return name
    try:
        return INITIALIZERS[name]
    except KeyError:
        raise ValueError(f"init: unknown initializer {name!r}; choose one of {sorted(INITIALIZERS)} or pass a callable") from None
