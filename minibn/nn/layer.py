"""The layer contract and :class:`Sequential`.

Every layer module has a functional core, ``forward(x, ...) -> (y, cache)`` and
``backward(dy, cache) -> (dx, grads)``, and a thin :class:`Layer` subclass that
holds ``params`` (a dict of arrays), ``grads`` (same keys, filled by
``backward``) and any state (running statistics, a noise generator).

A layer runs in two ways. ``forward(x, mode)`` / ``backward(dy)`` use its own parameters,
keep the cache and fill ``grads`` (training, the instruments). ``apply(params, x, mode) ->
(y, cache)`` / ``apply_backward(dy, cache) -> (dx, grads)`` run it on the parameters given
and keep nothing on the layer: the functional face, for a layer whose parameters are computed
by another (WeightNorm runs its Dense or Conv2d on W = g v/||v||).

Modes are explicit and the same for every layer:

* ``"train"``: batch statistics, state updated (running statistics, noise drawn);
* ``"eval"``: running statistics, no noise, no state change;
* ``"probe"``: batch statistics as in training, but no state change at all; every
  measurement uses it, so measuring never changes the model.

What a measurement may still disturb (parameters it moves on purpose, gradients, the
forward cache) is saved by ``model.snapshot()`` and written back by its ``restore()``.
"""

import copy
import functools

from minibn import backend

MODES = ("train", "eval", "probe")


class LayerError(ValueError):
    """Bad input to a layer: the message names the layer, the argument and the shapes."""


def check_mode(layer, mode):
    """Raise a LayerError naming ``layer`` (a Layer or a name) unless ``mode`` is one of MODES."""
    if mode not in MODES:
        name = layer if isinstance(layer, str) else layer.describe()
        raise LayerError(f"{name}: mode must be one of {MODES}, got {mode!r}")


def check_input(layer, arg, x, ndims=None, last_dim=None, dtype=None, dtype_of="the layer's parameters"):
    """Validate an array at a layer's public boundary; errors name layer and argument.

    ``dtype``, when given, is the dtype ``x`` must have, that of ``dtype_of``.
    """
    shape = getattr(x, "shape", None)
    if (shape is not None and hasattr(x, "dtype") and (ndims is None or x.ndim in ndims)
            and (last_dim is None or shape[-1] == last_dim) and x.dtype.kind == "f"
            and (dtype is None or x.dtype == dtype)):
        return  # the hot path: every forward and backward passes here, so no message is built
    name = layer if isinstance(layer, str) else layer.describe()
    if shape is None or not hasattr(x, "dtype"):
        raise LayerError(f"{name}: {arg} must be an array, got {type(x).__name__}")
    if ndims is not None and x.ndim not in ndims:
        want = " or ".join(f"{n}-D" for n in ndims)
        raise LayerError(f"{name}: {arg} must be {want}, got shape {tuple(shape)}")
    if last_dim is not None and shape[-1] != last_dim:
        raise LayerError(
            f"{name}: {arg} has {shape[-1]} features/channels on its last axis "
            f"(shape {tuple(shape)}), expected {last_dim}"
        )
    if x.dtype.kind != "f":
        raise LayerError(f"{name}: {arg} must be a floating-point array, got dtype {x.dtype}")
    if dtype is not None and x.dtype != dtype:
        raise LayerError(
            f"{name}: {arg} has dtype {x.dtype} but {dtype_of} are {dtype}; "
            f"convert one of them explicitly (minibn never upcasts silently)"
        )


