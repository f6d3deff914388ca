"""What a GPU user runs, on CuPy: the training loop with checkpoint and resume, and the three
studies' command lines end to end. On a machine without a GPU, ``--fake-cupy`` runs them on
the stand-in (tests/fakecupy), whose numbers are NumPy's: there, every result that does not
depend on random draws made on the device equals NumPy's exactly, and is asserted so."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from minibn import backend, models, nn, optim, train
from minibn.studies import dln
from tests import _killable_run, fakecupy
from tests.data.test_cifar10 import make_folder

pytestmark = pytest.mark.cupy
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def cp():
    try:
        return backend.get("cupy")
    except backend.BackendUnavailable as err:
        pytest.skip(str(err))


def same_or_close(a, b):
    """Equal on the stand-in (NumPy underneath); within float64 rounding on a real GPU."""
    if fakecupy.is_installed():
        assert a == b
    else:
        np.testing.assert_allclose(np.array(a, dtype=float), np.array(b, dtype=float), rtol=1e-9)


def python_m(module, *args):
    """``python -m module args`` on CuPy: the stand-in's launcher where it stands in."""
    prefix = ["-m", "tests.fakecupy", "-m"] if fakecupy.is_installed() else ["-m"]
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1")
    done = subprocess.run([sys.executable, *prefix, module, *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


class Crash(_killable_run.StatelessCallback):
    name, every = "crash", 1

    def __init__(self, at):
        self.at = at

    def __call__(self, step, *args):
        if step == self.at:
            raise KeyboardInterrupt


def tiny_vgg_run(name, norm, path=None, crash_at=None, resume=False, steps=6):
    rng = np.random.default_rng(0)
    x = backend.to_device(rng.normal(size=(24, 8, 8, 3)).astype("float32"), name)
    labels = backend.to_device(rng.integers(0, 10, size=24), name)
    model = models.vgg([4, "M", 8, "M"], norm=norm, input_size=8, rng=3).to(name)
    callbacks = [Crash(-1 if crash_at is None else crash_at)]  # the same callbacks on every leg
    return model, train.train(model, nn.softmax_cross_entropy, train.MiniBatches(x, labels, 8, seed=1),
                              optim.SGD(model, 0.05, momentum=0.9), steps, callbacks=callbacks, log_every=2,
                              checkpoint=path, checkpoint_every=2 if path else None, resume=resume, progress=False)


def strip(results):
    return {k: v for k, v in results.items() if k not in ("wall_s", "callbacks")}


@pytest.mark.parametrize("norm", [None, "batchnorm", "noisy"])
def test_resume_on_cupy_is_bit_identical_and_noise_free_runs_equal_numpy(cp, tmp_path, norm):
    model, whole = tiny_vgg_run("cupy", norm)
    path = str(tmp_path / "ckpt.npz")
    with pytest.raises(KeyboardInterrupt):
        tiny_vgg_run("cupy", norm, path, crash_at=3)
    resumed_model, resumed = tiny_vgg_run("cupy", norm, path, crash_at=None, resume=True)
    assert strip(resumed) == strip(whole)
    np.testing.assert_array_equal(backend.to_host(resumed_model.flat_params()), backend.to_host(model.flat_params()))
    if norm != "noisy":  # noise is drawn on the device: the same seed, other draws than NumPy's
        host_model, on_host = tiny_vgg_run("numpy", norm)
        same_or_close(on_host["loss"], whole["loss"])
        same_or_close(backend.to_host(model.flat_params()).tolist(), host_model.flat_params().tolist())


def without_times(run):
    return {k: v for k, v in run.items() if k not in ("wall_s", "cpu_s")}


def test_dln_smoke_command_on_cupy_equals_numpy(cp, tmp_path):
    python_m("minibn.studies.dln", "--backend", "cupy", "--preset", "smoke", "--out", str(tmp_path / "gpu"))
    gpu = json.loads((tmp_path / "gpu" / "results.json").read_text())
    cpu = dln.run(out=str(tmp_path / "cpu"), preset="smoke", report=False)
    assert (tmp_path / "gpu" / "report.md").exists()
    assert gpu["config"]["environment"]["gpu"]["device_name"] and gpu["config"]["environment"]["gpu"]["cupy"]
    assert sorted(gpu["runs"]) == sorted(cpu["runs"])
    for name in gpu["runs"]:
        if not name.startswith("noisy"):
            if fakecupy.is_installed():
                assert without_times(gpu["runs"][name]) == without_times(cpu["runs"][name]), name
            else:
                same_or_close(gpu["runs"][name]["loss"], cpu["runs"][name]["loss"])


def test_vgg_smoke_command_on_cupy(cp, tmp_path):
    data = make_folder(tmp_path / "cifar", rows=20)
    out = tmp_path / "vgg"
    done = python_m("minibn.studies.vgg", "--backend", "cupy", "--preset", "smoke", "--steps", "3",
                    "--data-dir", str(data), "--out", str(out))
    assert "1 at a time" in done.stdout  # --jobs defaults to one process on a GPU
    doc = json.loads((out / "results.json").read_text())
    assert doc["config"]["backend"] == "cupy" and "gpu" in doc["config"]["environment"]
    assert doc["runs"] and all(r["steps"][-1] == 2 for r in doc["runs"].values() if r.get("diverged_at") is None)
    assert (out / "report.md").exists()


def test_theory_command_on_cupy(cp, tmp_path):
    out = tmp_path / "theory"
    python_m("minibn.studies.theory", "--backend", "cupy", "--out", str(out), "--instances", "4", "--steps", "2",
             "--every", "1", "--units", "1", "--networks", "mlp")
    doc = json.loads((out / "results.json").read_text())
    assert doc["config"]["backend"] == "cupy" and "gpu" in doc["config"]["environment"]
    for check in doc["checks"]:
        assert check["instances"] > 0 and check["holds"] == (check["name"] not in ("thm41_printed", "lemma45_premise"))
