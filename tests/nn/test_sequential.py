import math

import numpy as np
import pytest

from minibn import backend, nn
from minibn.gradcheck import check_layer


def model(dtype="float64", seed=0):
    return nn.Sequential(
        nn.Dense(3, 4, rng=seed, dtype=dtype),                 # 0  block 0
        nn.BatchNorm(4, dtype=dtype),                          # 1  block 0
        nn.ReLU(),                                             # 2
        nn.Dense(4, 4, bias=False, rng=seed + 1, dtype=dtype), # 3  block 1
        nn.NoisyBatchNorm(4, rng=seed + 2, dtype=dtype),       # 4  block 1
        nn.NoiseInjection(4, rng=seed + 3, dtype=dtype),       # 5  (no params)
        nn.Dense(4, 4, rng=seed + 4, dtype=dtype),             # 6  block 2
        nn.LpNorm(4, math.inf, dtype=dtype),                   # 7  block 2
        nn.ReLU(),                                             # 8
        nn.Dense(4, 2, rng=seed + 5, dtype=dtype),             # 9  block 3
    )


def data(seed=1):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(6, 3)), rng.normal(size=(6, 2))


def test_indexing_forward_and_backward_chain_the_layers():
    net = model()
    x, _ = data()
    assert len(net) == 10 and isinstance(net[1], nn.BatchNorm) and list(net)[9] is net[9]
    y = x
    for layer in net:
        y = layer.forward(y, "probe")
    np.testing.assert_array_equal(net.forward(x, "probe"), y)
    dy = np.ones_like(y)
    d = dy
    for layer in reversed(net.layers):
        d = layer.backward(d)
    np.testing.assert_array_equal(net.backward(dy), d)
    assert "BatchNorm" in repr(net)


def test_blocks_group_each_weight_layer_with_its_norm_layers():
    net = model()
    assert net.blocks() == [[0, 1], [3, 4], [6, 7], [9]]
    sizes = [3 * 4 + 4 + 4 + 4, 16 + 4 + 4, 16 + 4 + 4 + 4, 8 + 2]
    slices = net.block_slices()
    assert [s.stop - s.start for s in slices] == sizes
    assert slices[0].start == 0 and all(a.stop == b.start for a, b in zip(slices, slices[1:]))
    assert slices[-1].stop == net.num_params == sum(sizes)
    # a norm layer before any weight layer opens its own block
    assert nn.Sequential(nn.BatchNorm(2), nn.Dense(2, 2, rng=0)).blocks() == [[0], [1]]


def test_flat_views_round_trip_and_follow_the_parameters_order():
    net = model()
    flat = net.flat_params()
    parts = [v.ravel() for _, _, v in net.parameters()]
    np.testing.assert_array_equal(flat, np.concatenate(parts))
    assert [(i, k) for i, k, _ in net.parameters()][:4] == [(0, "W"), (0, "b"), (1, "gamma"), (1, "beta")]
    flat[0] = 123.0                       # a copy: the model is untouched
    assert net[0].params["W"][0, 0] != 123.0
    ids = [id(v) for _, _, v in net.parameters()]
    new = np.arange(net.num_params, dtype=np.float64)
    net.set_flat_params(new)
    np.testing.assert_array_equal(net.flat_params(), new)
    assert [id(v) for _, _, v in net.parameters()] == ids   # written in place
    np.testing.assert_array_equal(net[1].params["gamma"], new[16:20])
    sl = net.block_slices()[1]
    np.testing.assert_array_equal(net.flat_params()[sl], np.concatenate([net[3].params["W"].ravel(),
                                                                         net[4].params["gamma"], net[4].params["beta"]]))


def test_flat_grads_match_each_layer_grads_and_value_and_grad():
    net = model()
    x, target = data()
    with pytest.raises(nn.LayerError, match=r"Dense\(3, 4.*layer 0.*no gradient for 'W'"):
        net.flat_grads()
    loss = net.value_and_grad(nn.squared_error, x, target, mode="probe")
    ref_loss, dout = nn.squared_error(net.forward(x, "probe"), target)
    assert loss == ref_loss
    g = net.flat_grads()
    np.testing.assert_array_equal(g, np.concatenate([net[i].grads[k].ravel() for i, k, _ in net.parameters()]))
    # the flat gradient is the gradient of the loss as a function of the flat parameters
    w = net.flat_params()
    u = np.random.default_rng(0).normal(size=w.size)
    eps = 1e-6
    losses = []
    for sign in (1, -1):
        net.set_flat_params(w + sign * eps * u)
        losses.append(nn.squared_error(net.forward(x, "probe"), target)[0])
    net.set_flat_params(w)
    assert abs((losses[0] - losses[1]) / (2 * eps) - float(g @ u)) < 1e-5 * (1 + abs(float(g @ u)))


