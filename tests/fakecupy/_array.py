"""The device array of the stand-in: a NumPy array kept out of NumPy's reach.

CuPy's rules that this class enforces (docs.cupy.dev, "The N-dimensional array"):
``cupy.ndarray`` and ``numpy.ndarray`` are not implicitly convertible to each other.
``numpy.asarray(device)`` raises ``TypeError`` (``__array__``); there is no buffer
protocol and no ``__array_interface__``; a host array of one dimension or more handed to
a device operation raises ``TypeError``; Python and NumPy scalars (and 0-d host arrays)
are accepted as scalars.  Reductions and integer indexing give 0-d device arrays, not
scalars; reading a value (``float``, ``int``, ``bool``, ``.item()``, ``.get()``,
formatting) is a device-to-host transfer and is counted.  NumPy functions called on a
device array dispatch to the stand-in's namesake, as CuPy's ``__array_function__`` does,
and raise ``TypeError`` where it has none.
"""

import numbers

import numpy

from ._counts import record

IMPLICIT_CONVERSION = ("Implicit conversion to a NumPy array is not allowed. "
                       "Please use `.get()` to construct a NumPy array explicitly.")

# Filled in by _namespace: the stand-in's cupy module, for __array_function__/__array_ufunc__.
_namespace = {}


def host_operand_error(value):
    return TypeError(f"Unsupported type {type(value)} (a host array of shape {getattr(value, 'shape', '?')} "
                     f"handed to a device operation; move it with cupy.asarray first)")


def operand(value):
    """The NumPy payload of one operand of a device operation; refuses host arrays."""
    if type(value) is ndarray:
        return value._data
    if isinstance(value, numpy.ndarray):
        if value.ndim == 0:
            return value
        raise host_operand_error(value)
    if isinstance(value, (numbers.Number, numpy.generic)) or value is None:
        return value
    raise TypeError(f"Unsupported type {type(value)}")


def unwrap(value):
    """Payloads of device arrays anywhere in an argument (sequences of arrays, out=...);
    host arrays of ndim > 0 are refused, other values (shapes, axes, dtypes) pass."""
    if type(value) is ndarray:
        return value._data
    if isinstance(value, numpy.ndarray):
        if value.ndim == 0:
            return value
        raise host_operand_error(value)
    if isinstance(value, (list, tuple)):
        return type(value)(unwrap(v) for v in value)
    return value


def _buffers(values, into):
    for v in values:
        if type(v) is ndarray:
            into.append(v._data)
        elif isinstance(v, (list, tuple)):
            _buffers(v, into)
    return into


def wrap(result):
    if isinstance(result, numpy.ndarray):
        return ndarray._of(result)
    if isinstance(result, numpy.generic):
        return ndarray._of(numpy.asarray(result))
    if isinstance(result, tuple):
        return tuple(wrap(r) for r in result)
    if isinstance(result, list):
        return [wrap(r) for r in result]
    return result


def _is_new_buffer(result, inputs):
    """Whether ``result`` came from a kernel (a new buffer) rather than being a view of an input."""
    arrays = [r for r in (result if isinstance(result, tuple) else (result,)) if isinstance(r, numpy.ndarray)]
    return any(not any(numpy.may_share_memory(r, i) for i in inputs) for r in arrays) or \
        any(isinstance(r, numpy.generic) for r in (result if isinstance(result, tuple) else (result,)))


def apply(func, args, kwargs, operands=None, ops=None):
    """Run ``func`` on payloads and wrap the result as device arrays.

    ``operands``: how many leading positional arguments are elementwise operands (strict:
    no sequences); the rest are unwrapped leniently.  ``ops``: device operations to count;
    by default one if the result is a new buffer (a view launches nothing).
    """
    n = len(args) if operands is None else operands
    raw_args = [operand(a) for a in args[:n]] + [unwrap(a) for a in args[n:]]
    out = kwargs.get("out")
    raw_kwargs = {k: unwrap(v) for k, v in kwargs.items()}
    result = func(*raw_args, **raw_kwargs)
    inputs = _buffers(list(args) + list(kwargs.values()), [])
    if ops is None:
        ops = 1 if out is not None or _is_new_buffer(result, inputs) else 0
    if ops:
        record("ops", ops)
    if out is not None and type(out) is ndarray:
        return out
    return wrap(result)


