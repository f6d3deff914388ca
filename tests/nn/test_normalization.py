"""The normalizers' shared helpers."""

import re
import warnings

import numpy as np
import pytest

from minibn import nn
from minibn.nn import normalization


@pytest.mark.parametrize("shape, dtype", [((1000, 10), "float64"), ((7, 3), "float32"), ((1, 4), "float64")])
def test_column_sums_is_the_product_with_fresh_ones_and_its_ones_cannot_be_written(shape, dtype):
    a2 = np.random.default_rng(0).standard_normal(shape).astype(dtype)
    np.testing.assert_array_equal(normalization.column_sums(a2), np.ones(shape[0], dtype=dtype) @ a2)
    np.testing.assert_allclose(normalization.column_sums(a2), a2.sum(axis=0), rtol=1e-5 if dtype == "float32" else 1e-12)
    ones = normalization._host_ones(shape[0], np.dtype(dtype))
    assert ones is normalization._host_ones(shape[0], np.dtype(dtype))     # made once
    with pytest.raises(ValueError, match="read-only"):
        ones[0] = 2.0                                                       # shared, so never writable


@pytest.mark.parametrize("make", [lambda: nn.BatchNorm(3), lambda: nn.LayerNorm(3), lambda: nn.GroupNorm(1, 3),
                                  lambda: nn.RMSNorm(3), lambda: nn.LpNorm(3, 2), lambda: nn.NoisyBatchNorm(3, rng=0)])
def test_an_overflowing_float32_input_warns_once_naming_the_layer(make):
    """Squares of float32 values near 1e20 overflow: the output would be beta and the gradient 0, silently."""
    layer = make()
    x = (np.random.default_rng(0).standard_normal((8, 3)) * 1e20).astype("float32")
    with pytest.warns(RuntimeWarning, match=re.escape(layer.describe()) + ".*not finite") as caught:
        layer.forward(x, "train")
        layer.forward(x, "train")
    assert sum("spread" in str(w.message) for w in caught) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        make().forward(x / 1e20, "train")     # an ordinary input: no warning
