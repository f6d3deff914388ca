import sys
import types

import numpy as np
import pytest

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