def _binary(name, reflected=False):
    ufunc = getattr(numpy, name)

    def method(self, other):
        if isinstance(other, (list, tuple)):
            raise TypeError(f"Unsupported type {type(other)}")
        if reflected:
            return apply(ufunc, (other, self), {})
        return apply(ufunc, (self, other), {})
    return method


def _inplace(name):
    ufunc = getattr(numpy, name)

    def method(self, other):
        ufunc(self._data, operand(other), out=self._data)
        record("ops")
        return self
    return method


def _unary(name):
    ufunc = getattr(numpy, name)

    def method(self):
        return apply(ufunc, (self,), {})
    return method


def _reduction_or_method(name, ops=None):
    def method(self, *args, **kwargs):
        return apply(getattr(numpy.ndarray, name), (self,) + args, kwargs, operands=1, ops=ops)
    method.__name__ = name
    return method


class ndarray:
    """A CuPy-like device array (a NumPy array held where NumPy cannot implicitly read it)."""

    __slots__ = ("_data",)
    __hash__ = None

    def __init__(self, shape, dtype=float, order="C"):
        # What cupy.ndarray(shape, dtype) does: allocate without filling.
        self._data = numpy.empty(shape, dtype=dtype, order=order)

    @classmethod
    def _of(cls, data):
        self = cls.__new__(cls)
        self._data = data
        return self

    # ------------------------------------------------------------------ conversions
    def __array__(self, *args, **kwargs):
        raise TypeError(IMPLICIT_CONVERSION)

    def get(self, stream=None, order="C", out=None, blocking=True):
        """A host copy: one device-to-host transfer."""
        record("to_host")
        if out is not None:
            out[...] = self._data
            return out
        return numpy.array(self._data, order=order)

    def set(self, arr, stream=None):
        """Copy a host array into this one: one host-to-device copy."""
        if not isinstance(arr, numpy.ndarray):
            raise TypeError(f"Only numpy.ndarray can be set to cupy.ndarray, got {type(arr)}")
        if arr.shape != self.shape:
            raise ValueError(f"Shape mismatch. Old shape: {self.shape}, new shape: {arr.shape}")
        record("to_device")
        self._data[...] = arr

    def _read(self):
        record("to_host")
        return self._data

    def item(self, *args):
        return self._read().item(*args)

    def tolist(self):
        return self._read().tolist()

    def __float__(self):
        return float(self._read())

    def __int__(self):
        return int(self._read())

    def __complex__(self):
        return complex(self._read())

    def __bool__(self):
        if self.size != 1:
            return bool(self._data)  # NumPy's ValueError (ambiguous truth value), no transfer
        return bool(self._read())

    def __repr__(self):
        return repr(self._read())

    def __str__(self):
        return str(self._read())

    def __format__(self, spec):
        return format(self._read() if self.ndim else self._read().item(), spec)

    def __copy__(self):
        return self.copy()

    def __deepcopy__(self, memo):
        # CuPy copies on the device; only pickling goes through the host.
        return self.copy()

    def __reduce__(self):
        # Pickling reads the data back (CuPy does the same); unpickling copies it to the device.
        return (_unpickle, (self.get(),))

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        if method != "__call__":
            return NotImplemented
        twin = getattr(_namespace.get("cupy"), ufunc.__name__, None)
        if twin is None:
            return NotImplemented
        return twin(*inputs, **kwargs)

    def __array_function__(self, func, types, args, kwargs):
        target = _namespace.get("cupy")
        for part in func.__module__.split(".")[1:]:
            if part.startswith("_"):
                continue
            target = getattr(target, part, None)
        twin = getattr(target, func.__name__, None)
        if twin is None:
            return NotImplemented
        return twin(*args, **kwargs)

    # ------------------------------------------------------------------ attributes
    shape = property(lambda self: self._data.shape)
    dtype = property(lambda self: self._data.dtype)
    ndim = property(lambda self: self._data.ndim)
    size = property(lambda self: self._data.size)
    itemsize = property(lambda self: self._data.itemsize)
    nbytes = property(lambda self: self._data.nbytes)
    strides = property(lambda self: self._data.strides)
    flags = property(lambda self: self._data.flags)

    @property
    def T(self):
        return ndarray._of(self._data.T)

    @property
    def real(self):
        return apply(numpy.real, (self,), {})

    def __len__(self):
        return len(self._data)

    def __iter__(self):
        if self.ndim == 0:
            raise TypeError("iteration over a 0-d array")
        return (self[i] for i in range(len(self)))

    # ------------------------------------------------------------------ indexing
    def _key(self, key):
        parts = key if isinstance(key, tuple) else (key,)
        raw = []
        for part in parts:
            if type(part) is ndarray:
                if part.dtype == bool:
                    record("to_host")  # the result's size must be read back before allocating it
                raw.append(part._data)
            elif isinstance(part, (numpy.ndarray, list)):
                record("to_device")  # CuPy copies a host index array to the device
                raw.append(numpy.asarray(part))
            else:
                raw.append(part)
        return tuple(raw) if isinstance(key, tuple) else raw[0]

    def __getitem__(self, key):
        result = self._data[self._key(key)]
        if isinstance(result, numpy.generic):
            result = numpy.asarray(result)
        elif not numpy.may_share_memory(result, self._data):
            record("ops")
        return ndarray._of(result)

    def __setitem__(self, key, value):
        if isinstance(value, numpy.ndarray) and value.ndim > 0:
            record("to_device")
        elif isinstance(value, (list, tuple)):
            raise TypeError(f"Unsupported type {type(value)}")
        else:
            value = operand(value)
        self._data[self._key(key)] = value
        record("ops")

    # ------------------------------------------------------------------ arithmetic
    __add__, __radd__ = _binary("add"), _binary("add", True)
    __sub__, __rsub__ = _binary("subtract"), _binary("subtract", True)
    __mul__, __rmul__ = _binary("multiply"), _binary("multiply", True)
    __truediv__, __rtruediv__ = _binary("true_divide"), _binary("true_divide", True)
    __floordiv__, __rfloordiv__ = _binary("floor_divide"), _binary("floor_divide", True)
    __mod__, __rmod__ = _binary("remainder"), _binary("remainder", True)
    __pow__, __rpow__ = _binary("power"), _binary("power", True)
    __matmul__, __rmatmul__ = _binary("matmul"), _binary("matmul", True)
    __and__, __rand__ = _binary("bitwise_and"), _binary("bitwise_and", True)
    __or__, __ror__ = _binary("bitwise_or"), _binary("bitwise_or", True)
    __xor__, __rxor__ = _binary("bitwise_xor"), _binary("bitwise_xor", True)
    __lt__, __le__ = _binary("less"), _binary("less_equal")
    __gt__, __ge__ = _binary("greater"), _binary("greater_equal")
    __eq__, __ne__ = _binary("equal"), _binary("not_equal")
    __iadd__, __isub__ = _inplace("add"), _inplace("subtract")
    __imul__, __itruediv__ = _inplace("multiply"), _inplace("true_divide")
    __ipow__, __imod__ = _inplace("power"), _inplace("remainder")
    __neg__, __pos__, __abs__ = _unary("negative"), _unary("positive"), _unary("absolute")
    __invert__ = _unary("invert")

    # ------------------------------------------------------------------ methods
    def copy(self, order="C"):
        return apply(numpy.array, (self,), {"order": order, "copy": True}, ops=1)

    def astype(self, dtype, order="K", casting=None, subok=None, copy=True):
        if not copy and numpy.dtype(dtype) == self.dtype:
            return self
        return apply(numpy.ndarray.astype, (self, dtype), {"order": order}, operands=1, ops=1)

    def fill(self, value):
        self._data.fill(operand(value))
        record("ops")


# Methods that are NumPy's own run on the payload (reductions launch a kernel, views none).
for _name in ("sum", "mean", "var", "std", "max", "min", "prod", "argmax", "argmin", "any", "all", "cumsum",
              "dot", "clip", "round", "conj", "trace", "diagonal", "reshape", "transpose", "squeeze", "swapaxes",
              "ravel", "flatten", "view", "repeat"):
    setattr(ndarray, _name, _reduction_or_method(_name))
del _name


# CuPy's own arrays report themselves as cupy.ndarray.
ndarray.__module__ = "cupy"


def _unpickle(host):
    record("to_device")
    return ndarray._of(host)
