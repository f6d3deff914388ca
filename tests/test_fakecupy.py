"""The CuPy stand-in (tests/fakecupy) is strict where CuPy is, and counts what it claims to count."""

import pickle

import numpy as np
import pytest

from minibn import backend
from tests import fakecupy


@pytest.fixture
def cp():
    with fakecupy.installed() as cupy:
        yield cupy


def _line_of(marker):
    """``tests/test_fakecupy.py:N`` of the line of this file carrying ``# site: marker``."""
    with open(__file__) as f:
        for number, line in enumerate(f, 1):
            if line.rstrip().endswith(f"# site: {marker}"):
                return f"tests/test_fakecupy.py:{number}"
    raise AssertionError(marker)


def test_implicit_conversion_to_numpy_raises(cp):
    d = cp.arange(6.0).reshape(2, 3)
    for convert in (np.asarray, np.array, lambda a: np.ascontiguousarray(a), memoryview):
        with pytest.raises(TypeError):
            convert(d)
    with pytest.raises(TypeError, match="Implicit conversion to a NumPy array is not allowed"):
        d.__array__()
    assert not hasattr(d, "__array_interface__") and not hasattr(d, "__array_struct__")
    with pytest.raises(TypeError):
        np.testing.assert_allclose(d, np.zeros((2, 3)))


@pytest.mark.parametrize("mix", [
    lambda d, h: d + h, lambda d, h: h + d, lambda d, h: d * h, lambda d, h: h @ d.T,
    lambda d, h: d.__iadd__(h), lambda d, h: d.dot(h.T), lambda d, h: fakecupy.cupy.maximum(d, h),
    lambda d, h: fakecupy.cupy.where(d > 0, h, 0.0), lambda d, h: fakecupy.cupy.concatenate([d, h]),
    lambda d, h: fakecupy.cupy.vdot(d, h), lambda d, h: fakecupy.cupy.linalg.norm(h),
    lambda d, h: fakecupy.cupy.add(d, [1.0, 2.0, 3.0]),
])
def test_host_arrays_in_device_operations_raise(cp, mix):
    with pytest.raises(TypeError, match="Unsupported type|Only cupy arrays"):
        mix(cp.ones((2, 3)), np.ones((2, 3)))


def test_scalars_mix_and_results_stay_on_the_device(cp):
    d = cp.arange(4.0)
    for result in (d + 1.0, d * np.float64(2.0), d - np.array(1.0), d.sum(), d[1], cp.sqrt(d).max(), np.mean(d)):
        assert isinstance(result, cp.ndarray)
    assert (d.sum()).shape == () and backend.array_module(d.sum()) is cp
    assert cp.float32 is np.float32 and d.astype(cp.float32).dtype == np.float32


def test_sequences_of_device_arrays_build_on_the_device(cp):
    with fakecupy.counting() as counts:
        d = cp.asarray([cp.ones(2), cp.zeros(2)])
    assert d.shape == (2, 2) and counts.total("to_device") == 0
    with pytest.raises(TypeError):
        cp.asarray([cp.ones(2), np.zeros(2)])


def test_numpy_function_without_a_cupy_twin_raises(cp):
    with pytest.raises(TypeError):
        np.polyfit(cp.arange(3.0), cp.arange(3.0), 1)


def test_values_equal_numpy_bit_for_bit(cp):
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(5, 4)), rng.normal(size=(4, 3))
    da, db = cp.asarray(a), cp.asarray(b)
    np.testing.assert_array_equal((da @ db).get(), a @ b)
    np.testing.assert_array_equal(cp.exp(da).sum(axis=0).get(), np.exp(a).sum(axis=0))
    assert float(cp.linalg.norm(da)) == np.linalg.norm(a)


def test_transfers_copies_and_ops_are_counted_per_call_site(cp):
    host = np.arange(6.0)
    with fakecupy.counting() as counts:
        d = cp.asarray(host)                          # site: copy
        y = cp.exp(d) * 2.0 + 1.0                     # site: three ops
        v = y.reshape(2, 3).T                         # site: views
        total = float(y.sum())                        # site: read
        f"{y[0]:.3f}"                                 # site: format
        cp.asnumpy(v), backend.to_host(y)             # site: two reads
        bool(d[0] > 0), int(d[1]), d[2].item()        # site: three reads
    assert total == float(np.sum(np.exp(host) * 2.0 + 1.0))
    assert dict(counts.to_device) == {_line_of("copy"): 1}
    assert dict(counts.to_host) == {_line_of("read"): 1, _line_of("format"): 1, _line_of("two reads"): 2,
                                    _line_of("three reads"): 3}
    assert counts.ops[_line_of("three ops")] == 3 and counts.ops[_line_of("views")] == 0
    assert counts.ops[_line_of("read")] == 1 and counts.ops[_line_of("three reads")] == 1


def test_counting_nests_and_only_records_inside(cp):
    d = cp.ones(3)
    float(d.sum())
    with fakecupy.counting() as outer:
        float(d.sum())
        with fakecupy.counting() as inner:
            float(d.sum())
    float(d.sum())
    assert outer.total("to_host") == 2 and inner.total("to_host") == 1
    outer.reset()
    assert outer.total("to_host") == outer.total("ops") == 0


