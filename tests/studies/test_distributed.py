"""The studies on Dask (--executor dask): the same results as the local pool, a killed worker's run
resumed from its checkpoint, Ctrl-C and --resume, and option errors before any work.

A local cluster of 2 single-threaded worker processes on the loopback interface serves the tests
that do not start their own; the runs are the DLN smoke preset's, a few seconds each. The local
runs compared with Dask's go through the local pool (--jobs 2), whose workers, like Dask's, run
one BLAS thread: float32 GEMMs split over two threads sum in another order and differ in the
last bits, so a comparison with an in-process run (--jobs 1) would test the machine's core count.
"""

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from minibn import backend, io
from minibn.results import Run
from minibn.studies import common, dln, vgg, workers
from tests.data.test_cifar10 import make_folder

NEEDS_DASK = "the Dask tests need pip install 'minibn[dask]' (the test extra installs it)"

TIMES = ("wall_s", "cpu_s")
LONG = ["--preset", "smoke", "--lr", "1e-4", "--steps", "300", "--no-report"]


def runs_of(folder):
    """results.json's run entries without their times, which differ from run to run."""
    return {name: {k: v for k, v in run.items() if k not in TIMES}
            for name, run in io.read_json(os.path.join(folder, "results.json"))["runs"].items()}


@pytest.fixture(scope="module")
def scheduler():
    distributed = pytest.importorskip("distributed", reason=NEEDS_DASK)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=None) as cluster:
        yield cluster.scheduler_address


@pytest.fixture(scope="module")
def long_local(tmp_path_factory):
    """The runs of the kill and Ctrl-C tests, trained by the local executor without interruption."""
    out = tmp_path_factory.mktemp("long-local")
    assert dln.main(["--out", str(out), "--jobs", "1", "--variants", "batchnorm", "standard"] + LONG) == 0
    return runs_of(out)


def test_dln_smoke_on_dask_equals_the_local_executor(scheduler, tmp_path):
    argv = ["--preset", "smoke", "--no-report"]  # the report is drawn from results.json alike
    assert dln.main(argv + ["--out", str(tmp_path / "local"), "--jobs", "2"]) == 0
    assert dln.main(argv + ["--out", str(tmp_path / "dask"), "--executor", "dask", "--scheduler", scheduler]) == 0
    local, on_dask = runs_of(tmp_path / "local"), runs_of(tmp_path / "dask")
    assert len(local) == len(dln.PRESETS["smoke"]["runs"]) and set(on_dask) == set(local)
    for name in local:
        assert on_dask[name] == local[name], name


def test_vgg_on_dask_records_a_diverged_run_as_the_local_executor(scheduler, tmp_path):
    data_dir = make_folder(tmp_path / "cifar", rows=20)
    argv = ["--preset", "smoke", "--data-dir", data_dir, "--experiments", "E1", "--lr-high", "1e6"]
    assert vgg.main(argv + ["--out", str(tmp_path / "local"), "--jobs", "2"]) == 0
    assert vgg.main(argv + ["--out", str(tmp_path / "dask"), "--executor", "dask", "--scheduler", scheduler]) == 0
    local, on_dask = runs_of(tmp_path / "local"), runs_of(tmp_path / "dask")
    assert any(run["diverged_at"] is not None for run in local.values())
    assert on_dask == local


