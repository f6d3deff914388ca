"""What every study shares: option checks, the output folder and resume, where the runs go
(a local worker pool or Dask: :func:`run_tasks`), the record of the machine, and reading a
results folder back for its report."""

import argparse
import functools
import os
import platform
import sys
import traceback
import uuid

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
                                 "[numpy: min(2, cores); cupy: 1; --executor dask: one per core, or per GPU on cupy]")
        parser.add_argument("--executor", default="local", choices=EXECUTORS,
                            help="local: a process pool on this machine; dask: one Dask task per run, on the cluster "
                                 "of --scheduler or on a local one of --jobs workers (docs/distributed.md) [local]")
        parser.add_argument("--scheduler", default=None, metavar="ADDRESS",
                            help="with --executor dask: a running Dask scheduler (tcp://HOST:8786), whose workers "
                                 "share --out; its workers decide how many runs train at once [a local cluster]")


#: Where a study's runs go (:func:`run_tasks`).
EXECUTORS = ("local", "dask")


def default_jobs(backend_name="numpy"):
    """Runs trained at once: min(2, cores) on the CPU; one on a GPU, where every worker process
    would hold its own CUDA context and memory pool on the one device while a VGG step
    already keeps it busy (the DLN's tiny steps are launch-bound: several processes could
    overlap them, unmeasured so far; ``python -m minibn.gpucheck`` reports its steps/s)."""
    return 1 if backend_name == "cupy" else min(2, os.cpu_count() or 1)


def check_jobs(jobs, backend_name="numpy", executor="local"):
    """``jobs`` checked (ValueError naming --jobs), or the backend's default when it is None (None
    with the Dask executor: its local cluster sizes itself to the machine)."""
    if jobs is None:
        return None if executor == "dask" else default_jobs(backend_name)
    if int(jobs) != jobs or jobs < 1:
        raise ValueError(f"--jobs must be >= 1, got {jobs}")
    return int(jobs)


def check_seed(seed):
    """Raise ValueError naming --seed unless it is an integer >= 0 (what NumPy's generators take)."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"--seed must be an integer >= 0, got {seed!r}")


def unique(values):
    """``values`` without repeats, in order (the same variant or LR twice would train one run twice
    into one folder)."""
    return None if values is None else list(dict.fromkeys(values))


def check_variants(variants, jobs, executor="local"):
    """``variants`` without repeats (None stays None), or a ValueError: a name not registered, or one
    registered where the worker processes cannot import it (an interactive session) when runs go to
    workers (``jobs`` > 1 or Dask)."""
    from minibn.nn import normalization

    variants = unique(variants)
    if not variants:
        return variants
    unknown = [v for v in variants if v not in normalization.REGISTRY]
    if unknown:
        raise ValueError(f"unknown variant(s) {unknown}; choose from {list(normalization.REGISTRY)}")
    in_workers = executor == "dask" or jobs > 1
    stranded = [v for v in variants if in_workers and not _workers_can_import(normalization.get(v).module)]
    if stranded:
        raise ValueError(f"variant(s) {stranded} were registered where worker processes cannot import them "
                         f"(an interactive session); pass jobs=1, or register them in an importable module")
    return variants


def _workers_can_import(module):
    """Whether a spawned worker can import ``module``: one imported here is on the worker's sys.path
    too, and a script's ``__main__`` is run again by every spawned worker; an interactive one is not."""
    if module == "__main__":
        return hasattr(sys.modules["__main__"], "__file__")
    return module in sys.modules


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
        old, new = read_config(path), io.jsonable(cfg)
        changed = sorted(k for k in set(old) | set(new) if k not in may_change and old.get(k) != new.get(k))
        if changed:
            sys.exit(f"error: --resume with settings that differ from the study in {out} ({', '.join(changed)}); "
                     f"use the same options or another --out")
    io.write_json(path, cfg)


class Failure:
    """What a run that raised returns in place of its result: the one-line error, and the
    traceback for the log file (never the terminal)."""

    def __init__(self, err):
        self.error = f"{type(err).__name__}: {err}" if not isinstance(err, (OSError, ValueError)) else str(err)
        self.damaged = isinstance(err, io.DamagedFile)
        self.traceback = traceback.format_exc()


class StudyFailed(RuntimeError):
    """Some runs failed; the message says which, why, where the tracebacks are and how to continue."""


def _guarded(fn, item):
    try:
        return fn(item)
    except Exception as err:  # a run's failure is reported with the others', not raised mid-study
        return Failure(err)


def _indexed_call(task):
    fn, index, item = task
    return index, _guarded(fn, item)


