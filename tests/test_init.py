import numpy as np
import pytest

from minibn.nn import glorot_normal, glorot_uniform
from minibn.nn.init import fans, get_initializer


def test_fans_for_dense_and_conv_shapes():
    assert fans((30, 20)) == (30, 20)
    assert fans((3, 3, 4, 8)) == (36, 72)
    with pytest.raises(ValueError, match=r"init: a weight needs at least 2 dimensions.*\(5,\)"):
        fans((5,))


def test_glorot_uniform_limits_and_variance():
    w = glorot_uniform((3, 3, 64, 32), rng=0, dtype="float64")
    fan_in, fan_out = 576, 288
    limit = np.sqrt(6 / (fan_in + fan_out))
    assert w.dtype == np.float64 and np.abs(w).max() <= limit and np.abs(w).max() > 0.99 * limit
    assert abs(w.var() / (2 / (fan_in + fan_out)) - 1) < 0.05       # 18k samples
    assert abs(w.mean()) < 0.05 * limit


def test_glorot_normal_std():
    w = glorot_normal((200, 100), rng=1, dtype="float64")
    assert abs(w.std() / np.sqrt(2 / 300) - 1) < 0.03 and abs(w.mean()) < 0.01


def test_seed_or_generator_and_dtype():
    np.testing.assert_array_equal(glorot_uniform((4, 5), rng=3), glorot_uniform((4, 5), rng=3))
    g = np.random.default_rng(3)
    first, second = glorot_uniform((4, 5), rng=g), glorot_uniform((4, 5), rng=g)
    np.testing.assert_array_equal(first, glorot_uniform((4, 5), rng=3))
    assert not np.array_equal(first, second)                        # the Generator advances
    assert glorot_uniform((4, 5), rng=0).dtype == np.float32
    assert glorot_normal((4, 5), rng=0, dtype="float64").dtype == np.float64


def test_get_initializer():
    assert get_initializer("glorot_normal") is glorot_normal
    assert get_initializer(np.zeros) is np.zeros
    with pytest.raises(ValueError, match="init: unknown initializer 'orthogonal'"):
        get_initializer("orthogonal")
