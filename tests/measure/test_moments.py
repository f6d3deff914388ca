"""Activation moments: values, changes and drifts, seeded samples, state, invariance."""

import json

import numpy as np
import pytest

from minibn import backend, nn, train
from minibn.measure import moments
from tests.measure._tiny import assert_untouched, batch, fingerprint, stateful_net


def inputs_by_hand(model, x, upto):
    h, out = x, [x]
    for layer in model.layers[:upto]:
        h = layer.forward(h, "probe")
        out.append(h)
    return out


def test_moments_of_the_layer_inputs():
    model = stateful_net()
    x, y = batch(8, 2)
    before = fingerprint(model)
    rec = moments.MomentsRecorder([0, 2, 3], every=1, n_samples=100, seed=0)
    rec(0, model, x, y, None)
    assert_untouched(model, before)
    h = inputs_by_hand(model, x, 3)
    out = rec.result()
    assert out["steps"] == [0]
    for l in (0, 2, 3):
        series = out["layers"][str(l)]
        unit = series["unit"]
        assert 0 <= unit < h[l].shape[-1]
        assert series["unit_mean"] == [pytest.approx(h[l][:, unit].mean(), rel=1e-12, abs=1e-15)]
        assert series["unit_var"] == [pytest.approx(h[l][:, unit].var(), rel=1e-12, abs=1e-15)]
        assert sorted(series["samples"][0]) == sorted(h[l][:, unit].tolist())  # 8 values < n_samples: all
        assert series["mean_change"] == [None] and series["mean_drift"] == [0.0]
    # layer 2 (the ReLU) sees BatchNorm's output: mean beta, variance gamma^2 (up to eps) per unit
    unit, bn = out["layers"]["2"]["unit"], model[1].params
    assert out["layers"]["2"]["unit_mean"][0] == pytest.approx(bn["beta"][unit], abs=1e-12)
    assert out["layers"]["2"]["unit_var"][0] == pytest.approx(bn["gamma"][unit] ** 2, rel=1e-3)


def test_changes_and_drifts_between_measurements():
    model = stateful_net()
    x, y = batch(8, 2)
    rec = moments.MomentsRecorder([3], every=10, n_samples=4, seed=1, per_unit=True)
    snapshots = []
    for step in (0, 10, 20):
        rec(step, model, x, y, None)
        h = inputs_by_hand(model, x, 3)[3]
        snapshots.append((h.mean(axis=0), h.var(axis=0)))
        model[0].params["W"] *= 1.5  # move the distribution between measurements
    s = rec.result()["layers"]["3"]
    (m0, v0), (m1, v1), (m2, v2) = snapshots
    assert s["mean_change"][0] is None and s["var_change"][0] is None
    np.testing.assert_allclose(s["mean_change"][1:], [abs(m1 - m0).mean(), abs(m2 - m1).mean()], rtol=1e-12)
    np.testing.assert_allclose(s["var_change"][1:], [abs(v1 - v0).mean(), abs(v2 - v1).mean()], rtol=1e-12)
    np.testing.assert_allclose(s["mean_drift"], [0.0, abs(m1 - m0).mean(), abs(m2 - m0).mean()], rtol=1e-12)
    np.testing.assert_allclose(s["var_drift"], [0.0, abs(v1 - v0).mean(), abs(v2 - v0).mean()], rtol=1e-12)
    np.testing.assert_allclose(s["mean"], [m0, m1, m2], rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(s["var"], [v0, v1, v2], rtol=1e-12)
    assert s["var_change"][1] > 0
    assert all(len(v) == 4 for v in s["samples"])


def test_samples_are_seeded_and_drawn_from_the_unit():
    rng = np.random.default_rng(5)
    model = nn.Sequential([nn.Dense(3, 16, rng=rng, dtype="float64"), nn.ReLU()])
    x = rng.normal(size=(500, 3))

    def record(seed):
        rec = moments.MomentsRecorder([1], every=1, n_samples=50, seed=seed)
        rec(0, model, x, None, None)
        rec(1, model, x, None, None)
        return rec.result()["layers"]["1"]

    a, b, c = record(3), record(3), record(4)
    assert a == b
    h = x @ model[0].params["W"] + model[0].params["b"]
    values = set(h[:, a["unit"]].tolist())
    assert all(len(s) == 50 and set(s) <= values for s in a["samples"])
    assert len(set(a["samples"][0])) == 50  # without replacement
    assert a["samples"][0] != a["samples"][1]  # a fresh draw per step
    assert (c["unit"], c["samples"]) != (a["unit"], a["samples"])


def test_state_round_trip_through_a_checkpoint_continues_identically(tmp_path):
    model = stateful_net()
    x, y = batch(8, 2)

    def measure(rec, steps):
        for step in steps:
            model[3].params["W"][...] = 0.1 * step + np.arange(20.0).reshape(5, 4) / 20
            rec(step, model, x, y, None)

    whole = moments.MomentsRecorder([0, 3, 6], every=1, n_samples=3, seed=2)
    measure(whole, [0, 1, 2, 3])
    first = moments.MomentsRecorder([0, 3, 6], every=1, n_samples=3, seed=2)
    measure(first, [0, 1])
    path = tmp_path / "m.npz"
    train.save_checkpoint(path, {"moments": first.state()})
    second = moments.MomentsRecorder([0, 3, 6], every=1, n_samples=3, seed=2)
    second.load_state(train.load_checkpoint(path)["moments"])
    measure(second, [2, 3])
    assert second.result() == whole.result()
    json.dumps(whole.result(), allow_nan=False)


def test_leaves_model_untouched(xp):
    model = stateful_net().to(backend.name_of(xp))
    x, y = (backend.to_device(a, xp) for a in batch(8, 2))
    model.value_and_grad(nn.squared_error, x, y, mode="train")
    before = fingerprint(model)
    moments.MomentsRecorder([1, 4, 6], every=1, n_samples=5, seed=0)(0, model, x, y, None)
    assert_untouched(model, before)


def test_bad_arguments():
    with pytest.raises(ValueError, match="distinct non-negative layer indices"):
        moments.MomentsRecorder([1, 1])
    with pytest.raises(ValueError, match="n_samples must be a positive integer"):
        moments.MomentsRecorder([1], n_samples=0)
    rec = moments.MomentsRecorder([99])
    with pytest.raises(ValueError, match="layer index 99 out of range"):
        rec(0, stateful_net(), *batch(8, 2), None)


def test_mode_must_be_probe_or_train():
    with pytest.raises(ValueError, match="mode must be 'probe' or 'train', got 'eval'"):
        moments.MomentsRecorder([1], mode="eval")
