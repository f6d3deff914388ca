"""Stochastic gradient descent.

For each parameter p with gradient g (from the layer's ``grads``):

    d = g + weight_decay * p
    v <- momentum * v + d            (only when momentum > 0)
    p <- p - lr * (v if momentum > 0 else d)

The paper's protocol uses plain SGD: momentum 0, weight decay 0, fixed LR.
:meth:`SGD.updates` returns the step without applying it and without touching the
momentum buffers, for instruments that need "the update the optimizer applies"
(internal covariate shift).
"""

import math

from minibn import backend


class SGD:
    """``SGD(model_or_layers, lr, momentum=0.0, weight_decay=0.0)``.

    ``model_or_layers`` is a :class:`~minibn.nn.Sequential` or a list of layers;
    the optimizer reads each layer's ``params`` and ``grads`` at every step.
    """

    def __init__(self, layers, lr, momentum=0.0, weight_decay=0.0):
        self.layers = list(getattr(layers, "layers", layers))
        for arg, v in (("lr", lr), ("momentum", momentum), ("weight_decay", weight_decay)):
            # NumPy's real scalars (np.float32(0.1)) are numbers too; bools and complex are not
            real = isinstance(v, (int, float, backend.host.integer, backend.host.floating)) and not isinstance(v, bool)
            if not real or not math.isfinite(v) or v < 0:
                raise ValueError(f"SGD: {arg} must be a finite number >= 0, got {v!r}")
        self.lr, self.momentum, self.weight_decay = float(lr), float(momentum), float(weight_decay)
        self.velocity = {}

    def _direction(self, i, key):
        layer = self.layers[i]
        if key not in layer.grads:
            raise ValueError(f"SGD: {layer.describe()} (layer {i}) has no gradient for {key!r}; run backward before step")
        d = layer.grads[key]
        if self.weight_decay:
            d = d + self.weight_decay * layer.params[key]
        if self.momentum:
            v = self.velocity.get((i, key))
            d = d if v is None else self.momentum * v + d
        return d

    def updates(self, lr=None):
        """``{layer_index: {key: delta}}``: what :meth:`step` would add to each parameter."""
        lr = self.lr if lr is None else float(lr)
        return {i: {k: -lr * self._direction(i, k) for k in layer.params}
                for i, layer in enumerate(self.layers) if layer.params}

    def step(self):
        for i, layer in enumerate(self.layers):
            for key, p in layer.params.items():
                d = self._direction(i, key)
                if self.momentum:
                    self.velocity[(i, key)] = d if d is not layer.grads[key] else d.copy()
                p -= self.lr * d

    def state(self):
        return {"velocity": {f"{i}/{k}": backend.to_host(v).copy() for (i, k), v in self.velocity.items()}}

    def load_state(self, state):
        self.velocity = {}
        for name, v in state.get("velocity", {}).items():
            i, k = name.split("/", 1)
            xp = backend.array_module(self.layers[int(i)].params[k])
            self.velocity[(int(i), k)] = backend.to_device(v, xp)
