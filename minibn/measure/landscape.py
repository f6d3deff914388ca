"""The loss landscape along the gradient direction (docs/protocol.md §3, paper Sec 3.2 and A.2.2).

At weights w with gradient g = grad L(w) on a batch (probe mode), for each step size
eta' of a grid:

    loss(eta')      = L(w - eta' g)
    grad_diff(eta') = ||grad L(w - eta' g) - g||_2                (gradient predictiveness)
    beta(eta')      = grad_diff(eta') / ||eta' g||_2             (effective beta-smoothness)

and per measurement the bands ``loss_min``/``loss_max`` (over the grid) and
``gradpred_min``/``gradpred_max``, and ``beta_eff = max_eta' beta(eta')``.

A probe whose loss or gradient difference is NaN or infinite is recorded as ``None``
and counted in ``nonfinite``; the bands and beta_eff run over the finite values only
(``None`` when there are none). A zero gradient makes beta undefined (``None``).

Arithmetic happens in the model's dtype: a float32 model is probed in float32, where
the far probes of an unnormalized network overflow sooner (they are then counted as
non-finite); the studies build the DLN in float64. Cost: 1 + len(etas)
forward/backward passes. The weights are written back bit-exactly.
"""

import math

from minibn import backend
from minibn.measure import Recorder, json_float


def _band(values):
    finite = [v for v in values if v is not None]
    return (min(finite), max(finite)) if finite else (None, None)


def probe_gradient_direction(model, loss_fn, x, target, etas):
    """Probe w - eta' g for each eta' in ``etas``; see the module docstring for the keys.

    Returns ``{"eta", "loss", "grad_diff", "beta"`` (per-eta lists), ``"loss_min",
    "loss_max", "gradpred_min", "gradpred_max", "beta_eff", "nonfinite", "loss0",
    "grad_norm"}`` where ``loss0`` = L(w) and ``grad_norm`` = ||g||.
    """
    etas = [float(e) for e in etas]
    if not etas or any(not math.isfinite(e) or e <= 0 for e in etas):
        raise ValueError(f"probe_gradient_direction: etas must be a non-empty list of positive step sizes, got {etas!r}")
    xp = model.xp
    out = {"eta": etas, "loss": [], "grad_diff": [], "beta": []}
    # Far probes overflow by design; the values are recorded as non-finite, not raised.
    with model.snapshot(), backend.host.errstate(all="ignore"):
        w0 = model.flat_params()
        loss0 = model.value_and_grad(loss_fn, x, target, mode="probe")
        g = model.flat_grads()
        grad_norm = float(xp.linalg.norm(g))
        nonfinite = 0
        for eta in etas:
            model.set_flat_params(w0 - eta * g)
            loss = model.value_and_grad(loss_fn, x, target, mode="probe")
            diff = float(xp.linalg.norm(model.flat_grads() - g))
            if not (math.isfinite(loss) and math.isfinite(diff)):
                nonfinite += 1
            step = eta * grad_norm
            out["loss"].append(json_float(loss))
            out["grad_diff"].append(json_float(diff))
            out["beta"].append(json_float(diff / step) if step > 0 else None)
    out["loss_min"], out["loss_max"] = _band(out["loss"])
    out["gradpred_min"], out["gradpred_max"] = _band(out["grad_diff"])
    out["beta_eff"] = _band(out["beta"])[1]
    out["nonfinite"] = nonfinite
    out["loss0"], out["grad_norm"] = json_float(loss0), json_float(grad_norm)
    return out


class LandscapeRecorder(Recorder):
    """Callback: :func:`probe_gradient_direction` every ``every`` steps on that step's batch.

    ``etas`` are absolute step sizes (e.g. ``[f * lr for f in (0.5, 1, 2, 4)]``).
    ``result()``: ``{"steps": [t], key: [value per t]}`` for every key the probe returns
    (``eta`` once, as a list).
    """

    KEYS = ("loss", "grad_diff", "beta", "loss_min", "loss_max", "gradpred_min", "gradpred_max",
            "beta_eff", "nonfinite", "loss0", "grad_norm")

    def __init__(self, loss_fn, etas, every=100, *, name="landscape"):
        super().__init__(name, every, {"steps": [], **{k: [] for k in self.KEYS}})
        self.loss_fn, self.etas = loss_fn, [float(e) for e in etas]

    def __call__(self, step, model, x, target, optimizer):
        out = probe_gradient_direction(model, self.loss_fn, x, target, self.etas)
        self.records["steps"].append(int(step))
        for key in self.KEYS:
            self.records[key].append(out[key])

    def result(self):
        return {"eta": list(self.etas), **super().result()}
