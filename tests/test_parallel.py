import multiprocessing
import sys
import threading

import numpy as np
import pytest

from minibn import backend, parallel


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch):
    monkeypatch.setattr(parallel, "MIN_BYTES", 64)
    monkeypatch.setattr(parallel, "BLOCK_BYTES", 96)
    yield
    parallel.set_num_threads(None)


def record(a, **kw):
    calls, lock = [], threading.Lock()

    def kernel(rows):
        with lock:
            calls.append((rows, threading.get_ident()))

    parallel.over_rows(kernel, a, **kw)
    return calls


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("n", [3, 7, 31])
def test_blocks_cover_every_row_once(threads, n):
    parallel.set_num_threads(threads)
    calls = record(np.zeros((n, 5)))        # 40 bytes a row: blocks of 1 to 2 rows
    covered = sorted(i for rows, _ in calls for i in range(n)[rows])
    assert covered == list(range(n))
    assert len(calls) > 1


@pytest.mark.parametrize("shape", [(1, 100), (100, 0), (3,), ()])
def test_small_or_degenerate_arrays_take_one_call_on_the_calling_thread(shape, monkeypatch):
    parallel.set_num_threads(3)
    a = np.zeros(shape)
    if a.size:
        monkeypatch.setattr(parallel, "MIN_BYTES", a.nbytes + 1)
    calls = record(a)
    assert calls == [(slice(0, shape[0]) if shape else ..., threading.get_ident())]


def test_the_threaded_result_is_the_plain_one(monkeypatch):
    x = np.random.default_rng(0).normal(size=(37, 3, 2))
    y = np.empty_like(x)
    parallel.set_num_threads(3)
    parallel.over_rows(lambda rows: np.multiply(x[rows], 3.0, out=y[rows]), x)
    np.testing.assert_array_equal(y, x * 3.0)


def test_cupy_arrays_take_one_plain_call(xp):
    parallel.set_num_threads(3)
    a = backend.to_device(np.zeros((50, 4)), xp)
    calls = record(a)
    assert len(calls) == (1 if backend.name_of(xp) == "cupy" else len(parallel.blocks(50, a.nbytes, 3)))


def test_an_exception_in_a_kernel_is_raised_and_the_pool_still_works():
    parallel.set_num_threads(2)
    a = np.zeros((40, 2))

    def kernel(rows):
        if rows.start >= 20:
            raise ValueError("block failed")

    with pytest.raises(ValueError, match="block failed"):
        parallel.over_rows(kernel, a)
    assert len(record(a)) == len(parallel.blocks(40, a.nbytes, 2))


def test_a_nested_call_runs_on_its_own_thread_without_deadlock():
    parallel.set_num_threads(2)
    outer, inner = np.zeros((20, 2)), np.zeros((20, 2))
    nested = []

    def kernel(rows):
        nested.append({ident for _, ident in record(inner)} == {threading.get_ident()})

    parallel.over_rows(kernel, outer)
    assert nested and all(nested)


def test_thread_count_from_the_environment_and_set_num_threads(monkeypatch):
    monkeypatch.setenv(parallel.ENV_VAR, "3")
    parallel.set_num_threads(None)
    assert parallel.num_threads() == 3
    with parallel.threads(1):
        assert parallel.num_threads() == 1
    assert parallel.num_threads() == 3
    for bad in ("0", "two", "-1"):
        monkeypatch.setenv(parallel.ENV_VAR, bad)
        parallel.set_num_threads(None)
        with pytest.raises(ValueError, match="MINIBN_NUM_THREADS must be a positive integer"):
            parallel.num_threads()
    for bad in (0, 1.5, True, "2"):
        with pytest.raises(ValueError, match="set_num_threads: n must be a positive integer"):
            parallel.set_num_threads(bad)


def test_the_pool_is_off_without_the_variable(monkeypatch):
    for unset in (None, "", " "):
        if unset is None:
            monkeypatch.delenv(parallel.ENV_VAR, raising=False)
        else:
            monkeypatch.setenv(parallel.ENV_VAR, unset)
        parallel.set_num_threads(None)
        assert parallel.num_threads() == 1


def _child(queue):
    x = np.arange(400.0).reshape(100, 4)
    y = np.empty_like(x)
    parallel.over_rows(lambda rows: np.multiply(x[rows], 2.0, out=y[rows]), x)
    queue.put(bool((y == 2 * x).all()))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork is Linux's default here")
def test_a_forked_child_starts_its_own_pool():
    parallel.set_num_threads(2)
    record(np.zeros((20, 2)))              # the parent's pool exists
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_child, args=(queue,))
    child.start()
    child.join(timeout=20)
    assert child.exitcode == 0 and queue.get(timeout=1)


def test_a_pool_that_refuses_work_leaves_the_calling_thread_to_do_it(monkeypatch):
    """As at interpreter shutdown, when submit raises RuntimeError."""
    class Refusing:
        def submit(self, *args):
            raise RuntimeError("cannot schedule new futures after interpreter shutdown")

    monkeypatch.setattr(parallel, "_executor", lambda workers: Refusing())
    parallel.set_num_threads(3)
    calls = record(np.zeros((30, 2)))
    assert {ident for _, ident in calls} == {threading.get_ident()}
    assert sorted(i for rows, _ in calls for i in range(30)[rows]) == list(range(30))
