"""The instruments: measurements taken during training that never change the model.

* :mod:`minibn.measure.ics` -- internal covariate shift (Definition 2.1);
* :mod:`minibn.measure.landscape` -- loss and gradient along the gradient direction;
* :mod:`minibn.measure.moments` -- activation moments and samples for ridge plots;
* :mod:`minibn.measure.hessian` -- Hessian-vector products, top eigenvalue, trace, curvature.

Every instrument runs the model in ``"probe"`` mode (batch statistics, no state
change) and brackets its work with a :class:`Snapshot`, which writes back the
parameters bit-exactly and puts back each layer's gradients and forward cache, so
a measurement is invisible to the training loop around it. Each instrument also
comes as a callback for :func:`minibn.train.train` (``name``, ``every``,
``__call__(step, model, x, target, optimizer)``, ``result()``, ``state()``,
``load_state()``). Results are JSON-able: a non-finite value is stored as
``None`` (JSON ``null``); see docs/instruments.md.
"""

from minibn.io import json_float  # noqa: F401  (the instruments' one rule for non-finite values)


class Snapshot:
    """Saves what a measurement may disturb and writes it back on :meth:`restore`.

    Parameters are copied and written back in place (``p[...] = saved``), so they are
    bit-identical afterwards and keep their identity; each layer's ``grads`` dict and
    forward cache are put back as they were, so a measurement taken between a
    training step's backward and its update would not change that update.
    Use as a context manager: ``with Snapshot(model): ...``.
    """

    #: What a forward/backward leaves on a layer besides its parameters and state.
    TRANSIENT = ("grads", "_cache", "_out_shape", "_out_dtype")

    def __init__(self, model):
        self.params = [(layer, key, p.copy()) for layer in model for key, p in layer.params.items()]
        self.transient = [(layer, {a: getattr(layer, a) for a in self.TRANSIENT if hasattr(layer, a)})
                          for layer in model]

    def restore(self):
        for layer, key, saved in self.params:
            layer.params[key][...] = saved
        for layer, attributes in self.transient:
            for name, value in attributes.items():
                setattr(layer, name, value)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.restore()
        return False


def block_vector(model, block, source="grads"):
    """The concatenated gradients (or parameters) of the layers in ``block``, flat, in flat-view order."""
    xp = model._xp()
    parts = [getattr(model[i], source)[k].ravel() for i in block for k in model[i].params]
    return xp.concatenate(parts)


def check_every(owner, every):
    if int(every) != every or every < 1:
        raise ValueError(f"{owner}: every must be a positive integer, got {every!r}")
    return int(every)
