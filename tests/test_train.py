"""The training loop: schedule, evaluation, divergence, checkpoints, and bit-identical resume
(including a real process killed by a signal)."""

import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from minibn import backend, models, nn, optim, train
from minibn.measure.ics import ICSRecorder
from minibn.measure.landscape import LandscapeRecorder
from minibn.measure.moments import MomentsRecorder
from tests import _killable_run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Spy:
    """Records when it is called and the loss it sees (to check it runs before the update)."""

    def __init__(self, every, name="spy"):
        self.name, self.every, self.calls = name, every, []

    def __call__(self, step, model, x, target, optimizer):
        self.calls.append((step, nn.squared_error(model.forward(x, "probe"), target)[0]))

    def result(self):
        return {"calls": [s for s, _ in self.calls]}

    def state(self):
        return {"calls": self.calls}

    def load_state(self, state):
        self.calls = [tuple(c) for c in state["calls"]]


class Crash(_killable_run.StatelessCallback):
    name, every = "crash", 1

    def __init__(self, at):
        self.at = at

    def __call__(self, step, *args):
        if step == self.at:
            raise KeyboardInterrupt


def dln_problem(norm="batchnorm", depth=4, lr=1e-3):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 5))
    y = x @ rng.normal(size=(5, 5))
    model = models.dln(depth=depth, width=5, norm=norm, rng=1)
    return model, x, y, optim.SGD(model, lr=lr)


def without_wall(results):
    return {k: v for k, v in results.items() if k != "wall_s"}


def test_schedule_of_losses_callbacks_and_evaluation():
    model, x, y, opt = dln_problem()
    spy = Spy(every=4)
    evals, eval_steps = [], []

    def evaluate(m, step):
        eval_steps.append(step)
        evals.append(nn.squared_error(m.forward(x, "eval"), y)[0])
        return {"loss": evals[-1], "nan": math.nan}

    out = train.train(model, nn.squared_error, train.FullBatch(x, y), opt, 10, callbacks=[spy],
                      evaluate=evaluate, eval_every=5, log_every=3)
    assert out["steps"] == [0, 3, 6, 9] and len(out["loss"]) == 4
    assert out["loss"][-1] < out["loss"][0]
    assert out["diverged_at"] is None
    assert [s for s, _ in spy.calls] == [0, 4, 8, 9]  # every 4 steps and the last step
    assert out["callbacks"] == {"spy": {"calls": [0, 4, 8, 9]}}
    # callbacks see w_t before step t's update: the probe loss equals the recorded train loss (full batch)
    assert spy.calls[0][1] == pytest.approx(out["loss"][0], rel=1e-12)
    assert out["eval_steps"] == eval_steps == [0, 5, 10]  # evaluate is told the number of updates done
    assert out["eval"]["loss"] == evals and out["eval"]["nan"] == [None] * 3
    json.dumps(out, allow_nan=False)


def test_diverging_run_is_recorded_not_raised(tmp_path):
    model, x, y, opt = dln_problem(norm=None, depth=6, lr=1.0)
    callbacks = [ICSRecorder(nn.squared_error, every=1), LandscapeRecorder(nn.squared_error, [0.5, 1.0, 4.0], every=1),
                 MomentsRecorder([0, 3, 5], every=1, n_samples=4, seed=0)]
    path = str(tmp_path / "ckpt")
    with np.errstate(all="ignore"):
        out = train.train(model, nn.squared_error, train.FullBatch(x, y), opt, 50, callbacks=callbacks,
                          evaluate=lambda m, step: {"loss": nn.squared_error(m.forward(x, "eval"), y)[0]},
                          log_every=10, checkpoint=path)
    t = out["diverged_at"]
    assert t is not None and 0 < t < 50
    assert out["steps"][-1] == t and out["loss"][-1] is None and all(v is not None for v in out["loss"][:-1])
    assert out["eval_steps"] == [t]
    for name in ("ics", "landscape", "moments"):
        assert out["callbacks"][name]["steps"][-1] == t
    assert out["callbacks"]["landscape"]["nonfinite"][-1] > 0
    json.dumps(out, allow_nan=False)
    # the final checkpoint records the divergence; resuming returns the same results without training
    model2, _, _, opt2 = dln_problem(norm=None, depth=6, lr=1.0)
    callbacks2 = [ICSRecorder(nn.squared_error, every=1), LandscapeRecorder(nn.squared_error, [0.5, 1.0, 4.0], every=1),
                  MomentsRecorder([0, 3, 5], every=1, n_samples=4, seed=0)]
    again = train.train(model2, nn.squared_error, train.FullBatch(x, y), opt2, 50, callbacks=callbacks2,
                        log_every=10, checkpoint=path, resume=True)
    assert without_wall(again) == without_wall(out)
    assert np.array_equal(model2.flat_params(), model.flat_params())


