"""A training step on the GPU stays on the GPU: the stand-in's counters (tests/fakecupy) hold
the training loop to its budget, for the VGG and the DLN and every normalizer.

* no device-to-host transfer except on logging steps (t % log_every == 0, and the last),
  where the loss is read once;
* no host-to-device copy except the data's: the batch rows live on the device and the
  epoch's order goes there once, at the epoch's first batch (MiniBatches); noise is drawn
  on the device.
"""

import numpy as np
import pytest

from minibn import backend, models, nn, optim, train
from minibn.nn import normalization
from tests import fakecupy

pytestmark = pytest.mark.cupy

VARIANTS = list(normalization.REGISTRY)


@pytest.fixture
def cp():
    if not fakecupy.is_installed():
        pytest.skip("the budgets are counted by the stand-in: run with --fake-cupy on a machine without a GPU")
    return backend.get("cupy")


class CountedSteps:
    """A stream that closes one step's counts and opens the next at every ``next()``."""

    def __init__(self, stream, counts):
        self.stream, self.counts, self.steps = stream, counts, []

    def next(self):
        self.close()
        return self.stream.next()

    def close(self):
        self.steps.append({kind: dict(getattr(self.counts, kind)) for kind in fakecupy.KINDS})
        self.counts.reset()

    def state(self):
        return self.stream.state()

    def load_state(self, state):
        self.stream.load_state(state)


def per_step_counts(model, loss_fn, stream, steps, log_every, lr):
    with fakecupy.counting() as counts:
        counted = CountedSteps(stream, counts)
        out = train.train(model, loss_fn, counted, optim.SGD(model, lr), steps, log_every=log_every, progress=False)
        counted.close()
    assert out["diverged_at"] is None and len(out["loss"]) == len(set(range(0, steps, log_every)) | {steps - 1})
    return counted.steps[1:]  # steps[0]: before the first next()


def assert_within_budget(steps, log_every, epoch_starts=()):
    for t, events in enumerate(steps):
        logging = t % log_every == 0 or t == len(steps) - 1
        reads = sum(events["to_host"].values())
        assert reads == (1 if logging else 0), f"step {t}: device-to-host transfers {events['to_host']}"
        copies = events["to_device"]
        if t in epoch_starts:
            assert list(copies.values()) == [1] and next(iter(copies)).startswith("minibn/train.py"), copies
        else:
            assert not copies, f"step {t}: host-to-device copies {copies}"


@pytest.mark.parametrize("variant", VARIANTS)
def test_dln_step_budget(cp, variant):
    rng = np.random.default_rng(0)
    x, y = cp.asarray(rng.normal(size=(64, 6))), cp.asarray(rng.normal(size=(64, 6)))
    model = models.dln(6, 6, norm=None if variant == "standard" else variant, rng=1, dtype="float64").to("cupy")
    steps = per_step_counts(model, lambda p, t: nn.squared_error(p, t), train.FullBatch(x, y), 7, log_every=3, lr=1e-4)
    assert_within_budget(steps, 3)


@pytest.mark.parametrize("variant", VARIANTS)
def test_vgg_step_budget(cp, variant):
    rng = np.random.default_rng(0)
    x = cp.asarray(rng.normal(size=(16, 32, 32, 3)).astype("float32"))
    labels = cp.asarray(rng.integers(0, 10, size=16))
    model = models.vgg("vgg16", width=0.125, norm=None if variant == "standard" else variant, rng=1).to("cupy")
    stream = train.MiniBatches(x, labels, 4, seed=0)  # 4 batches an epoch: step 4 starts epoch 1
    steps = per_step_counts(model, nn.softmax_cross_entropy, stream, 6, log_every=4, lr=1e-2)
    assert_within_budget(steps, 4, epoch_starts=(0, 4))


def test_a_diverging_gpu_run_is_caught_at_the_next_logging_step(cp):
    x = cp.asarray(np.ones((8, 3)))
    model = models.dln(2, 3, rng=0, dtype="float64").to("cupy")
    out = train.train(model, lambda p, t: nn.squared_error(p, t), train.FullBatch(x, x * 1e3), optim.SGD(model, 10.0),
                      50, log_every=5, progress=False)
    assert out["diverged_at"] is not None and out["diverged_at"] % 5 == 0
    assert out["steps"][-1] == out["diverged_at"] and out["loss"][-1] is None
