"""A small but complete training run for the kill-and-resume test in tests/test_train.py.

Minibatches from a seeded stream, SGD with momentum, BatchNorm and noisy BatchNorm
(running statistics and a noise generator to restore), the ICS, landscape and moments
callbacks, periodic evaluation and checkpoints: everything a resume must bring back.

    python tests/_killable_run.py CHECKPOINT PAUSE_AT MARKER

runs with checkpoints every 5 steps and, at step PAUSE_AT, creates the file MARKER
and sleeps, waiting to be killed.
"""

import os
import sys
import time

from minibn import backend, nn, optim, train
from minibn.measure.ics import ICSRecorder
from minibn.measure.landscape import LandscapeRecorder
from minibn.measure.moments import MomentsRecorder

STEPS, CHECKPOINT_EVERY = 30, 5


class StatelessCallback:
    """A callback that records nothing: the train-loop protocol's result/state/load_state."""

    def result(self):
        return {}

    def state(self):
        return {}

    def load_state(self, state):
        pass


class Pause(StatelessCallback):
    """Stops the run at one step (creates ``marker``, then sleeps) so a test can kill it there."""

    name, every = "pause", 1

    def __init__(self, at=None, marker=None):
        self.at, self.marker = at, marker

    def __call__(self, step, model, x, target, optimizer):
        if step == self.at:
            with open(self.marker, "w"):
                pass
            time.sleep(600)


def loss_fn(out, target):
    return nn.squared_error(out, target, "mean")


def run(checkpoint=None, resume=False, pause_at=None, marker=None):
    """Returns (results, final flat parameters, final model state)."""
    rng = backend.rng(7)
    x = rng.normal(size=(48, 6))
    y = x @ rng.normal(size=(6, 3))
    model = nn.Sequential([
        nn.Dense(6, 8, rng=rng, dtype="float64"), nn.BatchNorm(8, dtype="float64"), nn.ReLU(),
        nn.Dense(8, 8, rng=rng, dtype="float64"), nn.NoisyBatchNorm(8, rng=11, dtype="float64"), nn.ReLU(),
        nn.Dense(8, 3, rng=rng, dtype="float64"),
    ])
    callbacks = [ICSRecorder(loss_fn, every=4), LandscapeRecorder(loss_fn, [0.01, 0.05, 0.2], every=5),
                 MomentsRecorder([0, 3, 6], every=3, n_samples=5, seed=1), Pause(pause_at, marker)]

    def evaluate(m, step):
        return {"loss": loss_fn(m.forward(x, "eval"), y)[0]}

    results = train.train(model, loss_fn, train.MiniBatches(x, y, 16, seed=3), optim.SGD(model, lr=0.05, momentum=0.9),
                          STEPS, callbacks=callbacks, evaluate=evaluate, eval_every=7, log_every=2,
                          checkpoint=checkpoint, checkpoint_every=CHECKPOINT_EVERY if checkpoint else None,
                          resume=resume, progress=False)
    return results, model.flat_params(), model.state()


if __name__ == "__main__":
    checkpoint, pause_at, marker = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    run(checkpoint, pause_at=pause_at, marker=marker)
    sys.exit(f"{os.path.basename(__file__)}: not paused at step {pause_at}")
