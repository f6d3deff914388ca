"""Where a study's runs go: worker processes on this machine (:func:`in_workers`), or Dask tasks on
a cluster (:func:`in_dask`); :func:`run_tasks` chooses. A run that raises, or whose worker dies,
comes back as a :class:`Failure`; the others carry on."""

import functools
import os
import platform
import sys
import time
import traceback
import uuid

from minibn import io

#: Where a study's runs go (:func:`run_tasks`).
EXECUTORS = ("local", "dask")


class Failure:
    """What a run that raised returns in place of its result: the one-line error, and the
    traceback for the log file (never the terminal)."""

    def __init__(self, err):
        self.error = f"{type(err).__name__}: {err}" if not isinstance(err, (OSError, ValueError)) else str(err)
        self.damaged = isinstance(err, io.DamagedFile)
        self.traceback = traceback.format_exc()


def _guarded(fn, item):
    try:
        return fn(item)
    except Exception as err:  # a run's failure is reported with the others', not raised mid-study
        return Failure(err)


def in_workers(fn, items, workers):
    """Yield ``(item, fn(item))`` as each finishes, in ``workers`` spawned processes with one BLAS
    thread each (two BLAS threads per process on a busy 2-core machine run several times slower
    than one), or in this process, in order, when ``workers`` is 1. An item that raises yields a
    :class:`Failure` and the others carry on. A worker that dies (killed by a signal, the
    out-of-memory killer's included) is seen at once: its item yields a :class:`Failure` saying
    so, and a new worker takes the items left. Leaving early (Ctrl-C, an error) terminates the
    workers at once; whatever they checkpointed stays. A worker whose study process has gone
    ends itself within a second, so no orphan goes on training beside a resumed study."""
    if workers == 1 or len(items) <= 1:
        for item in items:
            yield item, _guarded(fn, item)
        return
    import multiprocessing
    from multiprocessing.connection import wait

    context = multiprocessing.get_context("spawn")
    saved = {k: os.environ.get(k) for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")}
    for k, v in saved.items():
        os.environ[k] = v or "1"  # spawned workers read these before they import NumPy
    todo, busy, idle = list(enumerate(items))[::-1], {}, []   # busy: {connection: (process, index)}
    done = False
    try:
        while todo or busy:
            while todo and len(busy) < workers:
                conn, process = idle.pop() if idle else _start_worker(context)
                index, item = todo.pop()
                try:
                    conn.send((fn, item))
                except OSError:   # the worker died before it could take the run
                    conn.close()
                    yield item, Failure(WorkerDied(_death(process)))
                    continue
                busy[conn] = (process, index)
            ready = wait([*busy, *(process.sentinel for process, _ in busy.values())])
            for conn, (process, index) in list(busy.items()):
                if conn not in ready and process.sentinel not in ready:
                    continue
                try:
                    result = conn.recv()
                    idle.append((conn, process))
                except (EOFError, OSError):   # the worker died: its end of the pipe closed with it
                    result = Failure(WorkerDied(_death(process)))
                    conn.close()
                del busy[conn]
                yield items[index], result
        done = True
    finally:
        for conn, process in [*((c, p) for c, (p, _) in busy.items()), *idle]:
            conn.close()   # an idle worker's cue to end by itself
            if not done:
                process.terminate()
            process.join(timeout=10)
            if process.is_alive():
                process.terminate()
                process.join()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)


class WorkerDied(RuntimeError):
    """The process training a run died before the run ended."""


def _death(process):
    process.join()
    code = process.exitcode
    how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit status {code}"
    hint = " (SIGKILL: the out-of-memory killer, or kill -9?)" if code == -9 else ""
    return f"its worker process (pid {process.pid}) died while training it: {how}{hint}"


def _start_worker(context):
    parent, child = context.Pipe()
    process = context.Process(target=_worker, args=(child, os.getpid()), daemon=True)
    process.start()
    child.close()
    return parent, process


def _worker(conn, study_pid):
    """A worker process: run each ``(fn, item)`` it is sent and send back the result, until the study
    closes the pipe. Ctrl-C is the study's to handle (it stops the workers); a worker whose study
    process is gone ends itself."""
    import signal
    import threading

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # stopped by its study: unwind (the run's checkpoints are written atomically) and exit cleanly
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))

    def watch():
        while os.getppid() == study_pid:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()
    while True:
        try:
            fn, item = conn.recv()
        except EOFError:
            return
        conn.send(_guarded(fn, item))