def _wait_for(condition, proc, what, seconds=120):
    deadline = time.monotonic() + seconds
    while not condition():
        assert proc.poll() is None, f"the study ended before {what}: {proc.communicate()[1][-2000:]}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_a_killed_workers_run_resumes_from_its_checkpoint(scheduler, long_local, tmp_path):
    """SIGKILL the worker process training a run after its first checkpoint: Dask starts the task
    again on the other worker, which resumes from that checkpoint (attempt 2 of this submission)
    and the study ends with the result of an uninterrupted run."""
    out = tmp_path / "killed"
    name = Run("batchnorm", 1e-4, 0).name
    folder = out / "runs" / name
    proc = subprocess.Popen([sys.executable, "-m", "minibn.studies.dln", "--out", str(out), "--executor", "dask",
                             "--scheduler", scheduler, "--variants", "batchnorm"] + LONG,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(lambda: (folder / "checkpoint.npz").exists() and (folder / "attempt.json").exists(), proc,
                  "the first checkpoint")
        first = io.read_json(folder / "attempt.json")
        assert first["attempt"] == 1 and not (folder / "result.json").exists()
        os.kill(first["pid"], signal.SIGKILL)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err[-2000:]
    again = io.read_json(folder / "attempt.json")
    assert again["submission"] == first["submission"] and again["attempt"] == 2 and again["pid"] != first["pid"]
    assert runs_of(out)[name] == long_local[name]


def test_a_restarted_task_resumes_only_within_its_own_submission(tmp_path):
    """What the killed worker's retry relies on: a second start of one submission's task trains with
    resume=True; a new submission (a study started anew without --resume) does not."""
    seen = []
    item = {"name": "r", "out": str(tmp_path), "resume": False}
    for submission in ("first", "first", "second"):
        workers._restartable(seen.append, submission, item)
    assert [i["resume"] for i in seen] == [False, True, False]
    marker = io.read_json(tmp_path / "runs" / "r" / "attempt.json")
    assert marker["submission"] == "second" and marker["attempt"] == 1 and marker["pid"] == os.getpid()


def test_ctrl_c_leaves_the_study_resumable_and_resume_trains_only_what_is_missing(scheduler, long_local, tmp_path):
    """Ctrl-C (SIGINT to the process group: the client and its local cluster) once a run has
    checkpointed: exit 130 naming --resume; --resume on Dask keeps every result written before
    (not trained again: the workers may finish a run in the seconds the cluster takes to close),
    resumes the rest and ends with the uninterrupted results."""
    out = tmp_path / "interrupted"
    folders = [out / "runs" / Run(v, 1e-4, 0).name for v in ("batchnorm", "standard")]
    argv = ["--out", str(out), "--executor", "dask", "--variants", "batchnorm", "standard"] + LONG
    proc = subprocess.Popen([sys.executable, "-m", "minibn.studies.dln", "--jobs", "2"] + argv,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _wait_for(lambda: any((f / "checkpoint.npz").exists() for f in folders), proc, "a checkpoint")
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130 and f"{' '.join(argv)} --resume" in err, err[-2000:]
    assert not (out / "results.json").exists()
    kept = {f: (f / "result.json").stat().st_mtime_ns for f in folders if (f / "result.json").exists()}
    assert dln.main(argv + ["--scheduler", scheduler, "--resume"]) == 0
    assert {f: (f / "result.json").stat().st_mtime_ns for f in kept} == kept
    assert runs_of(out) == long_local


def _refused_port():
    """A loopback port nothing listens on: bound, then closed."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _option_error(argv, tmp_path, capsys):
    out = tmp_path / "never"
    with pytest.raises(SystemExit) as exit_:
        dln.main(["--preset", "smoke", "--out", str(out)] + argv)
    assert exit_.value.code == 2 and not out.exists()
    lines = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(lines) == 1
    return lines[0]


def test_dask_not_installed_is_a_clear_error_before_any_work(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed now raises ImportError
    line = _option_error(["--executor", "dask"], tmp_path, capsys)
    assert "--executor dask" in line and "pip install 'minibn[dask]'" in line


def test_unreachable_scheduler_is_a_clear_error_before_any_work(tmp_path, capsys):
    dask = pytest.importorskip("dask", reason=NEEDS_DASK)

    address = f"tcp://127.0.0.1:{_refused_port()}"
    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}):
        line = _option_error(["--executor", "dask", "--scheduler", address], tmp_path, capsys)
    assert f"--scheduler {address}: no Dask scheduler answered" in line


def test_scheduler_without_the_dask_executor_is_refused(tmp_path, capsys):
    line = _option_error(["--scheduler", "tcp://127.0.0.1:8786"], tmp_path, capsys)
    assert "--scheduler tcp://127.0.0.1:8786 needs --executor dask" in line


def test_a_local_gpu_cluster_without_dask_cuda_names_its_install(monkeypatch):
    pytest.importorskip("distributed", reason=NEEDS_DASK)
    monkeypatch.setitem(sys.modules, "dask_cuda", None)
    with pytest.raises(ValueError, match=r"dask-cuda, which is not installed .*: pip install dask-cuda"):
        common.check_executor("dask", None, "cupy")
    with pytest.raises(ValueError, match="pip install dask-cuda"):
        workers.local_cluster(1, "cupy")
    common.check_executor("dask", None, "numpy")  # the CPU cluster does not need it


@pytest.mark.cupy
def test_cupy_on_dask_without_dask_cuda_fails_before_any_work(monkeypatch, tmp_path, capsys):
    try:
        backend.get("cupy")
    except backend.BackendUnavailable as err:
        pytest.skip(str(err))
    pytest.importorskip("distributed", reason=NEEDS_DASK)
    monkeypatch.setitem(sys.modules, "dask_cuda", None)
    line = _option_error(["--backend", "cupy", "--executor", "dask"], tmp_path, capsys)
    assert "pip install dask-cuda" in line


def test_importing_the_studies_does_not_import_dask():
    code = ("import sys, minibn.studies.dln, minibn.studies.vgg, minibn.studies.theory, minibn.studies.common; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('dask', 'distributed', 'dask_cuda')))")
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert found == "[]"


def test_the_options_are_on_the_run_studies_and_the_page_is_linked():
    from minibn.studies import theory

    for study in (dln, vgg):
        text = subprocess.run([sys.executable, "-m", study.__name__, "--help"], capture_output=True, text=True,
                              check=True).stdout
        assert "--executor {local,dask}" in text and "--scheduler ADDRESS" in text, study.__name__
    with pytest.raises(SystemExit) as exit_:
        theory.main(["--executor", "dask"])  # one process: nothing to spread (its docstring says why)
    assert exit_.value.code == 2
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert os.path.isfile(os.path.join(root, "docs", "distributed.md"))
    for page in ("README.md", os.path.join("docs", "index.md")):
        with open(os.path.join(root, page), encoding="utf-8") as f:
            assert "distributed.md" in f.read(), page