class Layer:
    """Base class: ``params``/``grads`` dicts, explicit modes, a cache for backward.

    Subclasses implement, usually by calling the module's functional core:

    * ``_apply(params, x, mode) -> (y, cache)``: the forward on the parameters given (read them
      from ``params``, never from ``self.params``), in ``mode``; it may move the layer's state
      (running statistics, noise) in train mode, and nothing else;
    * ``_backward(dy, cache) -> (dx, grads)``: from the cache alone (it holds what backward needs
      of the parameters and of the mode the forward ran in);
    * for the exact Hessian-vector product, ``_tangent_forward`` and ``_tangent_backward``
      (below), from the cache too.

    :meth:`forward` runs ``_forward(x, mode)``, which is ``_apply(self.params, x, mode)``; a layer
    that only ever runs on its own parameters may override ``_forward`` instead of ``_apply``
    (its :meth:`apply` then refuses). Stateful layers also override :meth:`state` and
    :meth:`load_state`.
    """

    #: Dense and Conv2d start a parameter block; a normalization layer after them
    #: joins that block (the paper's "layer i" = a weight layer with its BN's gamma, beta).
    starts_block = False

    #: Names of array attributes that are state (running statistics): saved by
    #: :meth:`state`, restored by :meth:`load_state`, moved by :meth:`to` and
    #: converted by :meth:`astype` together with the parameters.
    buffers = ()

    def __init__(self):
        self.params = {}
        self.grads = {}
        self._cache = None
        self._out_shape = None
        self._out_dtype = None
        self._declared = {}

    def __init_subclass__(cls, **kwargs):
        # Every layer's constructor ends by declaring its parameters (names, shapes, dtypes), so
        # that a parameter a user assigns later is checked against them on the next forward.
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is None:
            return

        @functools.wraps(init)
        def init_then_declare(self, *args, **kw):
            init(self, *args, **kw)
            self._declare_params()

        cls.__init__ = init_then_declare

    def _declare_params(self):
        self._declared = {k: (tuple(v.shape), v.dtype) for k, v in self.params.items()}

    def _check_params(self):
        """LayerError naming the layer and the parameter unless every parameter is an array of the
        declared shape and dtype (a wrong shape would broadcast silently, in forward and in SGD)."""
        params = self.params
        if len(params) == len(self._declared) and all(
                getattr(params.get(k), "shape", None) == shape and getattr(params.get(k), "dtype", None) == dtype
                for k, (shape, dtype) in self._declared.items()):
            return
        name = self.describe()
        if not isinstance(params, dict) or set(params) != set(self._declared):
            got = sorted(params) if isinstance(params, dict) else type(params).__name__
            raise LayerError(f"{name}: params must hold exactly {sorted(self._declared)}, got {got}")
        for key, (shape, dtype) in self._declared.items():
            value = params[key]
            if not hasattr(value, "shape") or not hasattr(value, "dtype"):
                raise LayerError(f"{name}: parameter {key!r} must be an array of shape {shape} and dtype {dtype}, "
                                 f"got {type(value).__name__} {value!r}")
            if tuple(value.shape) != shape:
                raise LayerError(f"{name}: parameter {key!r} has shape {tuple(value.shape)}, the layer declares {shape}")
            if value.dtype != dtype:
                raise LayerError(f"{name}: parameter {key!r} has dtype {value.dtype}, the layer's parameters are "
                                 f"{dtype} (convert the model with astype)")

    def describe(self):
        return type(self).__name__

    def __repr__(self):
        return self.describe()

    @property
    def dtype(self):
        for p in self.params.values():
            return p.dtype
        return None

    def forward(self, x, mode="train"):
        check_mode(self, mode)
        self._check_params()
        y, self._cache = self._forward(x, mode)
        self._out_shape, self._out_dtype = y.shape, y.dtype
        return y

    def backward(self, dy):
        if self._cache is None:
            raise LayerError(f"{self.describe()}: backward called before forward (nothing cached)")
        check_input(self, "dy", dy, dtype=self._out_dtype, dtype_of="the forward output's values")
        if dy.shape != self._out_shape:
            raise LayerError(
                f"{self.describe()}: backward got dy of shape {tuple(dy.shape)}, "
                f"but forward produced shape {tuple(self._out_shape)}"
            )
        dx, self.grads = self._backward(dy, self._cache)
        return dx

    def _forward(self, x, mode):
        return self._apply(self.params, x, mode)

    def _apply(self, params, x, mode):
        if type(self)._forward is not Layer._forward:
            raise NotImplementedError(f"{self.describe()}: runs on its own parameters only (it implements _forward(x, "
                                      f"mode), not _apply(params, x, mode)), so apply() is not available")
        raise NotImplementedError(f"{self.describe()}: implements neither _apply(params, x, mode) (its forward on the "
                                  f"parameters given) nor _forward(x, mode) (on its own)")

    def _backward(self, dy, cache):
        raise NotImplementedError

    # --- the functional face: the same passes on given parameters, nothing kept on the layer ----
    def apply(self, params, x, mode):
        """``(y, cache)``: this layer's forward on ``params`` (a dict with the keys of its own
        ``params``) instead of its own parameters.

        Nothing is stored on the layer: its ``params``, ``grads`` and forward cache stay as they
        were (a later :meth:`backward` is still that of the last :meth:`forward`). Its state is
        the layer's, not the parameters': in ``"train"`` mode the running statistics and the
        noise generator move as in :meth:`forward`; ``"probe"`` and ``"eval"`` change nothing.
        The arrays are not checked against the declared shapes and dtypes (as the functional
        core's are not); the input is checked as in :meth:`forward`. The cache is for
        :meth:`apply_backward` and the tangent passes :meth:`apply_tangent_forward` and
        :meth:`apply_tangent_backward`.
        """
        check_mode(self, mode)
        if not isinstance(params, dict) or set(params) != set(self._declared):
            got = sorted(params) if isinstance(params, dict) else type(params).__name__
            raise LayerError(f"{self.describe()}: apply needs params with exactly the keys {sorted(self._declared)}, "
                             f"got {got}")
        return self._apply(params, x, mode)

    def apply_backward(self, dy, cache):
        """``(dx, grads)`` for the ``cache`` of :meth:`apply` (or of any forward of this layer): the
        gradients of the loss in the input and in the parameters that forward ran on. Stores nothing."""
        return self._backward(dy, cache)

    def apply_tangent_forward(self, x_t, params_t, cache):
        """``(y_t, tangent_cache)`` at the point of ``cache`` (from :meth:`apply`): :meth:`tangent_forward`'s pass."""
        return self._tangent_forward(x_t, params_t, cache)

    def apply_tangent_backward(self, dy, dy_t, cache, tangent_cache):
        """``(dx_t, grads_t)`` at the point of ``cache``: :meth:`tangent_backward`'s pass."""
        return self._tangent_backward(dy, dy_t, cache, tangent_cache)

    # --- second order: Pearlmutter's R-operator (docs/layers/sequential.md) ------------
    # At the point of the last forward, for a tangent x_t of the input and params_t of the
    # parameters (a dict with every key), ``tangent_forward`` gives y_t, the directional
    # derivative of the output; ``tangent_backward`` gives the directional derivative of
    # (dx, grads) when dy moves along dy_t. Both read the forward cache and change nothing.
    def tangent_forward(self, x_t, params_t):
        """``(y_t, tangent_cache)``: the tangent of the output at the last forward's point."""
        if self._cache is None:
            raise LayerError(f"{self.describe()}: tangent_forward called before forward (nothing cached)")
        return self.apply_tangent_forward(x_t, params_t, self._cache)

    def tangent_backward(self, dy, dy_t, tangent_cache):
        """``(dx_t, grads_t)``: the tangent of backward's (dx, grads) for dy moving along dy_t."""
        return self.apply_tangent_backward(dy, dy_t, self._cache, tangent_cache)

    @property
    def has_tangents(self):
        """Whether this layer implements the tangent passes (the exact Hessian-vector product needs them)."""
        return type(self)._tangent_forward is not Layer._tangent_forward

    def _tangent_forward(self, x_t, params_t, cache):
        raise NotImplementedError(f"{self.describe()}: no exact second-order pass (tangent_forward) is "
                                  f"implemented for this layer; use the Hessian tools' product='fd'")

    def _tangent_backward(self, dy, dy_t, cache, tangent_cache):
        raise NotImplementedError(f"{self.describe()}: no exact second-order pass (tangent_backward) is "
                                  f"implemented for this layer; use the Hessian tools' product='fd'")

    # Non-parameter state: running statistics (the ``buffers``), noise generators.
    # Values are host copies, so a saved state is never aliased by later training.
    def state(self):
        return {k: backend.to_host(getattr(self, k)).copy() for k in self.buffers}

    def load_state(self, state):
        unknown = sorted(set(state) - set(self.buffers))
        if unknown:
            raise LayerError(f"{self.describe()}: unexpected state keys {unknown}; its state is {list(self.buffers)}")
        values = {}
        for key in self.buffers:
            if key not in state:
                raise LayerError(f"{self.describe()}: state is missing {key!r}")
            old = getattr(self, key)
            # astype copies, so the loaded state never aliases the dict it came from
            value = backend.to_device(state[key], backend.array_module(old)).astype(old.dtype)
            if value.shape != old.shape:
                raise LayerError(f"{self.describe()}: state {key!r} has shape {tuple(value.shape)}, expected {tuple(old.shape)}")
            values[key] = value
        for key, value in values.items():
            setattr(self, key, value)

    def snapshot(self):
        """A :class:`Snapshot` of this layer: ``with layer.snapshot(): ...`` puts it back on exit."""
        return Snapshot(self._leaves())

    def _leaves(self):
        return [self]

    def clone(self):
        """A deep copy of parameters and state, without gradients or forward cache (the
        arrays of a past step are not copied)."""
        light = copy.copy(self)
        light.grads, light._cache, light._out_shape, light._out_dtype = {}, None, None, None
        return copy.deepcopy(light)

    def to(self, backend_name):
        """Move parameters and state to a backend ('numpy' or 'cupy') in place."""
        self.params = {k: backend.to_device(v, backend_name) for k, v in self.params.items()}
        self.grads = {k: backend.to_device(v, backend_name) for k, v in self.grads.items()}
        for k in self.buffers:
            setattr(self, k, backend.to_device(getattr(self, k), backend_name))
        self._cache = None
        return self

    def astype(self, dtype):
        """Convert parameters (and float state) to ``dtype`` in place."""
        self.params = {k: v.astype(dtype) for k, v in self.params.items()}
        for k in self.buffers:
            setattr(self, k, getattr(self, k).astype(dtype))
        self.grads = {}
        self._cache = None
        self._declare_params()
        return self