def test_backward_from_a_first_layer_gives_the_upper_grads_and_leaves_the_lower_ones():
    net = model()
    x, target = data()
    loss = net.value_and_grad(nn.squared_error, x, target, mode="probe")
    full = [dict(layer.grads) for layer in net]
    for i in net.blocks():
        for layer in net:
            layer.grads = {k: np.full_like(v, np.nan) for k, v in layer.grads.items()}
        first = i[0]
        assert net.value_and_grad(nn.squared_error, x, target, mode="probe", first=first) == loss
        for index, layer in enumerate(net):
            for key, g in layer.grads.items():
                if index >= first:
                    np.testing.assert_array_equal(g, full[index][key])   # the same passes, bit for bit
                else:
                    assert np.isnan(g).all()                              # not touched
    for bad in (-1, len(net), 1.5):
        with pytest.raises(nn.LayerError, match=rf"Sequential\(10 layers\): backward's first must be a layer index "
                                                rf"in 0..9, got {bad}"):
            net.backward(np.ones((6, 2)), first=bad)


def test_forward_in_pieces_is_the_whole_forward_and_value_and_grad_can_start_above():
    net = model()
    x, target = data()
    whole = net.forward(x, "probe")
    loss = net.value_and_grad(nn.squared_error, x, target, mode="probe")
    full = [dict(layer.grads) for layer in net]
    for cut in range(len(net) + 1):
        below = net.forward(x, "probe", stop=cut)
        np.testing.assert_array_equal(net.forward(below, "probe", start=cut), whole)   # bit for bit
    for block in net.blocks()[1:]:
        first = block[0]
        below = net.forward(x, "probe", stop=first - 1)
        assert net.value_and_grad(nn.squared_error, below, target, mode="probe", first=first, start=first - 1) == loss
        for index in range(first, len(net)):
            for key, g in net[index].grads.items():
                np.testing.assert_array_equal(g, full[index][key])
    with pytest.raises(nn.LayerError, match=r"Sequential\(10 layers\): forward's start and stop must be layer "
                                            r"indices with 0 <= start <= stop <= 10, got start=4, stop=2"):
        net.forward(x, "probe", start=4, stop=2)
    with pytest.raises(nn.LayerError, match=r"value_and_grad's start \(5\) comes after first \(3\)"):
        net.value_and_grad(nn.squared_error, x, target, mode="probe", first=3, start=5)


@pytest.mark.parametrize("mode", ["train", "probe"])
def test_whole_model_gradcheck(mode):
    check_layer(model(), data()[0], mode=mode)


def test_probe_mode_leaves_every_state_and_parameter_untouched():
    net = model()
    x, target = data()
    net.value_and_grad(nn.squared_error, x * 2 + 1, target, "train")    # non-trivial state
    state, params = net.state(), net.flat_params().copy()
    assert sorted(state) == [1, 4, 5, 7]
    for mode in ("probe", "eval"):
        net.value_and_grad(nn.squared_error, x, target, mode)
    after = net.state()
    np.testing.assert_array_equal(net.flat_params(), params)
    for i in state:
        for k in state[i]:
            if k == "rng":
                assert after[i][k] == state[i][k]
            else:
                np.testing.assert_array_equal(after[i][k], state[i][k])
    net.forward(x, "train")
    assert net.state()[4]["rng"] != state[4]["rng"]   # while training does advance it


def test_state_round_trip_reproduces_a_training_forward():
    net = model()
    x, _ = data()
    saved = net.state()
    y1 = net.forward(x, "train")
    net.forward(x, "train")
    net.load_state({str(i): s for i, s in saved.items()})     # keys may come back as strings (JSON)
    np.testing.assert_array_equal(net.forward(x, "train"), y1)


