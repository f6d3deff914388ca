"""The stand-in's module tree: ``cupy``, ``cupy.linalg``, ``cupy.random``, ``cupy.lib.stride_tricks``,
``cupy.cuda`` (+ ``.runtime``), ``cupyx``, ``cupyx.scipy``, ``cupyx.scipy.sparse``,
``cupyx.scipy.sparse.linalg``.

Only what minibn and its tests use, plus CuPy's near neighbours of it; anything else is
an ``AttributeError``, which is the honest answer of a stand-in.
"""

import types

import numpy
import numpy.lib.stride_tricks

from . import _array, _eigsh
from ._array import apply, ndarray, operand, unwrap, wrap
from ._counts import record

VERSION = "13.3.0"

# Elementwise functions: every operand must be a device array or a scalar (no lists, no host arrays).
ELEMENTWISE = ("add", "subtract", "multiply", "divide", "true_divide", "floor_divide", "power", "remainder", "mod",
               "maximum", "minimum", "fmax", "fmin", "negative", "positive", "absolute", "abs", "sign", "sqrt",
               "square", "exp", "expm1", "log", "log1p", "log2", "log10", "tanh", "sinh", "cosh", "sin", "cos",
               "tan", "arctan", "arctan2", "floor", "ceil", "rint", "trunc", "equal", "not_equal", "less",
               "less_equal", "greater", "greater_equal", "logical_and", "logical_or", "logical_not",
               "logical_xor", "isfinite", "isnan", "isinf", "signbit", "copysign", "hypot", "reciprocal", "where",
               "clip", "matmul", "bitwise_and", "bitwise_or", "bitwise_xor", "invert", "fabs", "real", "conj")
# Functions of arrays and options (axes, shapes): host arrays are refused, options pass.
OF_ARRAYS = ("sum", "mean", "var", "std", "max", "amax", "min", "amin", "prod", "argmax", "argmin", "any", "all",
             "cumsum", "vdot", "dot", "inner", "outer", "tensordot", "einsum", "trace", "diag", "diagonal",
             "allclose", "isclose", "array_equal", "count_nonzero", "argsort", "sort", "median", "average",
             "reshape", "transpose", "moveaxis", "swapaxes", "squeeze", "expand_dims", "ravel", "broadcast_to",
             "flip", "tile", "repeat", "pad", "roll", "atleast_1d", "atleast_2d", "triu", "tril", "nan_to_num",
             "ascontiguousarray", "cumprod", "linalg.norm", "linalg.svd", "linalg.solve", "linalg.lstsq",
             "linalg.eigvalsh", "linalg.eigh", "linalg.qr", "linalg.inv", "linalg.det", "linalg.cholesky",
             "linalg.pinv", "linalg.slogdet")
# Functions of a sequence of device arrays.
OF_SEQUENCE = ("concatenate", "stack", "hstack", "vstack")
# Creation: one fill kernel each, except empty (allocation only).
FILLED = ("zeros", "ones", "full", "arange", "eye", "identity", "linspace")
FILLED_LIKE = ("zeros_like", "ones_like", "full_like")
DTYPES = ("float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32",
          "uint64", "bool_", "complex64", "complex128", "intp", "int_", "dtype", "finfo", "iinfo",
          "result_type", "promote_types", "can_cast", "issubdtype", "floating", "integer", "number", "generic")


def _module(name, doc=None):
    return types.ModuleType(name, doc)


def _numpy_function(dotted):
    target = numpy
    for part in dotted.split("."):
        target = getattr(target, part)
    return target


def _elementwise(func):
    def run(*args, **kwargs):
        for a in args:
            if isinstance(a, (list, tuple)):
                raise TypeError(f"Unsupported type {type(a)}")
        return apply(func, args, kwargs)
    return run


def _of_arrays(func):
    def run(a, *args, **kwargs):
        if isinstance(a, (list, tuple)):
            raise TypeError(f"Unsupported type {type(a)}")
        return apply(func, (a,) + args, kwargs, operands=1)
    return run