def test_resume_after_an_exception_is_bit_identical(tmp_path):
    def run(path=None, crash_at=None, resume=False):
        model, x, y, _ = dln_problem(norm="noisy")
        opt = optim.SGD(model, lr=1e-3, momentum=0.9)
        callbacks = [Spy(every=3), ICSRecorder(nn.squared_error, every=4), Crash(crash_at)]
        out = train.train(model, nn.squared_error, train.MiniBatches(x, y, 8, seed=2), opt, 20, callbacks=callbacks,
                          evaluate=lambda m, step: {"loss": nn.squared_error(m.forward(x, "eval"), y)[0]}, eval_every=6,
                          checkpoint=path, checkpoint_every=4 if path else None, resume=resume)
        return out, model

    reference, ref_model = run()
    path = str(tmp_path / "run.npz")
    with pytest.raises(KeyboardInterrupt):
        run(path, crash_at=14)
    assert train.load_checkpoint(path)["step"] == 12
    resumed, model = run(path, resume=True)
    assert without_wall(resumed) == without_wall(reference)
    assert np.array_equal(model.flat_params(), ref_model.flat_params())
    assert json.dumps(model.state(), default=lambda a: a.tolist()) == \
        json.dumps(ref_model.state(), default=lambda a: a.tolist())
    assert sorted(os.listdir(tmp_path)) == ["run.npz"]  # no temporary files left behind


def test_killed_process_resumes_to_the_identical_result(tmp_path):
    reference, ref_params, ref_state = _killable_run.run()
    checkpoint, marker = str(tmp_path / "ckpt.npz"), str(tmp_path / "paused")
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "tests", "_killable_run.py"), checkpoint, "17", marker],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while not os.path.exists(marker):
            assert proc.poll() is None, f"the run ended before pausing:\n{proc.stdout.read().decode()}"
            assert time.monotonic() < deadline, "the run did not reach step 17 in 120 s"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=60) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
    saved = train.load_checkpoint(checkpoint)
    assert saved["step"] == 15 and saved["steps"] == _killable_run.STEPS  # killed mid-run, 2 steps past a checkpoint
    resumed, params, state = _killable_run.run(checkpoint, resume=True)
    assert without_wall(resumed) == without_wall(reference)
    assert np.array_equal(params, ref_params)
    assert state[4]["rng"] == ref_state[4]["rng"]  # the noise generator continued exactly
    assert np.array_equal(state[1]["running_var"], ref_state[1]["running_var"])


def test_checkpoint_round_trip_and_mismatch(tmp_path):
    path = str(tmp_path / "new" / "folder" / "c")  # folders are created
    payload = {"a": np.arange(3.0, dtype="float32"), "b": {"1": [np.int64(4), 2.5, None, "s"]}, "t": (np.ones(2),)}
    train.save_checkpoint(path, payload)
    back = train.load_checkpoint(path)
    assert back["a"].dtype == np.float32 and back["a"].tolist() == [0.0, 1.0, 2.0]
    assert back["b"] == {"1": [4, 2.5, None, "s"]} and back["t"][0].tolist() == [1.0, 1.0]
    # long float lists travel as binary float64 runs; they come back as the same Python floats
    runs = {"thirds": [i / 3 for i in range(100)] + [-0.0, 1e-310, math.inf],
            "with_none": [0.5] * 40 + [None], "short": [0.1, 0.2], "nested": [[2.0 ** -i for i in range(50)]] * 3}
    train.save_checkpoint(path, runs)
    back = train.load_checkpoint(path)
    assert back == runs and all(type(v) is float for v in back["thirds"])
    assert math.copysign(1.0, back["thirds"][100]) == -1.0
    with pytest.MonkeyPatch.context() as patch:   # a checkpoint of the JSON-only format still loads
        patch.setattr(train, "FLOAT_RUN", 10**9)
        train.save_checkpoint(path, runs)
    assert "__floats__" not in np.load(path).files
    assert train.load_checkpoint(path) == runs
    with pytest.raises(TypeError, match="cannot checkpoint a object"):
        train.save_checkpoint(path, {"x": object()})
    model, x, y, opt = dln_problem()
    train.train(model, nn.squared_error, train.FullBatch(x, y), opt, 2, checkpoint=path)
    other, _, _, opt2 = dln_problem(depth=3)
    with pytest.raises(ValueError, match="does not match this model"):
        train.train(other, nn.squared_error, train.FullBatch(x, y), opt2, 2, checkpoint=path, resume=True)
    model, x, y, opt = dln_problem()
    with pytest.raises(ValueError, match="written with callbacks"):
        train.train(model, nn.squared_error, train.FullBatch(x, y), opt, 2, checkpoint=path, resume=True,
                    callbacks=[Spy(1)])


