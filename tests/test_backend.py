import sys
import types

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minibn import backend


def test_numpy_by_name_or_module():
    assert backend.get("numpy") is np and backend.get(np) is np and backend.get() is np
    assert backend.name_of(np) == "numpy"
    assert backend.array_module(np.zeros(2), np.ones(3)) is np
    assert backend.is_available("numpy")


def test_unknown_backend_is_a_value_error_listing_the_choices():
    with pytest.raises(ValueError, match=r"unknown backend 'jax'; choose one of \('numpy', 'cupy'\)"):
        backend.get("jax")


def test_cupy_not_installed_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)          # makes `import cupy` fail
    with pytest.raises(backend.BackendUnavailable, match=r"CuPy is not installed.*pip install 'minibn\[gpu\]'"):
        backend.get("cupy")
    assert not backend.is_available("cupy")


def _fake_cupy(get_device_count):
    cupy = types.ModuleType("cupy")
    cupy.cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=get_device_count))
    return cupy


def test_cupy_without_a_gpu_says_so_and_how_to_install(monkeypatch):
    def no_driver():
        raise RuntimeError("cudaErrorInsufficientDriver")
    monkeypatch.setitem(sys.modules, "cupy", _fake_cupy(no_driver))
    with pytest.raises(backend.BackendUnavailable,
                       match=r"no usable GPU was found \(cudaErrorInsufficientDriver\).*pip install 'minibn\[gpu\]'"):
        backend.get("cupy")
    monkeypatch.setitem(sys.modules, "cupy", _fake_cupy(lambda: 0))
    with pytest.raises(backend.BackendUnavailable, match=r"CUDA reports no GPU.*pip install 'minibn\[gpu\]'"):
        backend.get("cupy")
    fake = _fake_cupy(lambda: 1)
    monkeypatch.setitem(sys.modules, "cupy", fake)
    assert backend.get("cupy") is fake and backend.name_of(fake) == "cupy"


def test_host_device_round_trip(xp):
    a = np.arange(6.0).reshape(2, 3)
    d = backend.to_device(a, backend.name_of(xp))
    assert backend.array_module(d) is xp
    np.testing.assert_array_equal(backend.to_host(d), a)
    assert backend.to_device(a, "numpy") is a            # no copy where none is needed
    backend.synchronize(xp)


def test_rng_from_seed_or_generator():
    a, b = backend.rng(7), backend.rng(7)
    np.testing.assert_array_equal(a.normal(size=5), b.normal(size=5))
    g = np.random.default_rng(1)
    assert backend.rng(g) is g
    assert isinstance(backend.rng(None), np.random.Generator)
    assert backend.host is np


def test_array_module_of_a_device_array_asks_the_driver_nothing():
    from tests import fakecupy
    with fakecupy.installed() as cupy:
        d = backend.to_device(np.ones(3), "cupy")
        fakecupy.DEVICE["error"] = "the driver must not be asked per call"
        try:
            assert backend.array_module(np.ones(1), d) is cupy
        finally:
            fakecupy.DEVICE["error"] = None


@settings(max_examples=60, deadline=None)
@given(rows=st.integers(1, 300), columns=st.integers(1, 40), dtype=st.sampled_from(["float32", "float64"]),
       log_scale=st.floats(-30, 30), seed=st.integers(0, 2**32 - 1))
def test_sum_rows_is_the_sum_over_axis_0_bit_for_bit(rows, columns, dtype, log_scale, seed):
    a2 = (np.random.default_rng(seed).standard_normal((rows, columns)) * 10.0 ** log_scale).astype(dtype)
    for layout in (a2, np.asfortranarray(a2), a2[::2]):
        np.testing.assert_array_equal(backend.sum_rows(layout), layout.sum(axis=0))
        assert backend.sum_rows(layout).dtype == a2.dtype


def test_sum_rows_at_the_shapes_the_layers_use():
    rng = np.random.default_rng(0)
    for shape in [(1000, 10), (128, 512), (131072, 64), (4096, 1)]:   # the DLN's Dense, VGG's conv bias
        for dtype in ("float32", "float64"):
            a2 = rng.standard_normal(shape).astype(dtype)
            np.testing.assert_array_equal(backend.sum_rows(a2), a2.sum(axis=0))
