"""Conv2d: forward against the naive loop reference, backward against float64 gradcheck,
the two dx routes against each other, parameters, and errors on bad input."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from minibn import backend, nn
from minibn.gradcheck import check_layer
from minibn.nn import conv, im2col
from tests.nn import reference

# The xp fixture only hands out a module, so reusing it across examples is safe.
SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@st.composite
def conv_cases(draw, max_size=6, max_channels=3, max_batch=2):
    """A layer configuration and an input shape that fits it (kernel within the padded input)."""
    kernel = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    h = draw(st.integers(max(1, kernel[0] - 2 * padding[0]), max_size))
    w = draw(st.integers(max(1, kernel[1] - 2 * padding[1]), max_size))
    n = draw(st.integers(1, max_batch))
    c, out = draw(st.integers(1, max_channels)), draw(st.integers(1, max_channels))
    values = st.floats(-2, 2, allow_nan=False, width=64)
    x = draw(hnp.arrays(np.float64, (n, h, w, c), elements=values))
    return dict(kernel=kernel, stride=stride, padding=padding, x=x, out=out,
                bias=draw(st.booleans()), seed=draw(st.integers(0, 2**16)))


def make_layer(case, xp, dtype="float64"):
    layer = nn.Conv2d(case["x"].shape[-1], case["out"], case["kernel"], case["stride"], case["padding"],
                      bias=case["bias"], rng=case["seed"], dtype=dtype).to(backend.name_of(xp))
    if case["bias"]:  # non-zero biases so that the bias path is exercised
        layer.params["b"][...] = xp.asarray(backend.rng(case["seed"]).normal(size=case["out"]))
    return layer


@pytest.fixture(params=["one block", "one image per block"])
def chunking(request, monkeypatch):
    """The patch matrices are built in blocks of images; also force one image per block."""
    if request.param == "one image per block":
        monkeypatch.setattr(im2col, "CHUNK_BYTES", 1)


@settings(max_examples=40, **SETTINGS)
@given(case=conv_cases(max_batch=3))
def test_forward_matches_loop_reference(xp, chunking, case):
    layer = make_layer(case, xp)
    y = layer.forward(xp.asarray(case["x"]), "train")
    params = {k: backend.to_host(v) for k, v in layer.params.items()}
    expected = reference.conv2d(case["x"], params["W"], params.get("b"), case["stride"], case["padding"])
    assert y.shape == expected.shape and y.dtype == xp.float64
    np.testing.assert_allclose(backend.to_host(y), expected, rtol=1e-12, atol=1e-12)


@settings(max_examples=20, **SETTINGS)
@given(case=conv_cases(max_size=5, max_channels=2))
def test_backward_passes_float64_gradcheck(xp, case):
    layer = make_layer(case, xp)
    report = check_layer(layer, xp.asarray(case["x"]), n_directions=2)
    assert report.ok and not report.kinks, str(report)


@settings(max_examples=30, **SETTINGS)
@given(case=conv_cases(max_size=7, max_channels=4, max_batch=3))
def test_dx_routes_agree(xp, chunking, case):
    """col2im and the flipped-kernel convolution are the same linear map, for any stride and padding."""
    layer = make_layer(case, xp)
    y, cache = conv.forward(xp.asarray(case["x"]), layer.params["W"], layer.params.get("b"),
                            case["stride"], case["padding"])
    dy = xp.asarray(backend.rng(case["seed"]).normal(size=y.shape))
    dx_col2im, grads_col2im = conv.backward(dy, cache, dx_route="col2im")
    dx_transposed, grads_transposed = conv.backward(dy, cache, dx_route="transposed")
    assert dx_col2im.shape == case["x"].shape
    np.testing.assert_allclose(backend.to_host(dx_transposed), backend.to_host(dx_col2im), rtol=1e-12, atol=1e-12)
    for key in grads_col2im:
        np.testing.assert_array_equal(backend.to_host(grads_transposed[key]), backend.to_host(grads_col2im[key]))
    dx_reference = reference.conv2d_input_gradient(backend.to_host(dy), backend.to_host(layer.params["W"]),
                                                   case["x"].shape, case["stride"], case["padding"])
    np.testing.assert_allclose(backend.to_host(dx_col2im), dx_reference, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(backend.to_host(grads_col2im["W"]),
                               reference.conv2d_weight_gradient(case["x"], backend.to_host(dy), layer.params["W"].shape,
                                                                case["stride"], case["padding"]), rtol=1e-12, atol=1e-12)


def test_conv_then_pool_gradcheck_through_sequential(xp):
    """A conv feeding a max-pool (the VGG building block) as one Sequential."""
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, rng=0, dtype="float64"), nn.MaxPool2d(2)).to(backend.name_of(xp))
    x = xp.asarray(backend.rng(1).normal(size=(2, 4, 4, 2)))
    report = check_layer(model, x, full=False, n_directions=4)
    assert report.ok and not report.kinks, str(report)


def test_float32_stays_float32_and_matches_float64(xp):
    x64 = backend.rng(2).normal(size=(3, 9, 8, 4))
    layers = {d: nn.Conv2d(4, 5, (3, 2), stride=(2, 1), padding=1, rng=3, dtype=d).to(backend.name_of(xp))
              for d in ("float32", "float64")}
    y = {d: layers[d].forward(xp.asarray(x64.astype(d))) for d in layers}
    dx = {d: layers[d].backward(xp.ones_like(y[d])) for d in layers}
    assert y["float32"].dtype == dx["float32"].dtype == layers["float32"].grads["W"].dtype == xp.float32
    np.testing.assert_allclose(backend.to_host(y["float32"]), backend.to_host(y["float64"]), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(backend.to_host(dx["float32"]), backend.to_host(dx["float64"]), rtol=1e-5, atol=1e-5)


def test_parameters_initialization_and_block():
    layer = nn.Conv2d(3, 8, (3, 5), bias=True, rng=7)
    W, b = layer.params["W"], layer.params["b"]
    assert W.shape == (3, 5, 3, 8) and b.shape == (8,) and W.dtype == np.float32
    assert not b.any() and layer.starts_block
    limit = np.sqrt(6.0 / (3 * 5 * 3 + 3 * 5 * 8))  # Glorot: fan_in = kh*kw*in, fan_out = kh*kw*out
    assert np.abs(W).max() <= limit and np.abs(W).max() > 0.8 * limit
    np.testing.assert_array_equal(nn.Conv2d(3, 8, (3, 5), rng=7).params["W"], W)
    assert set(nn.Conv2d(3, 8, 3, bias=False).params) == {"W"}
    assert nn.Conv2d(3, 8, 3, stride=2, padding=(1, 0)).describe() == \
        "Conv2d(3, 8, kernel_size=(3, 3), stride=(2, 2), padding=(1, 0), bias=True)"


def test_modes_give_the_same_output():
    layer = nn.Conv2d(2, 3, 3, rng=0, dtype="float64")
    x = backend.rng(0).normal(size=(2, 5, 5, 2))
    outs = [layer.forward(x, mode) for mode in nn.MODES]
    for y in outs[1:]:
        np.testing.assert_array_equal(y, outs[0])


@pytest.mark.parametrize("make, x_shape, dtype, match", [
    (lambda: nn.Conv2d(3, 4, 3), (2, 5, 5), "float32", r"Conv2d\(3, 4.*x must be 4-D, got shape \(2, 5, 5\)"),
    (lambda: nn.Conv2d(3, 4, 3), (2, 5, 5, 2), "float32", r"Conv2d\(3, 4.*x has 2 .*shape \(2, 5, 5, 2\).*expected 3"),
    (lambda: nn.Conv2d(3, 4, 3), (2, 5, 5, 3), "float64", r"Conv2d\(3, 4.*x has dtype float64.*float32"),
    (lambda: nn.Conv2d(3, 4, 3), (2, 5, 5, 3), "int64", r"Conv2d\(3, 4.*x must be a floating-point array"),
    (lambda: nn.Conv2d(3, 4, 5, padding=1), (2, 2, 6, 3), "float32",
     r"Conv2d\(3, 4.*kernel \(5, 5\) is larger than the padded input \(4, 8\) \(x of shape \(2, 2, 6, 3\), padding \(1, 1\)\)"),
])
def test_bad_input_names_layer_argument_and_shapes(make, x_shape, dtype, match):
    with pytest.raises(nn.LayerError, match=match):
        make().forward(np.zeros(x_shape, dtype=dtype))


@pytest.mark.parametrize("kwargs, match", [
    (dict(in_channels=0), "in_channels must be a positive integer, got 0"),
    (dict(out_channels=2.5), "out_channels must be a positive integer, got 2.5"),
    (dict(kernel_size=0), r"kernel_size must be an int >= 1 or a pair of them, got 0"),
    (dict(kernel_size=(3,)), r"kernel_size must be .*got \(3,\)"),
    (dict(stride=(1, 0)), r"stride must be an int >= 1 .*got \(1, 0\)"),
    (dict(padding=-1), r"padding must be an int >= 0 .*got -1"),
    (dict(padding=1.5), r"padding must be .*got 1.5"),
])
def test_bad_arguments_are_named(kwargs, match):
    args = dict(in_channels=3, out_channels=4, kernel_size=3) | kwargs
    with pytest.raises(ValueError, match="Conv2d: " + match):
        nn.Conv2d(**args)


def test_backward_checks_before_forward_and_dy_shape():
    layer = nn.Conv2d(2, 3, 3)
    with pytest.raises(nn.LayerError, match=r"Conv2d\(2, 3.*backward called before forward"):
        layer.backward(np.zeros((1, 3, 3, 3), dtype="float32"))
    layer.forward(np.zeros((1, 5, 5, 2), dtype="float32"))
    with pytest.raises(nn.LayerError, match=r"Conv2d\(2, 3.*dy of shape \(1, 3, 3, 4\).*\(1, 3, 3, 3\)"):
        layer.backward(np.zeros((1, 3, 3, 4), dtype="float32"))


def test_unknown_dx_route_is_rejected():
    y, cache = conv.forward(np.ones((1, 3, 3, 1)), np.ones((2, 2, 1, 1)))
    with pytest.raises(ValueError, match="dx_route must be one of .*got 'scatter'"):
        conv.backward(y, cache, dx_route="scatter")
