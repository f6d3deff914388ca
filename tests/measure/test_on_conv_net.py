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
    # beyond finiteness: the full Hessian of exact products (float64 copy, probe mode) is symmetric and
    # its largest-magnitude eigenvalue is Lanczos' top; the curvature is its Rayleigh quotient at g
    with hessian.HessianOperator(model, nn.softmax_cross_entropy, x, labels) as op:
        eye = op.xp.eye(op.size)
        H = backend.to_host(op.xp.stack([op.matvec(eye[i]) for i in range(op.size)], axis=1))
        g = backend.to_host(op.grad)
    np.testing.assert_allclose(H, H.T, rtol=0, atol=1e-10 * abs(H).max())
    values = np.linalg.eigvalsh(H)
    assert out["top"] == pytest.approx(values[np.argmax(abs(values))], rel=1e-5)
    assert out["curvature"] == pytest.approx(g @ H @ g / (g @ g), rel=1e-6)
    assert [len(s["samples"][0]) for s in out["moments"]["layers"].values()] == [10, 10]  # 6*4*4 and 6*2*2 values
    json.dumps(out, allow_nan=False)


class FrozenMask(nn.Layer):
    """The smooth piece of a max-pool (FrozenReLU: of a ReLU) at a point: a fixed linear map, the
    selection of each window's argmax found by loops here, independent of the layers' tangent code."""

    def __init__(self, select, out_shape):
        super().__init__()
        self.select, self.shape = select, out_shape   # select[k]: the input index feeding output k

    def _forward(self, x, mode):
        return x.reshape(-1)[self.select].reshape(self.shape), x.shape

    def _backward(self, dy, x_shape):
        dx = np.zeros(int(np.prod(x_shape)))
        np.add.at(dx, self.select, dy.reshape(-1))
        return dx.reshape(x_shape), {}


def frozen(model, x):
    """The model with each ReLU and MaxPool2d replaced by its smooth piece at x (same parameter arrays)."""
    layers = []
    for layer in model:
        y = layer.forward(x, "probe")
        if isinstance(layer, nn.ReLU):
            layers.append(FrozenReLU(x > 0))
        elif isinstance(layer, nn.MaxPool2d):
            index = np.arange(x.size).reshape(x.shape)
            (kh, kw), (sh, sw) = layer.kernel_size, layer.stride
            select = np.empty(y.shape, dtype=int)
            for n, i, j, c in np.ndindex(*y.shape):
                window = x[n, i * sh:i * sh + kh, j * sw:j * sw + kw, c]
                a, b = np.unravel_index(np.argmax(window), window.shape)
                select[n, i, j, c] = index[n, i * sh + a, j * sw + b, c]
            layers.append(FrozenMask(select.reshape(-1), y.shape))
        else:
            layers.append(layer)
        x = y
    return nn.Sequential(layers)


class FrozenReLU(nn.Layer):
    def __init__(self, mask):
        super().__init__()
        self.mask = mask

    def _forward(self, x, mode):
        return x * self.mask, "mask"

    def _backward(self, dy, cache):
        return dy * self.mask, {}


def kinked_conv_net():
    """Conv2d -> BN -> ReLU -> MaxPool2d -> Flatten -> Dense (float64), with one ReLU input put
    within the old difference step of its kink along a direction v."""
    rng = np.random.default_rng(7)
    model = nn.Sequential([nn.Conv2d(2, 3, 3, padding=1, rng=rng, dtype="float64"), nn.BatchNorm(3, dtype="float64"),
                           nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Dense(12, 3, rng=rng, dtype="float64")])
    for _, _, p in model.parameters():
        p += 0.3 * rng.normal(size=p.shape)
    x, labels = rng.normal(size=(4, 4, 4, 2)), rng.integers(0, 3, size=4)
    v = rng.normal(size=model.num_params)
    relu_in = model[1].forward(model[0].forward(x, "probe"), "probe")
    # the element of channel c that a max-pool selects, moved by beta_c to 1e-4 of the old step h from 0
    n, i, j, c = 0, 1, 1, 1
    h = hessian.DEFAULT_EPS * max(1.0, float(np.linalg.norm(model.flat_params())))
    model[1].params["beta"][c] -= relu_in[n, i, j, c] - 1e-4 * h
    return model, x, labels, v, (n, i, j, c), h


def test_exact_product_is_the_hessian_of_the_smooth_piece_where_the_difference_fails():
    model, x, labels, v, element, h = kinked_conv_net()
    loss = nn.softmax_cross_entropy
    w = model.flat_params().copy()
    # the old central difference crosses the kink: the ReLU input switches sign between w - h v_hat and w + h v_hat
    signs = []
    for s in (-h, h):
        model.set_flat_params(w + s * v / np.linalg.norm(v))
        signs.append(np.sign(model[1].forward(model[0].forward(x, "probe"), "probe")[element]))
    model.set_flat_params(w)
    assert signs[0] != signs[1], "the test's construction no longer puts a kink within the step"
    # reference: the network with ReLU and max-pool frozen to their piece at w is smooth everywhere, and equals
    # the network on that piece: its Hessian, differenced from its exact gradient, is the smooth piece's
    piece = frozen(model, x)
    H = np.stack([(_grad(piece, loss, x, labels, w + 1e-5 * e) - _grad(piece, loss, x, labels, w - 1e-5 * e)) / 2e-5
                  for e in np.eye(w.size)], axis=1)
    model.set_flat_params(w)
    scale = np.linalg.norm(H @ v)
    exact = hessian.hvp(model, loss, x, labels, v)
    differenced = hessian.hvp(model, loss, x, labels, v, product="fd")
    assert np.linalg.norm(exact - H @ v) <= 1e-6 * scale
    assert np.linalg.norm(differenced - H @ v) > 10 * scale   # the gradient jump divided by 2h
    # Lanczos on exact products finds the top eigenvalue of the smooth piece's Hessian
    want = np.linalg.eigvalsh((H + H.T) / 2)
    top = hessian.top_eigenvalue(model, loss, x, labels, tol=1e-8)
    assert top["converged"] and top["eigenvalue"] == pytest.approx(want[np.argmax(abs(want))], rel=1e-6)
    np.testing.assert_array_equal(model.flat_params(), w)


def _grad(model, loss_fn, x, target, w):
    model.set_flat_params(w)
    model.value_and_grad(loss_fn, x, target, mode="probe")
    return model.flat_grads()
