"""What every study's command line shares: option checks and the record of the machine."""

import os
import platform
import sys

from minibn import backend, io


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


def environment():
    """Versions and machine, recorded in every study's config."""
    import numpy
    import scipy

    import minibn

    return {"python": platform.python_version(), "numpy": numpy.__version__, "scipy": scipy.__version__,
            "minibn": minibn.__version__, "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(), "cpu_count": os.cpu_count()}


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
