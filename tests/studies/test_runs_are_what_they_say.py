"""Runs are what they say: no stale run on resume, one study per folder and one writer at a time,
workers that end with their study, report commands as careful as the studies, and a Python API
that checks what the command line checks. Real folders and real processes throughout."""

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from minibn import io
from minibn.studies import dln, folder, theory

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENV = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
SMOKE = ("--preset", "smoke", "--variants", "standard", "batchnorm", "--jobs", "1")


def study(module, *argv, env=None):
    """``python -m minibn.studies.MODULE ARGV`` in a real process: (exit status, stdout, stderr)."""
    proc = subprocess.run([sys.executable, "-m", f"minibn.studies.{module}", *map(str, argv)], capture_output=True,
                          text=True, cwd=ROOT, env=env or ENV, timeout=300)
    return proc.returncode, proc.stdout, proc.stderr


def start(module, *argv):
    return subprocess.Popen([sys.executable, "-m", f"minibn.studies.{module}", *map(str, argv)], cwd=ROOT, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def fingerprint(path):
    """{relative path: sha1} of every file under ``path``."""
    out = {}
    for base, _, files in os.walk(path):
        for name in files:
            full = os.path.join(base, name)
            with open(full, "rb") as f:
                out[os.path.relpath(full, path)] = hashlib.sha1(f.read()).hexdigest()
    return out


def wait_for(predicate, seconds=60):
    end = time.time() + seconds
    while time.time() < end:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def children(pid):
    """The pids of ``pid``'s child processes (Linux /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry))
    return found


def is_worker(pid):
    """Whether ``pid`` is a study's worker process (spawned by multiprocessing, not its resource tracker)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
    except OSError:
        return False
    return b"spawn_main" in cmdline


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished DLN smoke study of two runs at 20 steps."""
    out = tmp_path_factory.mktemp("dln20")
    rc, _, err = study("dln", *SMOKE, "--steps", "20", "--out", out)
    assert rc == 0, err
    return out


# --- 1, 2, 4: a folder holds one study, of one config --------------------------------------------

def test_the_same_study_with_other_settings_is_refused_and_touches_nothing(finished):
    before = fingerprint(finished)
    for extra in ((), ("--resume",)):
        rc, _, err = study("dln", *SMOKE, "--steps", "2000", "--out", finished, *extra)
        assert rc == 2 and "holds a dln study of other settings (steps: 20 there, 2000 here)" in err, err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert fingerprint(finished) == before


@pytest.mark.parametrize("module, argv", [("theory", ("--instances", "1", "--steps", "1", "--networks", "mlp")),
                                          ("sharpness", ("--preset", "smoke", "--parts", "depth"))])
def test_another_study_into_the_folder_is_refused_and_touches_nothing(finished, module, argv):
    before = fingerprint(finished)
    rc, _, err = study(module, *argv, "--out", finished)
    assert rc == 2 and f"holds a dln study's results: a {module} study would replace them" in err, err
    assert fingerprint(finished) == before


def test_a_run_folder_of_other_settings_is_trained_anew_on_resume(finished, tmp_path):
    out = tmp_path / "dln40"
    rc, _, err = study("dln", *SMOKE, "--steps", "40", "--out", out)
    assert rc == 0, err
    name = "batchnorm_lr0.0001_seed0"
    shutil.rmtree(out / "runs" / name)                       # the 20-step run's folder where the 40-step one was
    shutil.copytree(finished / "runs" / name, out / "runs" / name)
    rc, stdout, err = study("dln", *SMOKE, "--steps", "40", "--out", out, "--resume")
    assert rc == 0, err
    assert f"{name}: its folder holds a run of other settings; trained anew" in stdout
    runs = io.read_json(out / "results.json")["runs"]
    assert runs[name]["steps"] == runs["standard_lr0.0001_seed0"]["steps"] and len(runs[name]["steps"]) == 40
    assert io.read_json(out / "runs" / name / "run.json")["config"]["steps"] == 40


def test_results_are_not_written_of_a_run_whose_record_is_another(tmp_path):
    task = {"name": "a", "out": str(tmp_path), "run": dln.Run("batchnorm", 1e-4, 0), "record": {"study": "dln"}}
    os.makedirs(tmp_path / "runs" / "a")
    io.write_json(tmp_path / "runs" / "a" / "run.json", {"study": "dln", "other": 1})
    assert "does not record the settings" in folder.check_runs([task], {"a": {"variant": "batchnorm"}})[0]
    io.write_json(tmp_path / "runs" / "a" / "run.json", task["record"])
    assert folder.check_runs([task], {"a": {"variant": "batchnorm", "lr": 1e-4, "seed": 0}}) == []
    assert "another run" in folder.check_runs([task], {"a": {"variant": "standard", "lr": 1e-4, "seed": 0}})[0]


# --- 3: nothing of an earlier run is read back by a study started anew ---------------------------

def test_a_study_started_anew_never_reads_an_earlier_runs_files(tmp_path):
    out = tmp_path / "sharp"
    argv = ("--preset", "smoke", "--parts", "dln", "--jobs", "1", "--out", out)
    rc, _, err = study("sharpness", *argv)
    assert rc == 0, err
    initial = out / "runs" / "dln_standard_lr0.0001_seed0" / "initial.json"
    io.write_json(initial, {"slq": {"train": {"lambda_max": 12345.0}}})     # another study's, on other data
    rc, _, err = study("sharpness", *argv)
    assert rc == 0, err
    assert io.read_json(initial)["slq"]["train"]["lambda_max"] != 12345.0


# --- 2: one writer at a time; the lock dies with its process -------------------------------------

def test_a_second_writer_is_refused_at_once_and_a_killed_one_leaves_no_lock(tmp_path):
    out = tmp_path / "locked"
    first = start("dln", *SMOKE, "--steps", "100000", "--out", out)
    try:
        assert wait_for(lambda: (out / "config.json").exists()), first.stderr.read()
        began = time.time()
        rc, _, err = study("dln", *SMOKE, "--steps", "100000", "--out", out, "--resume")
        assert rc == 2 and "another process is writing this study" in err and time.time() - began < 30, err
        assert first.poll() is None
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    with folder.locked(str(out / ".lock")):   # nothing stale: the lock went with the killed process
        pass


# --- 3 (workers): a dead worker is a failed run; SIGTERM stops the workers -----------------------

def workers_of(proc):
    assert wait_for(lambda: len([p for p in children(proc.pid) if is_worker(p)]) >= 2, 60), "no workers started"
    return [p for p in children(proc.pid) if is_worker(p)]


def test_a_killed_worker_is_reported_with_the_resume_line(tmp_path):
    out = tmp_path / "oom2"
    argv = ("--preset", "smoke", "--variants", "standard", "batchnorm", "--steps", "3000", "--jobs", "2", "--out", out)
    proc = start("dln", *argv)
    try:
        victim = workers_of(proc)[0]
        os.kill(victim, signal.SIGKILL)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 1, err
    assert f"its worker process (pid {victim}) died while training it: killed by signal 9" in err
    assert "--resume" in err
    rc, _, err = study("dln", *argv, "--resume")
    assert rc == 0, err
    doc = io.read_json(out / "results.json")
    assert sorted(doc["runs"]) == sorted(dln.Run(v, lr, 0).name for v, lr in doc["config"]["runs"])
    assert all(run["steps"][-1] == 2999 for run in doc["runs"].values())


def test_sigterm_stops_the_workers_and_prints_the_quoted_resume_line(tmp_path):
    out = tmp_path / "with space's"
    proc = start("dln", "--preset", "smoke", "--variants", "standard", "batchnorm", "--steps", "100000", "--jobs", "2",
                 "--out", out)
    try:
        workers = workers_of(proc)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 143, err
    quoted = "--out '" + str(out).replace("'", "'\"'\"'") + "' --resume"
    assert "terminated: finished runs and checkpoints are kept" in err and quoted in err, err
    assert wait_for(lambda: not any(os.path.exists(f"/proc/{w}") and is_worker(w) for w in workers), 10)


# --- 5: report commands ---------------------------------------------------------------------------

def test_a_report_command_on_another_studys_folder_is_a_usage_error_touching_nothing(finished):
    before = fingerprint(finished)
    for report in ("vgg_report", "sharpness_report", "theory_report"):
        rc, _, err = study(report, finished)
        assert rc == 2 and "holds a dln study's results" in err and "dln_report" in err, err
        assert "Traceback" not in err
    assert fingerprint(finished) == before


@pytest.mark.parametrize("damage", ["truncated npz", "no runs"])
def test_a_report_of_damaged_results_is_one_line(finished, tmp_path, damage):
    copy = tmp_path / "copy"
    shutil.copytree(finished, copy)
    if damage == "truncated npz":
        data = (copy / "results.npz").read_bytes()
        (copy / "results.npz").write_bytes(data[:len(data) // 2])
    else:
        doc = io.read_json(copy / "results.json")
        io.write_json(copy / "results.json", {**doc, "runs": {}})
    before = fingerprint(copy)
    rc, _, err = study("dln_report", copy)
    assert rc == 1 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "is damaged" in err
    assert fingerprint(copy) == before


# --- 7, 10: the Python API checks what the command line checks, before any folder ----------------

@pytest.mark.parametrize("options, message", [
    ({"preset": "Smoke"}, "--preset must be one of"), ({"steps": 2.5}, "--steps must be a positive integer"),
    ({"steps": True}, "--steps must be a positive integer"), ({"seed": -1}, "--seed must be an integer >= 0"),
    ({"seeds": np.float64(2)}, "--seeds must be a positive integer"), ({"jobs": 1.5}, "--jobs must be an integer"),
])
def test_the_python_api_refuses_what_the_command_line_refuses_before_any_folder(tmp_path, options, message):
    out = tmp_path / "never"
    with pytest.raises(ValueError, match=message):
        dln.run(out=str(out), **options)
    assert not out.exists()
    argv = [f"--{k.replace('_', '-')}={v}" for k, v in options.items()]
    rc, _, err = study("dln", "--out", out, *argv)
    assert rc == 2 and not out.exists(), err


def test_numpy_integers_are_integers(tmp_path):
    doc = dln.run(out=str(tmp_path / "o"), preset="smoke", variants=["standard"], steps=np.int64(3), seed=np.int64(1),
                  seeds=np.int32(1))
    assert doc["config"]["seeds"] == [1] and doc["config"]["steps"] == 3
    doc = theory.run(out=str(tmp_path / "t"), instances=np.int64(1), steps=np.int64(1), every=np.int64(1),
                     networks=["mlp"], report=False)
    assert doc["config"]["instances"] == 1


def test_figures_are_drawn_whatever_mplbackend_the_shell_sets(tmp_path):
    rc, _, err = study("dln", *SMOKE, "--steps", "5", "--out", tmp_path / "o", env={**ENV, "MPLBACKEND": "nonsense"})
    assert rc == 0, err
    assert (tmp_path / "o" / "fig3_ics.png").stat().st_size > 1000


def test_a_report_that_cannot_be_written_is_one_line_and_leaves_the_folder(finished, tmp_path, monkeypatch, capsys):
    from minibn.studies import dln_report

    copy = tmp_path / "full"
    shutil.copytree(finished, copy)
    before = fingerprint(copy)

    def full_disk(path, write, mode):
        raise OSError(28, f"No space left on device (writing {path})", path)

    monkeypatch.setattr(io, "_write_atomic", full_disk)
    assert dln_report.main([str(copy)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: the report of {copy} could not be written: ") and len(err.splitlines()) == 1, err
    assert fingerprint(copy) == before