class Snapshot:
    """What a measurement may disturb, saved by ``model.snapshot()`` and written back by
    :meth:`restore`: for every layer its parameters, state, gradients and forward cache.

    Parameters are copied and written back in place (``p[...] = saved``), so they are
    bit-identical afterwards and keep their identity (an optimizer holding them stays
    valid); state (running statistics, noise generators) goes back through the layer's
    ``load_state``; the ``grads`` dict and the forward cache are put back as they were, so
    a measurement taken between a training step's backward and its update would not
    change that update. Use as a context manager: ``with model.snapshot(): ...``.
    """

    def __init__(self, layers):
        self._saved = [(layer, {k: p.copy() for k, p in layer.params.items()}, layer.state(),
                        (layer.grads, layer._cache, layer._out_shape, layer._out_dtype)) for layer in layers]

    def restore(self):
        for layer, params, state, transient in self._saved:
            for key, saved in params.items():
                layer.params[key][...] = saved
            layer.load_state(state)
            layer.grads, layer._cache, layer._out_shape, layer._out_dtype = transient

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.restore()
        return False


def _is_index(i):
    return isinstance(i, int) and not isinstance(i, bool)


class Sequential(Layer):
    """Layers applied in order; the flat views used by the landscape and Hessian tools.

    ``model[i]`` is layer i, with its own ``params`` and ``grads``. The flat view
    concatenates every parameter in layer order, then key order as created.
    """

    def __init__(self, *layers):
        super().__init__()
        if len(layers) == 1 and isinstance(layers[0], (list, tuple)):
            layers = tuple(layers[0])
        for i, layer in enumerate(layers):
            if not isinstance(layer, Layer):
                raise LayerError(f"Sequential: item {i} is {type(layer).__name__}, not a minibn Layer")
        self.layers = list(layers)

    def describe(self):
        return f"Sequential({len(self.layers)} layers)"

    def __repr__(self):
        inner = ",\n  ".join(f"[{i}] {layer!r}" for i, layer in enumerate(self.layers))
        return f"Sequential(\n  {inner}\n)"

    def __getitem__(self, i):
        return self.layers[i]

    def __len__(self):
        return len(self.layers)

    def __iter__(self):
        return iter(self.layers)

    @property
    def dtype(self):
        for layer in self.layers:
            if layer.dtype is not None:
                return layer.dtype
        return None

    def forward(self, x, mode="train", start=0, stop=None):
        """``layers[start:stop]`` applied to ``x``, the input of layer ``start``: a caller that
        changes only the upper layers (ICS, block by block) reuses the activation below them."""
        check_mode(self, mode)
        stop = len(self.layers) if stop is None else stop
        if not (_is_index(start) and _is_index(stop) and 0 <= start <= stop <= len(self.layers)):
            raise LayerError(f"{self.describe()}: forward's start and stop must be layer indices with "
                             f"0 <= start <= stop <= {len(self.layers)}, got start={start!r}, stop={stop!r}")
        for layer in self.layers[start:stop]:
            x = layer.forward(x, mode)
        return x

    def backward(self, dy, first=0):
        """Backward through ``layers[first:]``, last to first; returns the gradient of their input.
        Layers before ``first`` keep the ``grads`` they had: a caller that needs the gradients of
        the upper layers only (ICS, block by block) stops there and saves the rest of the pass."""
        if not (_is_index(first) and 0 <= first < len(self.layers)):
            raise LayerError(f"{self.describe()}: backward's first must be a layer index in 0..{len(self.layers) - 1}, "
                             f"got {first!r}")
        for layer in reversed(self.layers[first:]):
            dy = layer.backward(dy)
        return dy

    def value_and_grad(self, loss_fn, x, target, mode="train", first=0, start=0):
        """Forward, loss, backward: returns the loss and fills the ``grads`` of every layer (of
        ``layers[first:]`` with ``first``, see :meth:`backward`). With ``start``, ``x`` is the
        input of layer ``start`` (see :meth:`forward`), which must not come after ``first``."""
        if _is_index(start) and _is_index(first) and start > first:
            raise LayerError(f"{self.describe()}: value_and_grad's start ({start}) comes after first ({first}): "
                             f"the backward down to layer {first} needs the forward from there")
        out = self.forward(x, mode, start)
        loss, dout = loss_fn(out, target)
        self.backward(dout, first)
        return loss

    @property
    def has_tangents(self):
        return all(layer.has_tangents for layer in self.layers)

    def hvp(self, loss_fn, x, target, v, mode="probe", *, loss_tangent):
        """H v, the Hessian of ``loss_fn(self.forward(x, mode), target)`` in the flat parameters
        times the flat vector v, exact (Pearlmutter's R-operator), as a new flat vector.

        ``loss_tangent(pred, target, pred_t)`` is the tangent of the loss gradient dL/dpred when
        pred moves along pred_t: :func:`minibn.nn.losses.loss_tangent` finds it for minibn's
        losses (``model.hvp(loss_fn, x, target, v, loss_tangent=losses.loss_tangent(loss_fn))``).

        Forward, then the tangent of every layer's output along v (the input does not move),
        the tangent of the loss gradient, then backward and its tangent layer by layer; the
        parameter-gradient tangents are H v. Kinks (ReLU masks, pooling argmaxes, Lp signs) stay
        as the forward found them: the Hessian of the smooth piece the parameters sit in. Fills
        ``grads`` and the caches like :meth:`value_and_grad`; the Hessian tools wrap it in a snapshot.
        """
        xp = self.xp
        if not hasattr(v, "ndim") or v.ndim != 1 or v.size != self.num_params:
            raise LayerError(f"{self.describe()}: hvp needs a 1-D vector of {self.num_params} values, "
                             f"got {type(v).__name__} of shape {tuple(getattr(v, 'shape', ()))}")
        out = self.forward(x, mode)
        _, dout = loss_fn(out, target)
        params_t, start = [], 0
        for layer in self.layers:
            tangents = {}
            for key, p in layer.params.items():
                tangents[key] = v[start:start + p.size].reshape(p.shape).astype(p.dtype, copy=False)
                start += p.size
            params_t.append(tangents)
        x_t = xp.zeros_like(x)
        tangent_caches = []
        for layer, p_t in zip(self.layers, params_t):
            x_t, tangent_cache = layer.tangent_forward(x_t, p_t)
            tangent_caches.append(tangent_cache)
        dy, dy_t = dout, loss_tangent(out, target, x_t)
        grads_t = [None] * len(self.layers)
        for i in reversed(range(len(self.layers))):
            layer = self.layers[i]
            dx = layer.backward(dy)
            dy_t, grads_t[i] = layer.tangent_backward(dy, dy_t, tangent_caches[i])
            dy = dx
        parts = [grads_t[i][k].ravel() for i, k, _ in self.parameters()]
        return xp.concatenate(parts) if parts else xp.zeros(0, dtype=v.dtype)

    # --- parameters: per layer, per block, flat ---------------------------------
    def parameters(self):
        """``[(layer_index, key, array), ...]`` in flat-view order."""
        return [(i, k, v) for i, layer in enumerate(self.layers) for k, v in layer.params.items()]

    def blocks(self):
        """Layer indices grouped as the paper's "layers": each weight layer (Dense,
        Conv2d) with the parameterised layers (normalization) that follow it."""
        groups = []
        for i, layer in enumerate(self.layers):
            if not layer.params:
                continue
            if layer.starts_block or not groups:
                groups.append([i])
            else:
                groups[-1].append(i)
        return groups

    def block_slices(self):
        """For each block, the ``slice`` of the flat parameter vector it occupies."""
        offsets, start = {}, 0
        for i, k, v in self.parameters():
            offsets[(i, k)] = (start, start + v.size)
            start += v.size
        out = []
        for group in self.blocks():
            spans = [offsets[(i, k)] for i in group for k in self.layers[i].params]
            out.append(slice(spans[0][0], spans[-1][1]))
        return out

    @property
    def num_params(self):
        return sum(v.size for _, _, v in self.parameters())

    @property
    def xp(self):
        """The array module (NumPy or CuPy) the parameters live on; NumPy for a model without any."""
        arrays = [v for _, _, v in self.parameters()]
        return backend.array_module(*arrays) if arrays else backend.host

    def flat_params(self):
        """All parameters as one new 1-D array."""
        return self.xp.concatenate([v.ravel() for _, _, v in self.parameters()])

    def flat_grads(self):
        """All gradients (after a backward) as one new 1-D array, in flat-view order."""
        xp = self.xp
        parts = []
        for i, k, _ in self.parameters():
            if k not in self.layers[i].grads:
                raise LayerError(f"{self.layers[i].describe()} (layer {i}): no gradient for {k!r}; run backward first")
            parts.append(self.layers[i].grads[k].ravel())
        return xp.concatenate(parts)

    def set_flat_params(self, vector):
        """Write a 1-D vector into the parameters, in place (the arrays keep their identity)."""
        expected = self.num_params
        if not hasattr(vector, "ndim") or not hasattr(vector, "dtype"):
            raise LayerError(f"{self.describe()}: set_flat_params needs an array (NumPy or CuPy, on the model's "
                             f"backend), got {type(vector).__name__}")
        if vector.ndim != 1 or vector.size != expected:
            raise LayerError(f"{self.describe()}: set_flat_params needs a 1-D vector of {expected} values, got shape {tuple(vector.shape)}")
        if vector.dtype.kind not in "fiu":  # a complex vector would lose its imaginary part in the copy
            raise LayerError(f"{self.describe()}: set_flat_params needs a real vector, got dtype {vector.dtype}")
        start = 0
        for _, _, v in self.parameters():
            v[...] = vector[start:start + v.size].reshape(v.shape)
            start += v.size

    # --- state ----------------------------------------------------------------
    def _leaves(self):
        return [leaf for layer in self.layers for leaf in layer._leaves()]

    def clone(self):
        return Sequential([layer.clone() for layer in self.layers])

    def state(self):
        return {i: s for i, layer in enumerate(self.layers) if (s := layer.state())}

    def load_state(self, state):
        for i, s in state.items():
            if not str(i).isdigit() or int(i) >= len(self.layers):
                raise LayerError(f"{self.describe()}: load_state got state for layer {i!r}, but the layers are "
                                 f"0..{len(self.layers) - 1}")
            self.layers[int(i)].load_state(s)

    def to(self, backend_name):
        for layer in self.layers:
            layer.to(backend_name)
        return self

    def astype(self, dtype):
        for layer in self.layers:
            layer.astype(dtype)
        return self
