"""The speed machinery, in one place: elementwise kernels over blocks of rows, on a thread pool.

On the CPU, BLAS runs the GEMMs on every core while NumPy's elementwise passes (BatchNorm,
ReLU, pooling, the patch copies of a convolution) run on one. NumPy releases the GIL inside
its loops, so the same passes written as a *kernel* over a slice of the leading axis,

    def kernel(rows):
        xp.multiply(dy[rows], mask[rows], out=dx[rows])

run on all cores when :func:`over_rows` hands the blocks of rows to a small persistent pool of
threads (the calling thread takes blocks too). A kernel computes each output entry from the
same entries of its inputs whichever block holds it, so the result is bit for bit that of
one call ``kernel(slice(0, n))``, whatever the block size and thread count; no kernel here
reduces across rows (column sums stay whole-array GEMVs, whose summation order is BLAS's).

One call ``kernel(slice(0, n))`` on the calling thread, exactly the plain path, is taken when

- the array is small (under :data:`MIN_BYTES`): threads cost more than they save, and the
  DLN study's (1000, 10) arrays keep the code path their results were computed with;
- the array lives on the GPU (CuPy): a GPU kernel is parallel already.

With one thread (the count is 1, or the call comes from inside a pool thread: no nested
pools) the blocks run in turn on the calling thread, which still pays: a kernel's passes
over one block find it in cache.

The thread count (:func:`num_threads`) is ``MINIBN_NUM_THREADS`` when set, else 1: the pool
is opt-in. Measured on a 2-core AMD EPYC VM (conv3x3 64->64 + BN + ReLU, batch 128, fwd+bwd,
wall, median of 5): with OpenBLAS on 2 threads the pool at 2 threads *lost* (373-384 ms
without it, 426-443 ms with it), because OpenBLAS's worker spins for a while after each
GEMM and takes the core the pool's thread needs; with OpenBLAS on 1 thread the pool at 2
threads won (669-694 -> 585-590 ms; BatchNorm 30 -> 20 ms forward, 25 -> 15 ms backward), but
that stays slower than OpenBLAS on both cores without it. The one-thread figures are the
blocks in turn (above). :func:`set_num_threads` changes the count at run time.

>>> xp = backend.host
>>> x, y = xp.arange(6.0).reshape(3, 2), xp.empty((3, 2))
>>> over_rows(lambda rows: xp.multiply(x[rows], 2.0, out=y[rows]), x)
>>> y.tolist()
[[0.0, 2.0], [4.0, 6.0], [8.0, 10.0]]
"""

import contextlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor

from minibn import backend

ENV_VAR = "MINIBN_NUM_THREADS"

#: Arrays smaller than this take one call on the calling thread. A pool hand-off costs tens
#: of microseconds; a pass over 1 MB costs a few hundred.
MIN_BYTES = 2**20

#: The most bytes in one block of rows (of the array that :func:`over_rows` splits): small
#: enough that a kernel's few passes over its block find it in cache (measured: BatchNorm's
#: backward pass at 128x32x32x64 float32, one thread, 13.1 ms CPU as one call, 9.7 ms in
#: blocks of 1 MB, 11.8 ms in blocks of 128 KB, where Python's per-block overhead shows).
BLOCK_BYTES = 2**20

_local = threading.local()      # .inside: this thread is running a pool task
_lock = threading.Lock()
_threads = None                 # decided at first use, or by set_num_threads
_pool = None                    # (executor, its number of workers)


def default_threads():
    """``MINIBN_NUM_THREADS`` (a positive integer) when set, else 1 (module docstring: why)."""
    value = os.environ.get(ENV_VAR, "").strip()
    if not value:
        return 1
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"minibn.parallel: {ENV_VAR} must be a positive integer, got {value!r}")
    return int(value)


def num_threads():
    """The number of threads :func:`over_rows` uses (the calling thread included)."""
    global _threads
    if _threads is None:
        _threads = default_threads()
    return _threads


def set_num_threads(n):
    """Use ``n`` threads from now on (1: no pool); ``None`` goes back to the default (module docstring)."""
    global _threads
    if n is not None and (isinstance(n, bool) or not hasattr(n, "__index__") or n < 1):
        raise ValueError(f"minibn.parallel.set_num_threads: n must be a positive integer or None, got {n!r}")
    _threads = None if n is None else int(n)


@contextlib.contextmanager
def threads(n):
    """``with threads(n):`` runs its body with ``n`` threads, then restores the previous count."""
    global _threads
    saved = _threads
    set_num_threads(n)
    try:
        yield
    finally:
        _threads = saved


def _executor(workers):
    global _pool
    with _lock:
        if _pool is None or _pool[1] != workers:
            if _pool is not None:
                _pool[0].shutdown(wait=False)
            _pool = (ThreadPoolExecutor(max_workers=workers, thread_name_prefix="minibn"), workers)
        return _pool[0]


def _forget_pool():
    # a forked child has none of its parent's threads: it starts its own pool when it needs one
    global _pool, _lock
    _pool, _lock = None, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)


def blocks(n, nbytes, workers=1):
    """The slices of ``range(n)`` that :func:`over_rows` hands out for an array of ``nbytes``:
    at most :data:`BLOCK_BYTES` each, at least one row, and with several workers at least four
    per worker where there are enough rows (so that a thread slowed by other work leaves
    little for the end)."""
    count = max(-(-nbytes // BLOCK_BYTES), 4 * workers if workers > 1 else 1)
    per = max(1, -(-n // count))
    return [slice(start, min(n, start + per)) for start in range(0, n, per)]


def over_rows(kernel, a):
    """Call ``kernel(rows)`` for slices ``rows`` covering the leading axis of ``a``, on the pool
    (a 0-d ``a`` gets one call ``kernel(...)``).

    ``kernel`` must write each output row from the same rows of its inputs only (elementwise
    or per-row work), so that blocks are independent; its results are discarded. Small
    arrays and CuPy arrays get one call ``kernel(slice(0, n))``, and one thread the blocks in
    turn, on the calling thread (module docstring). An exception in a kernel stops the
    handing out of blocks and is raised here once every thread is done with its block.
    """
    if a.ndim == 0:
        kernel(...)
        return
    n = a.shape[0]
    if n < 2 or a.nbytes < MIN_BYTES or backend.name_of(backend.array_module(a)) == "cupy":
        kernel(slice(0, n))
        return
    workers = 1 if getattr(_local, "inside", False) else min(num_threads(), n)
    if workers == 1:
        for rows in blocks(n, a.nbytes):
            kernel(rows)
        return
    todo = iter(blocks(n, a.nbytes, workers))
    take = threading.Lock()
    failed = []

    def drain():
        was_inside, _local.inside = getattr(_local, "inside", False), True
        try:
            while not failed:
                with take:
                    rows = next(todo, None)
                if rows is None:
                    return
                kernel(rows)
        except BaseException as err:       # noqa: B036  (re-raised by the caller below)
            failed.append(err)
        finally:
            _local.inside = was_inside

    helpers = []
    try:
        executor = _executor(workers - 1)
        for _ in range(workers - 1):
            helpers.append(executor.submit(drain))
    except RuntimeError:        # the interpreter is shutting down: no new threads, the caller drains alone
        pass
    drain()
    for helper in helpers:
        helper.result()
    if failed:
        raise failed[0]
