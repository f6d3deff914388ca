"""minibn.testing on layers a user writes: a correct one passes, each kind of wrong backward or
broken contract fails with a message naming what is wrong; the tutorial docs/your-own-layer.md
runs as written; a user's normalizer goes through the registry into the DLN study."""

import re
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
from hypothesis import given, settings

from minibn import nn
from minibn.gradcheck import GradcheckError
from minibn.nn.layer import Layer, check_input
from minibn.nn.normalization import REGISTRY, channel_rows, register
from minibn.studies import dln
from minibn.testing import check_layer_on, check_layer_property, layer_inputs, make_input, shapes

ROOT = Path(__file__).resolve().parents[1]
TUTORIAL = ROOT / "docs" / "your-own-layer.md"


# --- a user's layer: a centring-only normalizer, y = gamma (x - mean(x)) + beta per channel --------------------

class Cache(NamedTuple):
    centred: object
    gamma: object


def centre_forward(x, gamma, beta):
    x2 = channel_rows(x)
    centred = (x2 - x2.mean(axis=0)).reshape(x.shape)
    return gamma * centred + beta, Cache(centred, gamma)


def centre_backward(dy, cache, bug=None):
    """dx = gamma (dy - mean(dy)), dgamma = sum(dy * centred), dbeta = sum(dy); ``bug`` breaks one."""
    dy2 = channel_rows(dy)
    mean_dy = dy2.mean(axis=0)
    dx = cache.gamma * (dy - mean_dy)
    grads = {"gamma": (dy2 * channel_rows(cache.centred)).sum(axis=0), "beta": dy2.sum(axis=0)}
    if bug == "dropped term":
        dx = cache.gamma * dy
    elif bug == "wrong sign":
        dx = cache.gamma * (dy + mean_dy)
    elif bug == "missing gradient":
        del grads["gamma"]
    elif bug == "gamma forgotten":
        dx = dy - mean_dy
    return dx, grads


class Centre(Layer):
    bug = None

    def __init__(self, num_features, *, dtype="float32", **_):
        super().__init__()
        self.num_features = num_features
        self.params = {"gamma": np.ones(num_features, dtype), "beta": np.zeros(num_features, dtype)}

    def _forward(self, x, mode):
        check_input(self, "x", x, ndims=(2, 4), last_dim=self.num_features, dtype=self.params["gamma"].dtype)
        return centre_forward(x, self.params["gamma"], self.params["beta"])

    def _backward(self, dy, cache):
        return centre_backward(dy, cache, self.bug)


def buggy(kind):
    return type(f"Centre_{kind.replace(' ', '_')}", (Centre,), {"bug": kind})


def test_a_correct_user_layer_passes():
    check_layer_property(Centre, ndim=(2, 4), modes=("train", "probe", "eval"), max_examples=25)


@pytest.mark.parametrize("kind, worst", [
    ("dropped term", r"worst entry (d y\[\d+\] / d x\[\d+\]|x \(direction \d\)): analytic"),
    ("wrong sign", r"worst entry (d y\[\d+\] / d x\[\d+\]|x \(direction \d\)): analytic"),
    ("gamma forgotten", r"worst entry (d y\[\d+\] / d x\[\d+\]|x \(direction \d\)): analytic"),
    ("missing gradient", r"backward gave no gradient for parameter\(s\) \['gamma'\]"),
])
def test_a_wrong_backward_fails_naming_the_mode_shape_worst_entry_and_minimal_example(kind, worst):
    with pytest.raises(GradcheckError) as caught:
        check_layer_property(buggy(kind), ndim=(2, 4), max_examples=25, seed=1)
    text = str(caught.value)
    first = text.splitlines()[0]
    assert re.match(rf"check_layer_property: Centre_\w+ in mode 'train' on input shape \(\d+(, \d+)*\): {worst}", first), text
    example = re.search(r"hypothesis' minimal failing example: x = minibn\.testing\.(make_input\(.*?\)); "
                        r"check_layer_on\(make_layer, x, modes=\('train', 'probe'\), seed=(\d+)\)", text)
    assert example, text
    # the example rebuilds an input on which the same check fails, and the right layer passes there
    x = eval(example.group(1), {"make_input": make_input})
    with pytest.raises(GradcheckError):
        check_layer_on(buggy(kind), x, seed=int(example.group(2)))
    check_layer_on(Centre, x, seed=int(example.group(2)))


def test_a_wrong_parameter_gradient_names_the_parameter():
    class HalfBeta(Centre):
        def _backward(self, dy, cache):
            dx, grads = centre_backward(dy, cache)
            return dx, {**grads, "beta": grads["beta"] * 0.5}

    with pytest.raises(GradcheckError, match=r"worst entry (d y\[\d+\] / d beta\[\d+\]|beta \(direction \d\))"):
        check_layer_property(HalfBeta, max_examples=10, seed=0)


