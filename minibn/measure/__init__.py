"""The instruments: measurements taken during training that never change the model.

* :mod:`minibn.measure.ics` -- internal covariate shift (Definition 2.1);
* :mod:`minibn.measure.landscape` -- loss and gradient along the gradient direction;
* :mod:`minibn.measure.moments` -- activation moments and samples for ridge plots;
* :mod:`minibn.measure.hessian` -- Hessian-vector products, top eigenvalue, trace, curvature;
* :mod:`minibn.measure.slq` -- the Hessian's eigenvalue density by stochastic Lanczos quadrature;
* :mod:`minibn.measure.effective_lr` -- norm, effective learning rate and step angle of the
  weights feeding a normalizer;
* :mod:`minibn.measure.depth` -- gradient norms and representation ranks against depth;
* :mod:`minibn.measure.theorychecks` -- the paper's Section 4 statements on every BatchNorm layer of a
  training model (docs/theory.md).

Every instrument runs the model in ``"probe"`` mode (batch statistics, no state
change) and brackets its work with the model's snapshot (``with model.snapshot():``),
which writes back the parameters bit-exactly and puts back each layer's state,
gradients and forward cache, so a measurement is invisible to the training loop
around it. Each instrument also comes as a callback for :func:`minibn.train.train`, a
:class:`Recorder` (``name``, ``every``, ``__call__(step, model, x, target, optimizer)``,
``result()``, ``state()``, ``load_state()``). Results are JSON-able: a non-finite value
is stored as ``None`` (JSON ``null``); see docs/instruments.md.
"""

from minibn.io import json_float  # noqa: F401  (the instruments' one rule for non-finite values)


def block_vector(model, block, source="grads"):
    """The concatenated gradients (or parameters) of the layers in ``block``, flat, in flat-view order."""
    xp = model.xp
    parts = [getattr(model[i], source)[k].ravel() for i in block for k in model[i].params]
    return xp.concatenate(parts)


def _copy(records):
    """A copy of nested dicts and lists, so a result handed out never aliases the records."""
    if isinstance(records, dict):
        return {k: _copy(v) for k, v in records.items()}
    if isinstance(records, list):
        return [_copy(v) for v in records]
    return records


class Recorder:
    """Base of the instruments' callbacks: ``name``, ``every`` and ``records``, a dict of
    lists that each measurement appends to.

    ``result()`` and ``state()`` are copies of the records; ``load_state(state)`` puts back
    the keys the records have (a checkpoint's JSON round trip gives lists back as lists).
    Subclasses implement ``__call__(step, model, x, target, optimizer)``.
    """

    def __init__(self, name, every, records):
        if int(every) != every or every < 1:
            raise ValueError(f"{type(self).__name__}: every must be a positive integer, got {every!r}")
        self.name, self.every, self.records = name, int(every), records

    def __call__(self, step, model, x, target, optimizer):
        raise NotImplementedError

    def result(self):
        return _copy(self.records)

    def state(self):
        return _copy(self.records)

    def load_state(self, state):
        self.records = {k: _copy(state[k]) for k in self.records}