def test_indexing_with_host_arrays_and_masks_is_counted(cp):
    d = cp.arange(5.0)
    with fakecupy.counting() as counts:
        d[np.array([0, 2])]         # the index array is copied to the device
        d[d > 2.0]                  # the result size is read back first
        d[1:3] = 0.0
    assert counts.total("to_device") == 1 and counts.total("to_host") == 1


def test_backend_recognizes_the_stand_in(cp):
    assert backend.get("cupy") is cp and backend.name_of(cp) == "cupy" and backend.is_available("cupy")
    d = backend.to_device(np.eye(2), "cupy")
    assert isinstance(d, cp.ndarray) and backend.array_module(np.ones(1), d) is cp
    np.testing.assert_array_equal(backend.to_host(d), np.eye(2))
    backend.synchronize(cp)


def test_no_gpu_is_reported_as_cupy_would(cp):
    fakecupy.DEVICE["count"] = 0
    try:
        assert not backend.is_available("cupy")
    finally:
        fakecupy.DEVICE["count"] = 1


def test_installed_restores_what_was_there():
    import sys
    before = sys.modules.get("cupy")
    with fakecupy.installed():
        assert sys.modules["cupy"] is fakecupy.cupy
    assert sys.modules.get("cupy") is before


def test_pickling_reads_back_and_copies_again(cp):
    d = cp.arange(3.0)
    with fakecupy.counting() as counts:
        e = pickle.loads(pickle.dumps(d))
    assert isinstance(e, cp.ndarray) and counts.total("to_host") == counts.total("to_device") == 1
    np.testing.assert_array_equal(e.get(), [0.0, 1.0, 2.0])


def test_copies_stay_on_the_device(cp):
    import copy
    d = cp.arange(3.0)
    with fakecupy.counting() as counts:
        e, f = copy.copy(d), copy.deepcopy({"w": d})["w"]
    assert isinstance(f, cp.ndarray) and e is not d and f is not d
    assert counts.total("to_host") == counts.total("to_device") == 0 and counts.total("ops") == 2


def test_as_strided_and_random_stay_on_the_device(cp):
    d = cp.arange(6.0)
    windows = cp.lib.stride_tricks.as_strided(d, shape=(4, 3), strides=(8, 8))
    np.testing.assert_array_equal(windows.get()[1], [1.0, 2.0, 3.0])
    draws = cp.random.default_rng(3).standard_normal((2, 3), dtype=cp.float32)
    assert isinstance(draws, cp.ndarray) and draws.dtype == np.float32
    with fakecupy.counting() as counts:
        cp.random.RandomState(1).uniform(0.0, 1.0, size=4)
    assert counts.total("to_device") == 0 and counts.total("ops") == 1


def _symmetric(n, seed=0):
    m = np.random.default_rng(seed).normal(size=(n, n))
    return (m + m.T) / 2.0


@pytest.mark.parametrize("which", ["LM", "LA", "SA"])
def test_eigsh_finds_the_extreme_eigenvalue(cp, which):
    m = _symmetric(60)
    exact = np.linalg.eigvalsh(m)
    want = {"LM": exact[np.argmax(np.abs(exact))], "LA": exact[-1], "SA": exact[0]}[which]
    from cupyx.scipy.sparse.linalg import LinearOperator, eigsh
    dm = cp.asarray(m)
    op = LinearOperator(m.shape, matvec=lambda v: dm @ v, dtype="float64")
    values = eigsh(op, k=1, which=which, v0=cp.ones(60), tol=1e-10, return_eigenvectors=False)
    assert isinstance(values, cp.ndarray)
    assert float(values[0]) == pytest.approx(want, rel=1e-8)


def test_eigsh_stops_at_maxiter_lanczos_steps_without_raising(cp):
    from cupyx.scipy.sparse.linalg import LinearOperator, eigsh
    dm = cp.asarray(_symmetric(200, seed=1))
    products = []
    op = LinearOperator((200, 200), matvec=lambda v: products.append(1) or dm @ v)
    eigsh(op, k=1, v0=cp.ones(200), ncv=10, maxiter=25, return_eigenvectors=False)
    assert 25 <= len(products) < 25 + 10           # steps, not restarts; no ArpackNoConvergence


def test_eigsh_refuses_a_host_start_vector_and_host_results(cp):
    from cupyx.scipy.sparse.linalg import LinearOperator, eigsh
    dm = cp.asarray(_symmetric(10))
    op = LinearOperator((10, 10), matvec=lambda v: dm @ v)
    with pytest.raises(TypeError):
        eigsh(op, k=1, v0=np.ones(10))
    host_op = LinearOperator((10, 10), matvec=lambda v: np.ones(10))
    with pytest.raises(TypeError, match="must return a cupy.ndarray"):
        eigsh(host_op, k=1, v0=cp.ones(10))


def test_cupy_12_eigsh_has_no_v0():
    with fakecupy.installed(version="12.3.0") as cp:
        from cupyx.scipy.sparse.linalg import LinearOperator, eigsh
        assert cp.__version__ == "12.3.0"
        dm = cp.asarray(_symmetric(40))
        op = LinearOperator((40, 40), matvec=lambda v: dm @ v)
        with pytest.raises(TypeError, match="v0"):
            eigsh(op, k=1, v0=cp.ones(40))
        assert eigsh(op, k=1, return_eigenvectors=False).shape == (1,)
    with fakecupy.installed() as cp:
        assert cp.__version__ == "13.3.0"