def test_dtype_astype_and_backend_moves():
    net = model(dtype="float32")
    assert net.dtype == np.float32
    net.astype("float64")
    assert net.dtype == np.float64 and net[1].running_var.dtype == np.float64 and net[7].running_norm.dtype == np.float64
    assert net.forward(data()[0], "train").dtype == np.float64


def test_errors():
    with pytest.raises(nn.LayerError, match="Sequential: item 1 is int, not a minibn Layer"):
        nn.Sequential(nn.ReLU(), 3)
    net = model()
    with pytest.raises(nn.LayerError, match=r"set_flat_params needs a 1-D vector of \d+ values, got shape \(3,\)"):
        net.set_flat_params(np.zeros(3))
    with pytest.raises(nn.LayerError, match=r"Sequential\(10 layers\): mode must be one of"):
        net.forward(data()[0], "predict")
    assert nn.Sequential([nn.ReLU(), nn.Flatten()]).blocks() == []


def test_on_every_backend(xp):
    x, target = data()
    grads = []
    for name in ("numpy", backend.name_of(xp)):
        net = model().to(name)
        # probe mode: batch statistics without the noise, which a GPU draws itself (other draws)
        net.value_and_grad(nn.squared_error, backend.to_device(x, name), backend.to_device(target, name), "probe")
        grads.append(backend.to_host(net.flat_grads()))
    np.testing.assert_allclose(grads[0], grads[1], rtol=1e-9, atol=1e-11)


def test_snapshot_restores_parameters_state_gradients_and_the_forward_cache():
    net = model()
    x, target = data()
    net.value_and_grad(nn.squared_error, x * 2 + 1, target, "train")    # non-trivial state, grads and cache
    ids = [id(v) for _, _, v in net.parameters()]
    params, state, grads = net.flat_params(), net.state(), net.flat_grads()
    dy = np.random.default_rng(3).normal(size=(6, 2))
    dx = model_copy_backward(net, dy)
    with net.snapshot():
        net.set_flat_params(net.flat_params() * 3 - 1)
        net.value_and_grad(nn.squared_error, x[:4], target[:4], "train")  # moves state, grads, cache (4 rows)
        assert net.state()[4]["rng"] != state[4]["rng"]
    np.testing.assert_array_equal(net.flat_params(), params)
    assert [id(v) for _, _, v in net.parameters()] == ids          # written back in place
    np.testing.assert_array_equal(net.flat_grads(), grads)
    after = net.state()
    assert after[4]["rng"] == state[4]["rng"]
    for i in state:
        for k in state[i]:
            if k != "rng":
                np.testing.assert_array_equal(after[i][k], state[i][k])
    np.testing.assert_array_equal(net.backward(dy), dx)               # the 6-row forward's cache is back
    snap = net.snapshot()
    net.set_flat_params(np.zeros(net.num_params))
    snap.restore()
    np.testing.assert_array_equal(net.flat_params(), params)


def model_copy_backward(net, dy):
    """dx of a backward through ``net`` from its current cache, leaving ``net``'s grads as they were."""
    with net.snapshot():
        return net.backward(dy)


def test_clone_copies_parameters_and_state_but_no_step_arrays():
    net = model()
    x, target = data()
    net.value_and_grad(nn.squared_error, x, target, "train")
    twin = net.clone()
    np.testing.assert_array_equal(twin.flat_params(), net.flat_params())
    assert twin.state()[4]["rng"] == net.state()[4]["rng"]
    with pytest.raises(nn.LayerError, match="no gradient"):
        twin.flat_grads()
    with pytest.raises(nn.LayerError, match="backward called before forward"):
        twin.backward(np.ones((6, 2)))
    twin.set_flat_params(np.zeros(twin.num_params))
    twin.forward(x, "train")
    assert net.flat_params().any() and twin.state()[4]["rng"] != net.state()[4]["rng"]   # independent
    assert twin.astype("float32").forward(x.astype("float32"), "eval").dtype == np.float32


def test_xp_is_the_parameters_array_module(xp):
    assert model().xp is np and nn.Sequential([nn.ReLU()]).xp is np
    assert model().to(backend.name_of(xp)).xp is xp