def test_contract_breaches_are_named():
    x = make_input((4, 2), seed=0)

    class NoRefusal(Centre):
        def backward(self, dy):
            return dy if self._cache is None else super().backward(dy)

    class ProbeMoves(Centre):
        buffers = ("count",)

        def __init__(self, num_features, **kw):
            super().__init__(num_features, **kw)
            self.count = np.zeros(1)

        def _forward(self, x, mode):
            self.count = self.count + 1.0
            return super()._forward(x, mode)

    class WritesIntoX(Centre):
        def _forward(self, x, mode):
            y, cache = super()._forward(x, mode)
            x *= 1.0 + 1e-3
            return y, cache

    class Float32Out(Centre):
        def _forward(self, x, mode):
            y, cache = super()._forward(x, mode)
            return y.astype(np.float32), cache

    cases = [(NoRefusal, "train", "backward before any forward returned instead of raising"),
             (ProbeMoves, "probe", "mode 'probe' changed the layer's state \\['count'\\]"),
             (ProbeMoves, "eval", "mode 'eval' changed the layer's state"),
             (WritesIntoX, "train", "forward or backward wrote into its input x"),
             (Float32Out, "train", r"forward gave output of shape \(4, 2\) and dtype float32, expected shape \(4, 2\) and "
                                   r"dtype float64")]
    for layer, mode, message in cases:
        with pytest.raises(GradcheckError, match=rf"{layer.__name__}\(?.*in mode '{mode}' on input shape \(4, 2\): {message}"):
            check_layer_on(layer, x, modes=(mode,))
    check_layer_on(ProbeMoves, x, modes=("train",))     # train may change state


def test_minibns_own_layers_pass_and_their_shapes_are_declared():
    check_layer_property(lambda c: nn.Dense(c, 3), output_shape=lambda s: s[:-1] + (3,), max_examples=10, seed=0)
    check_layer_property(lambda c: nn.ReLU(), ndim=4, kinks=(0.0,), max_examples=10, seed=0)
    with pytest.raises(GradcheckError, match=r"forward gave output of shape \(\d+, 3\)"):
        check_layer_property(lambda c: nn.Dense(c, 3), max_examples=5, seed=0)


@settings(max_examples=30, deadline=None)
@given(layer_inputs(ndim=(2, 4), kinks=(0.0, 1.0), margin=0.05, scales=(0.01, 1.0)))
def test_drawn_inputs_are_float64_pool_two_values_and_stay_off_kinks(x):
    assert x.dtype == np.float64 and x.ndim in (2, 4) and x.size // x.shape[-1] >= 2
    assert (abs(x) >= 0.05).all() and (abs(x - 1.0) >= 0.05).all()


@settings(max_examples=20, deadline=None)
@given(shapes(ndim=4, channels=5, min_pooled=7))
def test_shapes_honour_channels_and_min_pooled(shape):
    assert len(shape) == 4 and shape[-1] == 5 and shape[0] * shape[1] * shape[2] >= 7


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="ndim must be 2 \\(N, C\\), 4 \\(N, H, W, C\\) or a tuple of them, got 3"):
        shapes(ndim=3)
    with pytest.raises(ValueError, match=r"kinks \[0.0, 0.01\] lie closer than 2 \* margin"):
        make_input((2, 2), kinks=(0.0, 0.01))
    with pytest.raises(ValueError, match="modes must be taken from"):
        check_layer_on(Centre, make_input((2, 2)), modes=("training",))
    with pytest.raises(ValueError, match="x must be a float64 array, got float32"):
        check_layer_on(Centre, make_input((2, 2)).astype(np.float32))


def run_python(code):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)


def test_hypothesis_is_optional():
    assert run_python("import sys, minibn, minibn.nn, minibn.gradcheck, minibn.theory, minibn.studies.dln\n"
                      "assert 'hypothesis' not in sys.modules, 'imported hypothesis'").returncode == 0
    missing = run_python("import sys; sys.modules['hypothesis'] = None\nimport minibn.testing")
    assert missing.returncode != 0
    assert "minibn.testing needs hypothesis, an optional dependency: pip install 'minibn[test]'" in missing.stderr


# --- a user's normalizer in the registry and the DLN study ------------------------------------------------

@pytest.fixture
def registered():
    """Centre registered as 'centre' (from this test module) for one test."""
    register("centre", "centring only", lambda num_features, *, dtype, **_: Centre(num_features, dtype=dtype))
    yield "centre"
    del REGISTRY["centre"]


def test_a_registered_user_normalizer_runs_in_the_dln_study(registered, tmp_path):
    assert REGISTRY[registered].module == __name__
    results = dln.run(out=str(tmp_path), preset="smoke", variants=[registered], steps=5, jobs=1, report=False)
    run = results["runs"][f"{registered}_lr0.0001_seed0"]
    assert run["variant"] == registered and len(run["loss"]) == 5 and run["diverged_at"] is None
    with pytest.raises(ValueError, match=r"unknown variant\(s\) \['nonexistent'\]"):
        dln.run(out=str(tmp_path), preset="smoke", variants=["nonexistent"])


