import numpy as np
import pytest

from minibn import gradcheck, nn
from minibn.gradcheck import GradcheckError, check_function, check_layer, numerical_jacobian


class BuggyDense(nn.Dense):
    """A Dense layer whose backward has a deliberate bug in one gradient."""

    def __init__(self, *args, bug="x", **kw):
        super().__init__(*args, **kw)
        self.bug = bug

    def _backward(self, dy, cache):
        dx, grads = super()._backward(dy, cache)
        if self.bug == "x":
            dx = dx * 1.01
        elif self.bug == "b":
            grads = {**grads, "b": grads["b"] + 0.05}
        return dx, grads


def test_a_wrong_backward_is_caught_and_the_worst_entry_reported():
    x = np.random.default_rng(0).normal(size=(4, 3))
    report = check_layer(BuggyDense(3, 2, rng=0, dtype="float64", bug="x"), x, raise_on_fail=False)
    assert not report.ok
    assert report.worst.name.startswith("x") or "/ d x[" in report.worst.name
    assert abs(report.worst.analytic / report.worst.numeric - 1.01) < 1e-4
    text = str(report)
    assert "FAILED" in text and "fail " in text and "analytic" in text and "numeric" in text
    with pytest.raises(GradcheckError, match=r"gradcheck of Dense\(3, 2, bias=True\): FAILED"):
        check_layer(BuggyDense(3, 2, rng=0, dtype="float64", bug="x"), x)


def test_a_wrong_parameter_gradient_is_named():
    x = np.random.default_rng(0).normal(size=(4, 3))
    for full in (False, True):
        report = check_layer(BuggyDense(3, 2, rng=0, dtype="float64", bug="b"), x, full=full, raise_on_fail=False)
        assert not report.ok
        assert all(e.name.startswith("b (direction") or e.name.endswith("/ d b[0]") or e.name.endswith("/ d b[1]")
                   for e in report.failures()), str(report)


def test_a_correct_layer_passes_with_full_jacobian_and_directions():
    x = np.random.default_rng(1).normal(size=(3, 2))
    report = check_layer(nn.Dense(2, 2, rng=1, dtype="float64"), x, full=True)
    assert report.ok and any("d y[" in e.name for e in report.entries) and any("direction" in e.name for e in report.entries)
    assert "ok" in str(report) and "worst" in str(report)


def test_kinks_at_relu_zero_are_detected_not_failed():
    x = np.array([[0.0, 1.0], [-2.0, 0.0]])
    report = check_layer(nn.ReLU(), x, raise_on_fail=False)
    assert report.ok and report.kinks
    assert any("x[0]" in e.name for e in report.kinks) and not any("x[1]" in e.name for e in report.kinks)
    # without kink detection the central difference at 0 (slope 1/2) disagrees with the subgradient 0
    assert not check_layer(nn.ReLU(), x, raise_on_fail=False, detect_kinks=False).ok


def test_checking_changes_no_layer_state():
    layer = nn.NoisyBatchNorm(3, rng=0, dtype="float64")
    x = np.random.default_rng(2).normal(size=(5, 3))
    before = layer.state()
    check_layer(layer, x, mode="train")
    after = layer.state()
    assert before["rng"] == after["rng"]
    np.testing.assert_array_equal(before["running_mean"], after["running_mean"])


def test_float32_is_refused():
    with pytest.raises(ValueError, match=r"gradcheck of Dense\(2, 2, bias=True\): x must be float64 \(got float32\)"):
        check_layer(nn.Dense(2, 2, rng=0, dtype="float64"), np.ones((2, 2), np.float32))
    with pytest.raises(ValueError, match="parameter 'W' must be float64"):
        check_layer(nn.Dense(2, 2, rng=0), np.ones((2, 2)))


def test_check_function_and_numerical_jacobian():
    A = np.random.default_rng(3).normal(size=(3, 4))
    x = np.random.default_rng(4).normal(size=4)
    np.testing.assert_allclose(numerical_jacobian(lambda: A @ x, x), A, rtol=1e-7, atol=1e-9)
    f = lambda: float(np.sin(x).sum())
    assert check_function(f, {"x": x}, {"x": np.cos(x)}).ok
    report = check_function(f, {"x": x}, {"x": np.cos(x) + 0.1}, what="sin-sum")
    assert not report.ok and "gradcheck of sin-sum: FAILED" in str(report)
    with pytest.raises(ValueError, match="no analytic gradient given for 'x'"):
        check_function(f, {"x": x}, {})
    with pytest.raises(ValueError, match=r"gradient for 'x' has shape \(3,\), the input has shape \(4,\)"):
        check_function(f, {"x": x}, {"x": np.zeros(3)})
    with pytest.raises(ValueError, match="C-contiguous"):
        numerical_jacobian(lambda: x, np.zeros((3, 4))[:, ::2])
    assert gradcheck.Report("r", 1e-5, 1e-8).ok