def test_argument_errors():
    model, x, y, opt = dln_problem()
    stream = train.FullBatch(x, y)
    with pytest.raises(ValueError, match="need a checkpoint path"):
        train.train(model, nn.squared_error, stream, opt, 2, resume=True)
    with pytest.raises(ValueError, match="callback names must be unique"):
        train.train(model, nn.squared_error, stream, opt, 2, callbacks=[Spy(1), Spy(2)])
    with pytest.raises(ValueError, match="steps must be a non-negative integer"):
        train.train(model, nn.squared_error, stream, opt, -1)
    with pytest.raises(ValueError, match="eval_every must be a positive integer"):
        train.train(model, nn.squared_error, stream, opt, 2, eval_every=0)


def test_progress_bar_is_quiet_without_a_terminal(capsys):
    model, x, y, opt = dln_problem()
    train.train(model, nn.squared_error, train.FullBatch(x, y), opt, 3, progress="quiet run")
    assert capsys.readouterr().err == ""
    train.train(model, nn.squared_error, train.FullBatch(x, y), opt, 3, progress=True)
    assert "3/3" in capsys.readouterr().err


def test_minibatches_shuffle_each_epoch_and_resume():
    x = np.arange(50.0).reshape(50, 1, 1, 1)
    y = np.arange(50) % 10
    a = train.MiniBatches(x, y, 16, seed=3)
    epoch0 = [a.next()[0].ravel() for _ in range(3)]
    assert len(set(np.concatenate(epoch0).tolist())) == 48  # one epoch: no repeats, the remainder of 2 dropped
    first_of_epoch1 = a.next()[0].ravel()
    assert a.state() == {"seed": 3, "epoch": 1, "position": 1}
    assert not np.array_equal(first_of_epoch1, epoch0[0])  # a fresh permutation
    # epoch e's order is rng([seed, e]).permutation(n): the order the committed VGG runs were trained on
    assert first_of_epoch1.tolist() == np.random.default_rng([3, 1]).permutation(50)[:16].tolist()
    saved = json.loads(json.dumps(a.state()))
    rest = [a.next() for _ in range(5)]
    b = train.MiniBatches(x, y, 16, seed=3)
    b.load_state(saved)
    for (xa, ya), (xb, yb) in zip(rest, [b.next() for _ in range(5)]):
        assert np.array_equal(xa, xb) and np.array_equal(ya, yb)
        assert np.array_equal(xa.ravel().astype(int) % 10, yb)  # rows of x and target stay paired
    with pytest.raises(ValueError, match="saved with seed 3, this stream has 4"):
        train.MiniBatches(x, y, 16, seed=4).load_state(saved)
    with pytest.raises(ValueError, match=r"batch_size must be an integer in \[1, 50\], got 51"):
        train.MiniBatches(x, y, 51)
    with pytest.raises(ValueError, match="x has 50 rows but target has 49"):
        train.MiniBatches(x, y[:49], 16)


def test_minibatches_stay_on_the_device_of_x(xp):
    x = backend.to_device(np.arange(12.0).reshape(6, 2), xp)
    bx, by = train.MiniBatches(x, backend.to_device(np.arange(6), xp), 4, seed=0).next()
    assert backend.array_module(bx) is xp and backend.array_module(by) is xp
    assert backend.to_host(bx)[:, 0].tolist() == [2.0 * v for v in backend.to_host(by).tolist()]