def test_workers_refuse_a_normalizer_they_cannot_import(tmp_path):
    register("stranded", "stranded", lambda num_features, *, dtype, **_: Centre(num_features, dtype=dtype),
             module="no_such_module_for_minibn")
    try:
        with pytest.raises(ValueError, match=r"variant\(s\) \['stranded'\] were registered where worker processes "
                                             r"cannot import them.*pass jobs=1"):
            dln.run(out=str(tmp_path), preset="smoke", variants=["stranded"], jobs=2)
        with pytest.raises(ModuleNotFoundError, match="no_such_module_for_minibn"):
            nn.normalization.get("not_registered_here", "no_such_module_for_minibn")
    finally:
        del REGISTRY["stranded"]
    with pytest.raises(ValueError, match=r"unknown normalizer 'ghost' \(importing 'json' did not register it\)"):
        nn.normalization.get("ghost", "json")


# --- the tutorial, as written ----------------------------------------------------------------------------

def tutorial_blocks():
    blocks = re.findall(r"```python\n(.*?)```", TUTORIAL.read_text(encoding="utf-8"), flags=re.S)
    assert blocks and blocks[0].startswith("# mynorm.py\n"), "the tutorial's first block is the file mynorm.py"
    return blocks


def rounded(text):
    return re.sub(r"-?\d+\.\d+(e[-+]?\d+)?", lambda m: f"{float(m.group()):.3g}", text)


def test_the_tutorial_runs_as_written(tmp_path, monkeypatch, capsys):
    """The first block is saved as mynorm.py, the others run in order in one namespace, in a
    folder holding mynorm.py (as a notebook beside it); the DLN run's worker processes import it."""
    first, *session = tutorial_blocks()
    (tmp_path / "mynorm.py").write_text(first, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    namespace = {"__name__": "tutorial"}
    try:
        for block in session:
            exec(compile(block, str(TUTORIAL), "exec"), namespace)
    finally:
        REGISTRY.pop("batch_rms", None)
        sys.modules.pop("mynorm", None)
    printed = capsys.readouterr().out
    text = TUTORIAL.read_text(encoding="utf-8")
    # the outputs the tutorial shows are the ones its code prints (to 3 significant digits)
    shown_blocks = re.findall(r"prints\n\n```text\n(.*?)```", text, flags=re.S)
    assert len(shown_blocks) == 2
    for shown in shown_blocks:
        assert rounded(shown) in rounded(printed), f"the tutorial shows output its code no longer prints:\n{shown}"
    assert (tmp_path / "runs" / "dln-batch-rms" / "report.md").exists()


def test_the_readme_and_index_link_the_tutorial():
    assert "docs/your-own-layer.md" in (ROOT / "README.md").read_text(encoding="utf-8")
    assert "your-own-layer.md" in (ROOT / "docs" / "index.md").read_text(encoding="utf-8")


# --- a non-function cannot pass: its mismatches are not kinks ----------------------------------

class _CallCounter(Layer):
    """y = n x at the n-th call: a hidden counter, and a backward that forgets it."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def _forward(self, x, mode):
        self.calls += 1
        return x * float(self.calls), 0

    def _backward(self, dy, cache):
        return dy * 1.0, {}


class _UnseededNoise(Layer):
    """y = x * s with s drawn afresh, outside the layer's state; the backward ignores s."""

    def _forward(self, x, mode):
        return x * np.random.default_rng().standard_normal(x.shape), 0

    def _backward(self, dy, cache):
        return dy * 1.0, {}


class _ProbeLeaksIntoEval(Layer):
    """y = 2 x, except that eval adds what each probe call accumulated in a hidden attribute."""

    def __init__(self):
        super().__init__()
        self.shift = 0.0

    def _forward(self, x, mode):
        if mode == "probe":
            self.shift += 1.0
        return (x * 2.0 + self.shift if mode == "eval" else x * 2.0), 0

    def _backward(self, dy, cache):
        return dy * 2.0, {}


@pytest.mark.parametrize("layer, mode", [(_CallCounter, "train"), (_UnseededNoise, "train"),
                                         (_ProbeLeaksIntoEval, "eval")])
def test_a_forward_that_is_not_a_function_fails_naming_the_mode(layer, mode):
    with pytest.raises(GradcheckError, match=f"forward in mode '{mode}' is not a function"):
        check_layer_property(lambda channels: layer(), max_examples=3, seed=0)


def test_noise_drawn_from_the_layers_own_generator_passes():
    check_layer_property(lambda channels: nn.NoisyBatchNorm(channels, rng=1), max_examples=5, seed=0)


@pytest.mark.parametrize("option", ["channels", "max_channels", "max_batch"])
def test_shape_options_are_checked_by_name(option):
    with pytest.raises(ValueError, match=f"{option} must be a positive integer, got 0"):
        check_layer_property(lambda channels: nn.ReLU(), **{option: 0}) if option == "channels" else shapes(**{option: 0})