def _of_sequence(func):
    def run(arrays, *args, **kwargs):
        for a in arrays:
            if type(a) is not ndarray:
                raise TypeError(f"Only cupy arrays can be combined; got {type(a)}")
        return apply(func, (list(arrays),) + args, kwargs, operands=0, ops=1)
    return run


def _filled(func):
    def run(*args, **kwargs):
        return apply(func, args, kwargs, operands=0, ops=1)
    return run


def _named(function, name):
    function.__name__ = function.__qualname__ = name.rsplit(".", 1)[-1]
    return function


def _holds_device_arrays(obj):
    return isinstance(obj, (list, tuple)) and any(type(v) is ndarray or _holds_device_arrays(v) for v in obj)


def _stacked(obj, dtype):
    """CuPy builds an array from a (nested) sequence of device arrays on the device."""
    def payload(v):
        if type(v) is ndarray:
            return v._data
        if isinstance(v, (list, tuple)):
            return [payload(u) for u in v]
        raise TypeError(f"Unsupported type {type(v)} among device arrays")
    record("ops")
    return ndarray._of(numpy.array(payload(obj), dtype=dtype))


def asarray(a, dtype=None, order=None, *, blocking=False):
    """A device array: no copy for a device array of that dtype, else a host-to-device copy."""
    if type(a) is ndarray:
        return a if dtype is None or numpy.dtype(dtype) == a.dtype else a.astype(dtype)
    if _holds_device_arrays(a):
        return _stacked(a, dtype)
    record("to_device")
    return ndarray._of(numpy.array(a, dtype=dtype, order=order or "K", copy=True))


def array(obj, dtype=None, copy=True, order="K", subok=False, ndmin=0, *, blocking=False):
    if _holds_device_arrays(obj):
        return _stacked(obj, dtype)
    if type(obj) is ndarray:
        if not copy and (dtype is None or numpy.dtype(dtype) == obj.dtype):
            return obj
        return apply(numpy.array, (obj,), {"dtype": dtype, "order": order, "ndmin": ndmin}, ops=1)
    record("to_device")
    return ndarray._of(numpy.array(obj, dtype=dtype, order=order, ndmin=ndmin, copy=True))


def asnumpy(a, stream=None, order="C", out=None, *, blocking=True):
    if type(a) is ndarray:
        return a.get(order=order, out=out)
    return numpy.asarray(a, order=order)


def empty(shape, dtype=float, order="C"):
    return ndarray._of(numpy.empty(shape, dtype=dtype, order=order))


def empty_like(prototype, dtype=None, order="K", subok=None, shape=None):
    return ndarray._of(numpy.empty_like(operand(prototype), dtype=dtype, order=order, shape=shape))


def get_array_module(*args):
    return _TREE["cupy"] if any(type(a) is ndarray for a in args) else numpy


def as_strided(x, shape=None, strides=None):
    """A view with the given shape and strides: no kernel."""
    if type(x) is not ndarray:
        raise TypeError(f"as_strided: expected a cupy.ndarray, got {type(x)}")
    return ndarray._of(numpy.lib.stride_tricks.as_strided(x._data, shape=shape, strides=strides))


# ---------------------------------------------------------------------- random
def _draw(values, dtype):
    record("ops")
    return ndarray._of(numpy.asarray(values, dtype=dtype))


