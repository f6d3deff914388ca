"""The functional face of a layer: apply(params, x, mode) and apply_backward(dy, cache) run it on the
parameters given, equal to forward/backward of a copy holding them, and store nothing on the layer."""

import math

import numpy as np
import pytest

from minibn import nn

F64 = "float64"

LAYERS = {
    "dense": (lambda: nn.Dense(3, 4, rng=0, dtype=F64), (5, 3)),
    "conv": (lambda: nn.Conv2d(3, 2, 2, padding=1, rng=0, dtype=F64), (2, 3, 3, 3)),
    "relu": (lambda: nn.ReLU(), (5, 3)),
    "batchnorm": (lambda: nn.BatchNorm(3, dtype=F64), (5, 2, 2, 3)),
    "batchnorm_noaffine": (lambda: nn.BatchNorm(3, affine=False, dtype=F64), (5, 3)),
    "noisy": (lambda: nn.NoisyBatchNorm(3, rng=1, dtype=F64), (5, 3)),
    "linf": (lambda: nn.LpNorm(3, math.inf, dtype=F64), (5, 3)),
    "groupnorm": (lambda: nn.GroupNorm(2, 4, dtype=F64), (3, 2, 2, 4)),
    "weightnorm": (lambda: nn.WeightNorm(nn.Dense(3, 4, rng=0, dtype=F64)), (5, 3)),
}


@pytest.mark.parametrize("mode", ["train", "probe", "eval"])
@pytest.mark.parametrize("name", sorted(LAYERS))
def test_apply_is_forward_on_the_given_parameters_and_keeps_nothing(name, mode):
    make, shape = LAYERS[name]
    rng = np.random.default_rng(0)
    layer, twin = make(), make()
    x = rng.normal(size=shape)
    layer.forward(x * 2.0 + 1.0, "train")                   # a cache, grads and state of its own
    layer.backward(rng.normal(size=layer.forward(x * 2.0 + 1.0, "train").shape))
    twin.load_state(layer.state())
    params = {k: p + rng.normal(size=p.shape) for k, p in layer.params.items()}
    twin.params = {k: p.copy() for k, p in params.items()}
    own = {k: p.copy() for k, p in layer.params.items()}
    own_params, own_grads, own_cache = layer.params, layer.grads, layer._cache

    y, cache = layer.apply(params, x, mode)
    dy = rng.normal(size=y.shape)
    dx, grads = layer.apply_backward(dy, cache)

    np.testing.assert_array_equal(y, twin.forward(x, mode))
    np.testing.assert_array_equal(dx, twin.backward(dy))
    assert grads.keys() == twin.grads.keys()
    for k in grads:
        np.testing.assert_array_equal(grads[k], twin.grads[k])
    assert layer.params is own_params and layer.grads is own_grads and layer._cache is own_cache
    for k in own:
        np.testing.assert_array_equal(layer.params[k], own[k])
    state, twin_state = layer.state(), twin.state()   # the state moved as the twin's did (train mode only)
    for k in state:
        if k != "rng":
            np.testing.assert_array_equal(state[k], twin_state[k])


def test_apply_refuses_a_mode_or_keys_that_do_not_fit_and_a_layer_that_only_runs_on_its_own():
    layer = nn.Dense(3, 4, rng=0, dtype=F64)
    x = np.ones((2, 3))
    with pytest.raises(nn.LayerError, match=r"Dense\(3, 4, bias=True\): apply needs params with exactly the keys "
                                            r"\['W', 'b'\], got \['W'\]"):
        layer.apply({"W": layer.params["W"]}, x, "probe")
    with pytest.raises(nn.LayerError, match="mode must be one of"):
        layer.apply(layer.params, x, "test")

    class OwnOnly(nn.Layer):   # the simple hook: a forward on its own parameters only
        def _forward(self, x, mode):
            return 2.0 * x, None

        def _backward(self, dy, cache):
            return 2.0 * dy, {}

    np.testing.assert_array_equal(OwnOnly().forward(x), 2.0 * x)
    with pytest.raises(NotImplementedError, match=r"OwnOnly: runs on its own parameters only .* apply\(\) is not available"):
        OwnOnly().apply({}, x, "probe")

    class Nothing(nn.Layer):
        pass

    with pytest.raises(NotImplementedError, match=r"Nothing: implements neither _apply\(params, x, mode\)"):
        Nothing().forward(x)


def test_weightnorm_runs_the_wrapped_layer_without_giving_it_parameters():
    layer = nn.WeightNorm(nn.Conv2d(2, 3, 2, rng=0, dtype=F64))
    x = np.random.default_rng(1).normal(size=(2, 3, 3, 2))
    y = layer.forward(x, "train")
    layer.backward(np.ones_like(y))
    assert layer.layer.params == {} and layer.layer._cache is None and layer.layer.grads == {}
    assert sorted(layer.grads) == ["b", "g", "v"]
