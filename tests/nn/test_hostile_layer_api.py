"""The layer API against values a user may assign or pass: each is refused with an error naming
the layer and the argument (or accepted, where it is a fair value)."""

import numpy as np
import pytest

from minibn import nn
from minibn.nn.layer import LayerError
from minibn.optim import SGD

X = np.random.default_rng(0).standard_normal((8, 4)).astype("float32")


@pytest.mark.parametrize("value, match", [
    (np.ones((8, 4), "float32"), r"BatchNorm\(4.*parameter 'gamma' has shape \(8, 4\), the layer declares \(4,\)"),
    (np.ones(3, "float32"), r"parameter 'gamma' has shape \(3,\), the layer declares \(4,\)"),
    (1.0, r"parameter 'gamma' must be an array of shape \(4,\) and dtype float32, got float 1.0"),
    (np.ones(4, "float64"), r"parameter 'gamma' has dtype float64, the layer's parameters are float32"),
])
def test_an_assigned_parameter_is_checked_on_the_next_forward(value, match):
    bn = nn.BatchNorm(4)
    bn.params["gamma"] = value
    with pytest.raises(LayerError, match=match):
        bn.forward(X)
    bn.params["gamma"] = np.full(4, 2.0, "float32")  # a right one is used
    assert np.allclose(bn.forward(X).std(axis=0), 2.0, rtol=1e-3)


def test_a_dense_bias_of_the_batch_shape_is_refused_before_sgd_broadcasts_into_it():
    model = nn.Sequential(nn.Dense(4, 3, rng=0), nn.ReLU())
    model[0].params["b"] = np.zeros((8, 3), "float32")
    with pytest.raises(LayerError, match=r"Dense\(4, 3.*parameter 'b' has shape \(8, 3\), the layer declares \(3,\)"):
        model.forward(X)
    del model[0].params["b"]
    with pytest.raises(LayerError, match=r"params must hold exactly \['W', 'b'\], got \['W'\]"):
        model.forward(X)


def test_astype_and_clone_keep_the_declaration_in_step():
    model = nn.Sequential(nn.Dense(4, 3, rng=0), nn.BatchNorm(3))
    twin = model.clone().astype("float64")
    assert twin.forward(X.astype("float64")).dtype == np.float64
    assert model.forward(X).dtype == np.float32


def test_numpy_scalar_learning_rates_are_numbers_and_bools_are_not():
    model = nn.Sequential(nn.Dense(4, 3, rng=0))
    assert SGD(model, np.float32(0.5)).lr == 0.5 and SGD(model, np.int64(1)).lr == 1.0
    for bad in (True, 1j, "0.1", float("nan"), -0.1):
        with pytest.raises(ValueError, match="SGD: lr must be a finite number >= 0"):
            SGD(model, bad)


@pytest.mark.parametrize("eps", [float("nan"), float("inf"), -1e-5])
def test_normalizers_refuse_an_eps_that_is_not_a_finite_non_negative_number(eps):
    for make in (lambda: nn.BatchNorm(4, eps=eps), lambda: nn.LpNorm(4, p=2, eps=eps)):
        with pytest.raises(ValueError, match="eps must be a finite number >= 0"):
            make()


def test_set_flat_params_refuses_lists_and_complex_vectors():
    model = nn.Sequential(nn.Dense(4, 3, rng=0))
    before = model.flat_params()
    with pytest.raises(LayerError, match="set_flat_params needs an array .*got list"):
        model.set_flat_params(list(before))
    with pytest.raises(LayerError, match="set_flat_params needs a real vector, got dtype complex64"):
        model.set_flat_params(before + 1j)
    assert np.array_equal(model.flat_params(), before)


def test_load_state_for_a_layer_that_is_not_there_names_the_index():
    model = nn.Sequential(nn.Dense(4, 3, rng=0), nn.BatchNorm(3))
    with pytest.raises(LayerError, match=r"load_state got state for layer 5, but the layers are 0..1"):
        model.load_state({5: model[1].state()})