class RandomState:
    """CuPy's legacy generator (cuRAND on a GPU; here NumPy's, so streams differ from a GPU's)."""

    def __init__(self, seed=None):
        self.seed(seed)

    def seed(self, seed=None):
        if seed is not None and not 0 <= int(seed) < 2**64:  # CuPy takes any uint64 seed
            raise ValueError(f"seed must be an unsigned 64-bit integer, got {seed!r}")
        self._host = numpy.random.RandomState(None if seed is None else numpy.random.MT19937(int(seed)))

    def rand(self, *size, dtype=float):
        return _draw(self._host.random_sample(size), dtype)

    def randn(self, *size, dtype=float):
        return _draw(self._host.standard_normal(size), dtype)

    def random_sample(self, size=None, dtype=float):
        return _draw(self._host.random_sample(size), dtype)

    random = random_sample

    def standard_normal(self, size=None, dtype=float):
        return _draw(self._host.standard_normal(size), dtype)

    def normal(self, loc=0.0, scale=1.0, size=None, dtype=float):
        return _draw(self._host.normal(operand(loc), operand(scale), size), dtype)

    def uniform(self, low=0.0, high=1.0, size=None, dtype=float):
        return _draw(self._host.uniform(operand(low), operand(high), size), dtype)

    def randint(self, low, high=None, size=None, dtype=int):
        return _draw(self._host.randint(low, high, size), dtype)

    def permutation(self, num):
        if type(num) is ndarray:
            return _draw(self._host.permutation(num._data), num.dtype)
        return _draw(self._host.permutation(num), numpy.int64)


class Generator:
    """CuPy's ``cupy.random.Generator`` (from ``default_rng``); NumPy's stream underneath."""

    def __init__(self, seed=None):
        self._host = numpy.random.default_rng(seed)

    def random(self, size=None, dtype=numpy.float64, out=None):
        return self._maybe_out(_draw(self._host.random(size), dtype), out)

    def standard_normal(self, size=None, dtype=numpy.float64, out=None):
        return self._maybe_out(_draw(self._host.standard_normal(size), dtype), out)

    def uniform(self, low=0.0, high=1.0, size=None, dtype=numpy.float64):
        return _draw(self._host.uniform(operand(low), operand(high), size), dtype)

    def integers(self, low, high=None, size=None, dtype=numpy.int64, endpoint=False):
        return _draw(self._host.integers(low, high, size, endpoint=endpoint), dtype)

    def permutation(self, x):
        if type(x) is ndarray:
            return _draw(self._host.permutation(x._data), x.dtype)
        return _draw(self._host.permutation(x), numpy.int64)

    @staticmethod
    def _maybe_out(result, out):
        if out is None:
            return result
        out[...] = result
        return out


_GLOBAL_RANDOM = RandomState()


def _random_module():
    random = _module("cupy.random")
    random.RandomState, random.Generator = RandomState, Generator
    random.default_rng = lambda seed=None: Generator(seed)
    random.get_random_state = lambda: _GLOBAL_RANDOM
    random.seed = lambda seed=None: _GLOBAL_RANDOM.seed(seed)
    for name in ("rand", "randn", "random_sample", "random", "standard_normal", "normal", "uniform", "randint",
                 "permutation"):
        setattr(random, name, (lambda n: lambda *a, **k: getattr(_GLOBAL_RANDOM, n)(*a, **k))(name))
    return random


