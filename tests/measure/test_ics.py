"""Internal covariate shift (Definition 2.1): brute force, zero learning rates, invariance."""

import copy
import json
import math

import numpy as np
import pytest

from minibn import backend, nn, optim
from minibn.measure import ics
from tests.measure._tiny import assert_untouched, batch, fingerprint, smooth_bn_net, stateful_net


def brute_force_ics(model, loss_fn, x, y, lr, momentum=0.0, weight_decay=0.0, velocity=None):
    """Definition 2.1 recomputed from scratch: for each block i, a fresh copy of the model with
    blocks 1..i-1 moved by the SGD update written out by hand, and its gradient at block i."""
    velocity = velocity or {}
    blocks = model.blocks()
    base = copy.deepcopy(model)
    base.value_and_grad(loss_fn, x, y, mode="probe")
    grads = {(i, k): base[i].grads[k].copy() for i, k, _ in base.parameters()}

    def update(i, k):
        d = grads[(i, k)] + weight_decay * model[i].params[k]
        if momentum:
            d = momentum * velocity[(i, k)] + d
        return -lr * d

    l2, cos = [], []
    for b, block in enumerate(blocks):
        shifted = copy.deepcopy(model)
        for earlier in blocks[:b]:
            for i in earlier:
                for k in shifted[i].params:
                    shifted[i].params[k] = model[i].params[k] + update(i, k)
        shifted.value_and_grad(loss_fn, x, y, mode="probe")
        g = np.concatenate([grads[(i, k)].ravel() for i in block for k in model[i].params])
        g_new = np.concatenate([shifted[i].grads[k].ravel() for i in block for k in model[i].params])
        l2.append(float(np.linalg.norm(g - g_new)))
        cos.append(float(g @ g_new / (np.linalg.norm(g) * np.linalg.norm(g_new))))
    return l2, cos


@pytest.mark.parametrize("momentum, weight_decay", [(0.0, 0.0), (0.9, 1e-2)])
def test_matches_brute_force_recomputation(momentum, weight_decay):
    model = stateful_net(seed=3)
    x, y = batch(8, 2, seed=4)
    opt = optim.SGD(model, lr=0.3, momentum=momentum, weight_decay=weight_decay)
    model.value_and_grad(nn.squared_error, x, y, mode="train")
    opt.step()  # a first step, so that momentum buffers are non-zero
    velocity = {(i, k): v.copy() for (i, k), v in opt.velocity.items()}
    out = ics.measure_ics(model, nn.squared_error, x, y, opt)
    l2, cos = brute_force_ics(model, nn.squared_error, x, y, 0.3, momentum, weight_decay, velocity)
    assert len(out["l2"]) == len(model.blocks()) == 3
    np.testing.assert_allclose(out["l2"], l2, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(out["cos"], cos, rtol=1e-10)
    assert out["l2"][0] == 0.0 and out["cos"][0] == 1.0  # no layer before the first
    assert min(out["l2"][1:]) > 1e-6  # the shift is real, so the comparison above means something


def test_zero_learning_rate_of_earlier_blocks_gives_exactly_no_shift():
    model = smooth_bn_net()
    x, y = batch()
    opt = optim.SGD(model, lr=0.5)
    k = len(model.blocks())
    out = ics.measure_ics(model, nn.squared_error, x, y, opt, block_lrs=[0.0] * (k - 1) + [0.5])
    assert out["l2"] == [0.0] * k and out["cos"] == [1.0] * k
    # Only block 1 frozen: block 2 sees no shift, block 3 does (block 2 moved).
    out = ics.measure_ics(model, nn.squared_error, x, y, opt, block_lrs=[0.0, 0.5, 0.5])
    assert out["l2"][:2] == [0.0, 0.0] and out["cos"][:2] == [1.0, 1.0]
    assert out["l2"][2] > 0.0 and out["cos"][2] < 1.0
    # An optimizer with lr = 0 applies no update at all.
    out = ics.measure_ics(model, nn.squared_error, x, y, optim.SGD(model, lr=0.0))
    assert out["l2"] == [0.0] * k and out["cos"] == [1.0] * k


def test_block_lrs_length_is_checked():
    model = smooth_bn_net()
    x, y = batch()
    with pytest.raises(ValueError, match="block_lrs has 2 entries but the model has 3 blocks"):
        ics.measure_ics(model, nn.squared_error, x, y, optim.SGD(model, lr=0.1), block_lrs=[0.0, 0.1])


def test_leaves_model_untouched(xp):
    model = stateful_net().to(backend.name_of(xp))
    x, y = (backend.to_device(a, xp) for a in batch(8, 2))
    opt = optim.SGD(model, lr=0.1, momentum=0.9)
    model.value_and_grad(nn.squared_error, x, y, mode="train")
    opt.step()
    model.value_and_grad(nn.squared_error, x, y, mode="train")  # grads of a step not yet applied
    before, velocity = fingerprint(model), {k: v.copy() for k, v in opt.velocity.items()}
    ics.measure_ics(model, nn.squared_error, x, y, opt)
    assert_untouched(model, before)
    assert all(bool((opt.velocity[k] == v).all()) for k, v in velocity.items())


def test_non_finite_gradients_are_recorded_as_none():
    model = smooth_bn_net()
    model[0].params["W"][0, 0] = math.nan
    x, y = batch()
    out = ics.measure_ics(model, nn.squared_error, x, y, optim.SGD(model, lr=0.1))
    assert out["cos"][0] is None and out["l2"][1] is None
    json.dumps(out, allow_nan=False)


def test_recorder_accumulates_and_round_trips_its_state():
    model = smooth_bn_net()
    x, y = batch()
    opt = optim.SGD(model, lr=0.1)
    rec = ics.ICSRecorder(nn.squared_error, every=5)
    rec(0, model, x, y, opt)
    rec(5, model, x, y, opt)
    out = rec.result()
    assert out["steps"] == [0, 5] and out["layers"] == [1, 2, 3]
    assert out["l2"][0] == out["l2"][1] == ics.measure_ics(model, nn.squared_error, x, y, opt)["l2"]
    again = ics.ICSRecorder(nn.squared_error, every=5)
    again.load_state(json.loads(json.dumps(rec.state())))
    assert again.result() == out
