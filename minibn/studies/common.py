"""What every study shares: option checks, the output folder and resume, the worker pool,
the record of the machine, and reading a results folder back for its report."""

import argparse
import os
import platform
import sys

from minibn import backend, io


def add_options(parser, default_out, resume=True, jobs=True):
    """The options the studies share: --backend, --out, and (unless told not to) --resume and --jobs."""
    parser.add_argument("--backend", default="numpy", help="array backend: numpy (CPU) or cupy (GPU) [numpy]")
    parser.add_argument("--out", default=None, help=f"output folder [{default_out}]")
    if resume:
        parser.add_argument("--resume", action="store_true", help="continue the study in --out: finished runs are "
                            "kept, interrupted ones resume from their last checkpoint")
    if jobs:
        parser.add_argument("--jobs", type=int, default=None,
                            help="runs trained at once in worker processes, one BLAS thread each "
                                 "[numpy: min(2, cores); cupy: 1]")


def default_jobs(backend_name="numpy"):
    """Runs trained at once: min(2, cores) on the CPU; one on a GPU, where every worker process
    would hold its own CUDA context and memory pool on the one device while a VGG step
    already keeps it busy (the DLN's tiny steps are launch-bound: several processes could
    overlap them, unmeasured so far; ``python -m minibn.gpucheck`` reports its steps/s)."""
    return 1 if backend_name == "cupy" else min(2, os.cpu_count() or 1)


def check_jobs(jobs, backend_name="numpy"):
    """``jobs`` checked (ValueError naming --jobs), or the backend's default when it is None."""
    if jobs is None:
        return default_jobs(backend_name)
    if int(jobs) != jobs or jobs < 1:
        raise ValueError(f"--jobs must be >= 1, got {jobs}")
    return int(jobs)



def check_backend(name):
    """Raise ValueError naming --backend when ``name`` cannot be used here."""
    try:
        backend.get(name)
    except (backend.BackendUnavailable, ValueError) as err:
        raise ValueError(f"--backend {name}: {err}") from None


def check_writable_dir(path):
    """Create ``path`` if needed and prove it writable, or raise ValueError naming --out."""
    probe = os.path.join(path, ".writable")
    try:
        os.makedirs(path, exist_ok=True)
        io.write_text(probe, "")
        os.unlink(probe)
    except OSError as err:
        raise ValueError(f"--out {path} is not a writable folder: {err}") from None


def environment(backend_name="numpy"):
    """Versions and machine, recorded in every study's config; on CuPy also the GPU's record
    (:func:`gpu_environment`)."""
    import numpy
    import scipy

    import minibn

    env = {"python": platform.python_version(), "numpy": numpy.__version__, "scipy": scipy.__version__,
           "minibn": minibn.__version__, "platform": platform.platform(),
           "processor": platform.processor() or platform.machine(), "cpu_count": os.cpu_count()}
    if backend_name == "cupy":
        env["gpu"] = gpu_environment()
    return env


def _cuda_version(code):
    """CUDA's integer version (12040) as text ("12.4")."""
    return f"{code // 1000}.{code % 1000 // 10}"


def gpu_environment():
    """CuPy's version, the CUDA runtime and driver versions, and the current device's name and memory."""
    cupy = backend.get("cupy")
    runtime = cupy.cuda.runtime
    device = cupy.cuda.Device().id
    props = runtime.getDeviceProperties(device)
    name = props["name"]
    return {"cupy": cupy.__version__, "cuda_runtime": _cuda_version(runtime.runtimeGetVersion()),
            "cuda_driver": _cuda_version(runtime.driverGetVersion()), "device": device,
            "device_name": name.decode() if isinstance(name, bytes) else str(name),
            "device_memory_gib": round(props["totalGlobalMem"] / 2**30, 2)}


def record_config(out, cfg, resume, may_change=()):
    """Write ``out/config.json``. With ``resume``, first refuse (exit with an error) settings that
    differ from those of the study already in ``out``, except the keys in ``may_change``."""
    path = os.path.join(out, "config.json")
    if resume and os.path.exists(path):
        old, new = io.read_json(path), io.jsonable(cfg)
        changed = sorted(k for k in set(old) | set(new) if k not in may_change and old.get(k) != new.get(k))
        if changed:
            sys.exit(f"error: --resume with settings that differ from the study in {out} ({', '.join(changed)}); "
                     f"use the same options or another --out")
    io.write_json(path, cfg)


def _indexed_call(task):
    fn, index, item = task
    return index, fn(item)


def in_workers(fn, items, workers):
    """Yield ``(item, fn(item))`` as each finishes, in ``workers`` spawned processes with one BLAS
    thread each (two BLAS threads per process on a busy 2-core machine run several times slower
    than one), or in this process, in order, when ``workers`` is 1. Ctrl-C or a failed item
    terminates the other workers at once; whatever they checkpointed stays."""
    if workers == 1 or len(items) <= 1:
        for item in items:
            yield item, fn(item)
        return
    import multiprocessing

    saved = {k: os.environ.get(k) for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")}
    for k, v in saved.items():
        os.environ[k] = v or "1"  # spawned workers read these before they import NumPy
    pool = multiprocessing.get_context("spawn").Pool(workers)
    try:
        for index, result in pool.imap_unordered(_indexed_call, [(fn, i, item) for i, item in enumerate(items)]):
            yield items[index], result
    except BaseException:
        pool.terminate()
        raise
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
    pool.close()
    pool.join()


def report_folder(prog, argv=None):
    """The results folder named on a report's command line (``python -m PROG DIR``), checked."""
    p = argparse.ArgumentParser(prog=f"python -m {prog}",
                                description="Rebuild the figures and report.md of a results folder from its "
                                            "results.json (and results.npz, where there is one) alone.")
    p.add_argument("dir", help="the study's output folder (its --out)")
    args = p.parse_args(argv)
    if not os.path.isfile(os.path.join(args.dir, "results.json")):
        p.error(f"{args.dir} has no results.json: give the folder a study wrote (its --out)")
    return args.dir


def read_results(folder):
    """``(doc, arrays)``: ``folder/results.json`` and the arrays of ``folder/results.npz`` ({} without one)."""
    doc = io.read_json(os.path.join(folder, "results.json"))
    npz = os.path.join(folder, "results.npz")
    if not os.path.exists(npz):
        return doc, {}
    with backend.host.load(npz) as stored:
        return doc, {key: stored[key] for key in stored.files}


def write_report(folder, text):
    """``folder/report.md``: the generated ``text``, then ``folder/notes.md`` where there is one (a note
    written by hand on how the run was made, which a rebuilt report must keep)."""
    notes = os.path.join(folder, "notes.md")
    if os.path.exists(notes):
        with open(notes, encoding="utf-8") as f:
            text = text.rstrip("\n") + "\n\n" + f.read()
    io.write_text(os.path.join(folder, "report.md"), text)
