"""The normalizers' shared helpers."""

import numpy as np
import pytest

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
