"""The effective learning rate of scale-invariant weights (Arora, Li, Lyu, ICLR 2019; beyond the paper).

A weight layer whose output feeds a normalization (BatchNorm, the Lp variants, LayerNorm,
GroupNorm: any :class:`~minibn.nn.normalization.AffineNorm`) computes the same loss for W and
a W (a > 0), up to the normalizer's eps. Then the gradient g = dL/dW is orthogonal to W, it
scales as 1/a, and a GD step of learning rate eta moves the direction W/||W|| as a step of
eta / ||W||^2 would move a unit-norm weight: the *effective learning rate*. Plain GD without
weight decay grows the norm, ||W_{t+1}||^2 = ||W_t||^2 + eta^2 ||g_t||^2 (exact at eps = 0;
minibn.theory.gd_norm_growth and the theory study check both identities), so the effective
rate falls as training goes on.

:class:`EffectiveLRRecorder`, a training callback, measures at its steps t, for each such layer
(W only; a bias before a normalization has gradient 0 and no direction to speak of):

    norm       ||W_t||  (Frobenius, the whole layer)
    eff_lr     eta / ||W_t||^2
    angle      the angle between W_t and W_{t+1} = W_t + u_t, u_t the update the optimizer
               would apply for the gradient of step t's batch (optimizer.updates(): momentum and
               weight decay included), in radians, as atan2(||W_{t+1} - <W_{t+1}, e> e||,
               <W_{t+1}, e>) with e = W_t/||W_t|| (accurate for small angles, where arccos is not)
    grad_cos   <g_t, W_t> / (||g_t|| ||W_t||), 0 for an exactly scale-invariant weight

The gradient is taken in probe mode (batch statistics, no state change) on the step's batch, so
it is the gradient training then takes, except for noisy layers' draws. Cost: one forward and
backward per measurement.
"""

import math

from minibn import backend
from minibn.measure import Recorder, json_float
from minibn.nn.normalization import AffineNorm


def normalized_weight_layers(model):
    """Indices of the layers with a weight ``W`` whose output goes straight into a normalizer."""
    return [i for i in range(len(model) - 1)
            if "W" in model[i].params and isinstance(model[i + 1], AffineNorm)]


def step_geometry(W, update, grad):
    """``{"norm", "angle", "grad_cos"}`` of a weight W, the update u it would receive and its gradient."""
    xp = backend.array_module(W)
    norm = float(xp.linalg.norm(W))
    after = W + update
    along = float(xp.vdot(after, W)) / norm
    across = float(xp.linalg.norm(after - (along / norm) * W))
    g_norm = float(xp.linalg.norm(grad))
    grad_cos = float(xp.vdot(grad, W)) / (g_norm * norm) if g_norm > 0 and norm > 0 else math.nan
    return {"norm": norm, "angle": math.atan2(across, along), "grad_cos": grad_cos}


class EffectiveLRRecorder(Recorder):
    """Callback: per weight layer feeding a normalization, ||W||, eta/||W||^2, the angle of the
    step and the gradient's cosine with W (module docstring).

    ``result()``: ``{"steps": [t], "layers": [model index], "norm": [[per layer]], "eff_lr": [[...]],
    "angle": [[...]], "grad_cos": [[...]]}``; non-finite values are ``None``.
    """

    def __init__(self, loss_fn, every=100, name="effective_lr"):
        super().__init__(name, every, {"steps": [], "layers": [], "norm": [], "eff_lr": [], "angle": [],
                                       "grad_cos": []})
        self.loss_fn = loss_fn

    def __call__(self, step, model, x, target, optimizer):
        layers = normalized_weight_layers(model)
        rec = self.records
        rec["layers"] = layers
        rec["steps"].append(int(step))
        with model.snapshot():
            model.value_and_grad(self.loss_fn, x, target, mode="probe")
            updates = optimizer.updates()
            rows = [step_geometry(model[i].params["W"], updates[i]["W"], model[i].grads["W"]) for i in layers]
        rec["norm"].append([json_float(r["norm"]) for r in rows])
        rec["eff_lr"].append([json_float(optimizer.lr / r["norm"] ** 2) if r["norm"] > 0 else None for r in rows])
        rec["angle"].append([json_float(r["angle"]) for r in rows])
        rec["grad_cos"].append([json_float(r["grad_cos"]) for r in rows])