# ---------------------------------------------------------------------- cuda
class Stream:
    null = None

    def synchronize(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def use(self):
        return self


class Device:
    def __init__(self, device=None):
        self.id = 0 if device is None else int(device)
        if self.id >= DEVICE["count"]:
            raise RuntimeError(f"cudaErrorInvalidDevice: invalid device ordinal {self.id}")

    compute_capability = property(lambda self: "90")
    mem_info = property(lambda self: (DEVICE["memory"], DEVICE["memory"]))

    def synchronize(self):
        pass

    def use(self):
        return self

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


# What the fake driver reports; a test may set "count" to 0 (no GPU) or "error" (no driver).
DEVICE = {"count": 1, "error": None, "name": "Fake CUDA device (tests/fakecupy)", "memory": 16 * 2**30,
          "runtime": 12040, "driver": 12040}


def _get_device_count():
    if DEVICE["error"] is not None:
        raise RuntimeError(DEVICE["error"])
    return DEVICE["count"]


def _cuda_modules():
    cuda = _module("cupy.cuda")
    runtime = _module("cupy.cuda.runtime")
    runtime.getDeviceCount = _get_device_count
    runtime.runtimeGetVersion = lambda: DEVICE["runtime"]
    runtime.driverGetVersion = lambda: DEVICE["driver"]
    runtime.getDeviceProperties = lambda device: {"name": DEVICE["name"].encode(), "totalGlobalMem": DEVICE["memory"],
                                                  "major": 9, "minor": 0}
    runtime.deviceSynchronize = lambda: None
    cuda.runtime = runtime
    cuda.Device, cuda.Stream = Device, Stream
    stream = Stream()
    Stream.null = stream
    cuda.get_current_stream = lambda device=None: stream
    cuda.is_available = lambda: DEVICE["error"] is None and DEVICE["count"] > 0
    return {"cupy.cuda": cuda, "cupy.cuda.runtime": runtime}


# ---------------------------------------------------------------------- the tree
def _build():
    cupy = _module("cupy", "A strict CuPy stand-in for tests (tests/fakecupy); not CuPy.")
    linalg = _module("cupy.linalg")
    lib = _module("cupy.lib")
    stride_tricks = _module("cupy.lib.stride_tricks")
    cupy.__version__ = VERSION
    cupy.ndarray = ndarray
    for name in ELEMENTWISE:
        setattr(cupy, name, _named(_elementwise(getattr(numpy, name)), name))
    for dotted in OF_ARRAYS:
        owner = linalg if dotted.startswith("linalg.") else cupy
        setattr(owner, dotted.rsplit(".", 1)[-1], _named(_of_arrays(_numpy_function(dotted)), dotted))
    for name in OF_SEQUENCE:
        setattr(cupy, name, _named(_of_sequence(getattr(numpy, name)), name))
    for name in FILLED:
        setattr(cupy, name, _named(_filled(getattr(numpy, name)), name))
    for name in FILLED_LIKE:
        setattr(cupy, name, _named(_of_arrays(getattr(numpy, name)), name))
    for name in DTYPES:
        setattr(cupy, name, getattr(numpy, name))
    for name in ("pi", "e", "inf", "nan", "newaxis"):
        setattr(cupy, name, getattr(numpy, name))
    cupy.asarray, cupy.array, cupy.asnumpy = asarray, array, asnumpy
    cupy.asanyarray = asarray
    cupy.empty, cupy.empty_like = empty, empty_like
    cupy.get_array_module = get_array_module
    cupy.linalg, cupy.lib = linalg, lib
    lib.stride_tricks = stride_tricks
    stride_tricks.as_strided = as_strided
    cupy.random = _random_module()
    tree = {"cupy": cupy, "cupy.linalg": linalg, "cupy.lib": lib, "cupy.lib.stride_tricks": stride_tricks,
            "cupy.random": cupy.random}
    tree.update(_cuda_modules())
    cupy.cuda = tree["cupy.cuda"]

    cupyx = _module("cupyx")
    scipy = _module("cupyx.scipy")
    sparse = _module("cupyx.scipy.sparse")
    sparse_linalg = _module("cupyx.scipy.sparse.linalg")
    sparse_linalg.LinearOperator = _eigsh.LinearOperator
    sparse_linalg.eigsh = _eigsh.eigsh_v13
    cupyx.scipy, scipy.sparse, sparse.linalg = scipy, sparse, sparse_linalg
    tree.update({"cupyx": cupyx, "cupyx.scipy": scipy, "cupyx.scipy.sparse": sparse,
                 "cupyx.scipy.sparse.linalg": sparse_linalg})
    for name, module in tree.items():
        module.__file__ = __file__
        module.__path__ = [] if any(other.startswith(name + ".") for other in tree) else None
        if module.__path__ is None:
            del module.__path__
    return tree


_TREE = _build()
_array._namespace["cupy"] = _TREE["cupy"]
TREE = _TREE