def in_workers(fn, items, workers):
    """Yield ``(item, fn(item))`` as each finishes, in ``workers`` spawned processes with one BLAS
    thread each (two BLAS threads per process on a busy 2-core machine run several times slower
    than one), or in this process, in order, when ``workers`` is 1. An item that raises yields a
    :class:`Failure` and the others carry on; Ctrl-C terminates the workers at once, whatever
    they checkpointed stays."""
    if workers == 1 or len(items) <= 1:
        for item in items:
            yield item, _guarded(fn, item)
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


def resume_command(command):
    """What continues a study started by ``command``: the command line plus --resume (a Python
    call: the same call with resume=True)."""
    if not command.startswith("python -m "):
        return "the same call with resume=True"
    return command if " --resume" in f"{command} " else f"{command} --resume"


def failures_of(results):
    """``{name: Failure}`` of the runs in ``results`` (``{name: result}``) that failed."""
    return {name: r for name, r in results.items() if isinstance(r, Failure)}


def main_guard(run, out, command):
    """Call ``run()`` as a study's command line does: its exit status, with failures reported in
    a few lines (tracebacks in the folder's errors.log) instead of a traceback, Ctrl-C included."""
    try:
        run()
    except KeyboardInterrupt:
        print(f"\ninterrupted: finished runs and checkpoints are kept in {out}; continue with: "
              f"{resume_command(command)}", file=sys.stderr)
        return 130
    except StudyFailed as err:
        print(err, file=sys.stderr)
        return 1
    except (OSError, io.DamagedFile) as err:  # writing the results, figures or report in this process
        print(f"error: {err}\nfinished runs and checkpoints are kept; fix the cause and continue with: "
              f"{resume_command(command)}", file=sys.stderr)
        return 1
    return 0


def raise_failures(out, failures, resume):
    """When some runs failed (``{run name: Failure}``), write their tracebacks to ``out/errors.log``
    and raise :class:`StudyFailed`: one line per run (its error, and for a damaged file which
    folder to delete so the run retrains), then how to continue (``resume``, a command)."""
    if not failures:
        return
    log = os.path.join(out, "errors.log")
    text = "".join(f"=== run {name}\n{f.traceback}\n" for name, f in failures.items())
    try:
        io.write_text(log, text)
        where = f"tracebacks in {log}"
    except OSError as err:  # the folder that failed may refuse the log too
        where = f"tracebacks could not be written to {log}: {err}"
    lines = [f"error: {len(failures)} run(s) failed ({where}):"]
    for name, f in failures.items():
        folder = os.path.join(out, "runs", name)
        advice = f"; delete {folder} to retrain this run, or start a new --out" if f.damaged else ""
        lines.append(f"  {name}: {f.error}{advice}")
    lines.append(f"finished runs and checkpoints are kept; fix the cause and continue with: {resume}")
    raise StudyFailed("\n".join(lines))


def read_config(path):
    """``out/config.json`` for --resume; exits with an error naming it when it is damaged."""
    try:
        return io.read_json(path)
    except io.DamagedFile as err:
        sys.exit(f"error: --resume: {err}; start a new --out (or delete the folder to start over)")


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
    """``(doc, arrays)``: ``folder/results.json`` and the arrays of ``folder/results.npz`` ({} without one);
    :class:`minibn.io.DamagedFile` naming the file that cannot be read."""
    doc = io.read_json(os.path.join(folder, "results.json"))
    if not isinstance(doc, dict) or not isinstance(doc.get("config"), dict):
        raise io.DamagedFile(f"{os.path.join(folder, 'results.json')} is damaged (no 'config' record)")
    npz = os.path.join(folder, "results.npz")
    if not os.path.exists(npz):
        return doc, {}
    try:
        with backend.host.load(npz, allow_pickle=False) as stored:
            return doc, {key: stored[key] for key in stored.files}
    except Exception as err:  # zip, zlib, pickle-refusal errors of a cut-short or overwritten file
        raise io.DamagedFile(f"{npz} is damaged ({type(err).__name__}: {err})") from None


def report_input(prog, argv=None):
    """``(folder, doc, arrays)`` of a report's command line (:func:`report_folder`, :func:`read_results`);
    exits with a one-line error naming a damaged file."""
    folder = report_folder(prog, argv)
    try:
        return (folder, *read_results(folder))
    except io.DamagedFile as err:
        sys.exit(f"error: {err}; run the study's command again with --resume to rewrite it from the runs "
                 f"it kept, or give another folder")


def write_report(folder, text):
    """``folder/report.md``: the generated ``text``, then ``folder/notes.md`` where there is one (a note
    written by hand on how the run was made, which a rebuilt report must keep)."""
    notes = os.path.join(folder, "notes.md")
    if os.path.exists(notes):
        with open(notes, encoding="utf-8") as f:
            text = text.rstrip("\n") + "\n\n" + f.read()
    io.write_text(os.path.join(folder, "report.md"), text)
