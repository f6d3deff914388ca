"""MaxPool2d: forward and the first-argmax backward against the naive loop reference (ties
included), float64 gradcheck on tie-free inputs, and errors on bad input."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from minibn import backend, nn
from minibn.gradcheck import check_layer
from tests.nn import reference

SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@st.composite
def pool_cases(draw, max_size=7, ties=False):
    """Kernel, stride (None = the kernel) and an input it fits. Without ``ties`` the values are a
    drawn permutation spaced 0.1 apart, so no window has two maxima within gradcheck's reach."""
    kernel = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    stride = draw(st.none() | st.tuples(st.integers(1, 3), st.integers(1, 3)))
    shape = (draw(st.integers(1, 2)), draw(st.integers(kernel[0], max_size)),
             draw(st.integers(kernel[1], max_size)), draw(st.integers(1, 3)))
    size = int(np.prod(shape))
    if ties:
        values = draw(st.lists(st.integers(0, 2), min_size=size, max_size=size))
    else:
        values = [0.1 * v - 1.0 for v in draw(st.permutations(range(size)))]
    return kernel, stride, np.array(values, dtype=np.float64).reshape(shape)


@settings(max_examples=40, **SETTINGS)
@given(case=pool_cases(ties=True))
def test_forward_and_first_argmax_backward_match_reference(xp, case):
    """Values from {0, 1, 2}: many ties, so this also pins the first-maximum rule."""
    kernel, stride, x = case
    layer = nn.MaxPool2d(kernel, stride)
    y = layer.forward(xp.asarray(x))
    y_ref, dx_of = reference.max_pool2d(x, layer.kernel_size, layer.stride)
    np.testing.assert_array_equal(backend.to_host(y), y_ref)
    dy = backend.rng(0).normal(size=y.shape)
    dx = layer.backward(xp.asarray(dy))
    assert dx.shape == x.shape and dx.dtype == x.dtype
    np.testing.assert_allclose(backend.to_host(dx), dx_of(dy), rtol=1e-14, atol=1e-14)


@settings(max_examples=25, **SETTINGS)
@given(case=pool_cases(max_size=5))
def test_backward_passes_float64_gradcheck_off_ties(xp, case):
    kernel, stride, x = case
    report = check_layer(nn.MaxPool2d(kernel, stride), xp.asarray(x), n_directions=2)
    assert report.ok and not report.kinks, str(report)


def test_constant_window_sends_its_gradient_to_the_first_entry(xp):
    x = xp.zeros((1, 4, 4, 2))
    layer = nn.MaxPool2d(3, 1)
    layer.forward(x)
    dx = backend.to_host(layer.backward(xp.ones((1, 2, 2, 2))))
    expected = np.zeros((4, 4))
    expected[:2, :2] = 1.0  # each 3x3 window's first entry is its top-left corner
    np.testing.assert_array_equal(dx[0, :, :, 0], expected)
    np.testing.assert_array_equal(dx[0, :, :, 1], expected)


@pytest.mark.parametrize("kernel, stride, shape, tiles", [
    (2, None, (2, 8, 6, 3), True),        # the VGG case: kernel == stride, divisible
    (2, None, (2, 7, 5, 3), False),       # last row/column belongs to no window
    ((2, 3), (3, 4), (1, 8, 9, 2), False),  # gaps between windows
    (3, 2, (2, 7, 7, 3), False),          # overlapping windows
])
def test_float32_paths_match_reference(kernel, stride, shape, tiles):
    x = backend.rng(3).permutation(int(np.prod(shape))).reshape(shape).astype(np.float32)
    layer = nn.MaxPool2d(kernel, stride)
    y = layer.forward(x)
    y_ref, dx_of = reference.max_pool2d(x, layer.kernel_size, layer.stride)
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y, y_ref)
    dy = backend.rng(4).normal(size=y.shape).astype(np.float32)
    np.testing.assert_allclose(layer.backward(dy), dx_of(dy), rtol=1e-6)  # overlaps add in another order
    assert (layer.kernel_size == layer.stride and shape[1] % layer.kernel_size[0] == 0
            and shape[2] % layer.kernel_size[1] == 0) == tiles


def test_stride_defaults_to_kernel_and_describe():
    assert nn.MaxPool2d().describe() == "MaxPool2d(kernel_size=(2, 2), stride=(2, 2))"
    assert nn.MaxPool2d((3, 2)).stride == (3, 2)
    assert nn.MaxPool2d(3, 1).stride == (1, 1)
    assert nn.MaxPool2d().params == {} and not nn.MaxPool2d().starts_block


@pytest.mark.parametrize("layer, x, match", [
    (nn.MaxPool2d(2), np.zeros((2, 4, 4)), r"MaxPool2d\(kernel_size=\(2, 2\).*x must be 4-D, got shape \(2, 4, 4\)"),
    (nn.MaxPool2d(2), np.zeros((2, 4, 4, 1), dtype=np.int32), r"MaxPool2d.*x must be a floating-point array, got dtype int32"),
    (nn.MaxPool2d(3), np.zeros((2, 2, 5, 1)),
     r"MaxPool2d\(kernel_size=\(3, 3\).*kernel \(3, 3\) is larger than the input's \(2, 5\) .*x of shape \(2, 2, 5, 1\)"),
])
def test_bad_input_names_layer_argument_and_shapes(layer, x, match):
    with pytest.raises(nn.LayerError, match=match):
        layer.forward(x)


@pytest.mark.parametrize("kwargs, match", [
    (dict(kernel_size=0), r"MaxPool2d: kernel_size must be an int >= 1 or a pair of them, got 0"),
    (dict(kernel_size=(2, 2, 2)), r"MaxPool2d: kernel_size must be .*got \(2, 2, 2\)"),
    (dict(stride=(0, 1)), r"MaxPool2d: stride must be an int >= 1 .*got \(0, 1\)"),
    (dict(stride="2"), r"MaxPool2d: stride must be .*got '2'"),
])
def test_bad_arguments_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        nn.MaxPool2d(**kwargs)