def check_executor(executor, scheduler, backend_name="numpy"):
    """Raise ValueError naming the option, before any work, when the runs cannot go where asked:
    --scheduler without --executor dask, Dask not installed, dask-cuda missing for a local GPU
    cluster, or no scheduler answering at ``scheduler`` within Dask's connect timeout
    (``distributed.comm.timeouts.connect``, 30 s unless configured)."""
    if executor not in EXECUTORS:
        raise ValueError(f"--executor must be one of {', '.join(EXECUTORS)}, got {executor!r}")
    if executor == "local":
        if scheduler is not None:
            raise ValueError(f"--scheduler {scheduler} needs --executor dask")
        return
    distributed = _import_distributed()
    if scheduler is None:
        if backend_name == "cupy":
            _import_local_cuda_cluster()
        return
    try:
        client = distributed.Client(scheduler)
    except (OSError, ValueError, TypeError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ValueError(f"--scheduler {scheduler}: no Dask scheduler answered ({reason})") from None
    client.close()


def _import_distributed():
    try:
        import distributed
    except ImportError as err:
        raise ValueError(f"--executor dask needs Dask's distributed scheduler, which is not installed ({err}): "
                         f"pip install 'minibn[dask]'") from None
    return distributed


def _import_local_cuda_cluster():
    try:
        from dask_cuda import LocalCUDACluster
    except ImportError as err:
        raise ValueError(f"--executor dask on --backend cupy starts one worker per GPU with dask-cuda, which is not "
                         f"installed ({err}): pip install dask-cuda, or give --scheduler of a cluster you "
                         f"started") from None
    return LocalCUDACluster


def describe_executor(executor, jobs, scheduler):
    """Where the runs go, for a study's opening line."""
    if executor == "local":
        return f"{jobs} at a time"
    if scheduler:
        return f"as Dask tasks on the scheduler at {scheduler}"
    return f"as Dask tasks on a local cluster of {jobs or 'one worker per core (per GPU on cupy)'} worker(s)"


def run_tasks(fn, items, executor="local", workers=None, scheduler=None, backend_name="numpy"):
    """Yield ``(item, fn(item))`` as each run finishes, in :func:`in_workers` (``executor="local"``)
    or as Dask tasks (:func:`in_dask`). An item is one run: a dict with at least ``name``, ``out``
    and ``resume``, whose folder is ``out/runs/name``."""
    if executor == "dask":
        yield from in_dask(fn, items, workers, scheduler, backend_name)
    else:
        yield from in_workers(fn, items, workers)


def in_dask(fn, items, workers=None, scheduler=None, backend_name="numpy"):
    """Yield ``(item, fn(item))`` as each finishes, each item one Dask task: on the cluster of the
    scheduler at ``scheduler``, or on a local one started here and closed at the end
    (:func:`local_cluster`). Every worker must see ``item["out"]`` (made absolute: a remote worker
    starts in another folder). A task whose worker dies is started again by Dask and resumes from
    the checkpoint its first attempt wrote (:func:`_restartable`); a run that fails, or that Dask
    gives up on (``distributed.scheduler.allowed-failures`` workers died running it), yields a
    :class:`Failure`. Ctrl-C cancels the tasks; a task already running on a remote worker runs
    on to its end (Dask does not interrupt a running task) and writes its result as usual."""
    distributed = _import_distributed()
    cluster = None if scheduler else local_cluster(workers, backend_name)
    client = distributed.Client(scheduler or cluster)
    submission = uuid.uuid4().hex
    index = {}
    try:
        for i, item in enumerate(items):
            task = {**item, "out": os.path.abspath(item["out"])}
            future = client.submit(_guarded, functools.partial(_restartable, fn, submission), task,
                                   key=f"minibn-{item['name']}-{submission}")
            index[future] = i
        for future in distributed.as_completed(list(index)):
            try:
                result = future.result()
            except Exception as err:  # the task never raises (_guarded): Dask gave it up (KilledWorker)
                result = Failure(err)
            yield items[index[future]], result
    except BaseException:
        client.cancel(list(index))
        raise
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def local_cluster(workers=None, backend_name="numpy"):
    """A Dask cluster on this machine, on the loopback interface, without a dashboard: ``workers``
    worker processes (None: one per core) of one thread each, BLAS threads as :func:`in_workers`
    sets them; on CuPy one worker per GPU (``workers``: the first that many), each pinned to its
    device by dask-cuda."""
    if backend_name == "cupy":
        return _import_local_cuda_cluster()(n_workers=workers, threads_per_worker=1, host="127.0.0.1",
                                            dashboard_address=None)
    import distributed

    blas = {k: os.environ.get(k) or "1" for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    return distributed.LocalCluster(n_workers=workers or os.cpu_count() or 1, threads_per_worker=1, processes=True,
                                    host="127.0.0.1", dashboard_address=None, env=blas)


def _restartable(fn, submission, item):
    """``fn(item)`` in a task Dask may start twice: when the worker running it dies, Dask starts it
    again on another. The run's folder records which submission last started it (attempt.json:
    submission, attempt, host, pid); a task finding its own submission there resumes from the
    checkpoint its earlier attempt wrote, where a study started anew without --resume would not
    trust a checkpoint it finds."""
    folder = os.path.join(item["out"], "runs", item["name"])
    marker = os.path.join(folder, "attempt.json")
    try:
        last = io.read_json(marker)
    except (OSError, io.DamagedFile):
        last = {}
    again = last.get("submission") == submission
    os.makedirs(folder, exist_ok=True)
    io.write_json(marker, {"submission": submission, "attempt": last["attempt"] + 1 if again else 1,
                           "host": platform.node(), "pid": os.getpid()})
    return fn({**item, "resume": True} if again else item)
