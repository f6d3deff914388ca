"""Every instrument on a tiny float32 VGG with noisy BatchNorm (NHWC conv maps, pooling,
cross-entropy): the setting of the VGG study. Results are finite and JSON-able, and the
model (parameters, running statistics, noise generators, gradients) is left untouched."""

import json

import numpy as np
import pytest

from minibn import backend, models, nn, optim
from minibn.measure import hessian, ics, landscape, moments
from tests.measure._tiny import assert_untouched, fingerprint


@pytest.mark.parametrize("norm", ["noisy", None])
def test_instruments_on_a_tiny_vgg(xp, norm):
    model = models.vgg(config=[2, "M", 3, "M"], norm=norm, input_size=4, rng=0).to(backend.name_of(xp))
    rng = np.random.default_rng(1)
    x = backend.to_device(rng.normal(size=(6, 4, 4, 3)).astype("float32"), xp)
    labels = backend.to_device(rng.integers(0, 10, size=6), xp)
    opt = optim.SGD(model, lr=0.1)
    for _ in range(2):  # move running statistics and noise generators away from their start
        model.value_and_grad(nn.softmax_cross_entropy, x, labels, mode="train")
        opt.step()
    model.value_and_grad(nn.softmax_cross_entropy, x, labels, mode="train")
    before = fingerprint(model)
    relus = [i for i, layer in enumerate(model) if isinstance(layer, nn.ReLU)]

    out = {
        "ics": ics.measure_ics(model, nn.softmax_cross_entropy, x, labels, opt),
        "landscape": landscape.probe_gradient_direction(model, nn.softmax_cross_entropy, x, labels, [0.05, 0.1, 0.4]),
        "curvature": hessian.gradient_curvature(model, nn.softmax_cross_entropy, x, labels),
        "top": hessian.top_eigenvalue(model, nn.softmax_cross_entropy, x, labels, tol=1e-6)["eigenvalue"],
    }
    rec = moments.MomentsRecorder(relus, every=1, n_samples=10, seed=0)
    rec(0, model, x, labels, opt)
    out["moments"] = rec.result()

    assert_untouched(model, before)
    assert len(out["ics"]["l2"]) == 3 and all(v is not None for v in out["ics"]["l2"] + out["ics"]["cos"])
    assert out["landscape"]["nonfinite"] == 0 and out["landscape"]["beta_eff"] > 0
    assert out["top"] is not None and out["curvature"] is not None
    assert abs(out["curvature"]) <= abs(out["top"]) * (1 + 1e-4)  # a Rayleigh quotient is bounded by |lambda|_max
    assert [len(s["samples"][0]) for s in out["moments"]["layers"].values()] == [10, 10]  # 6*4*4 and 6*2*2 values
    json.dumps(out, allow_nan=False)
