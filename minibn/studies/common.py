"""The one study skeleton: options and their checks, the entry points, the runs trained and the
results written, the record of the machine. The output folder (one study, one writer, runs that
are what their records say) is :mod:`minibn.studies.folder`'s; where the runs go (a local worker
pool or Dask), :mod:`minibn.studies.workers`'.

A study module declares its options once (``OPTIONS``, a tuple of :class:`Option`: the names of
``run``'s keyword arguments, which the command line spells ``--like-this``), checks them
(``check(options) -> options``, a ``ValueError`` naming the option) and carries them out
(``execute(options, command) -> results``). From these the skeleton makes the study's two
entry points, the same for every study::

    run, main = common.entry_points(__name__, OPTIONS)

``run(**options)`` is the primary API; ``main(argv)`` is ``python -m minibn.studies.NAME``, which
parses the command line into the same options.

A study of independent runs (the DLN, VGG and sharpness studies) trains them with
:func:`train_runs` and writes its results with :func:`write_results`; its report module is
called on the results document, never the other way round.
"""

import argparse
import functools
import importlib
import inspect
import numbers
import os
import platform
import shlex
import signal
import sys
import time
from typing import Any, NamedTuple, Optional

from minibn import backend, io, results
from minibn.studies import folder
from minibn.studies.workers import EXECUTORS, Failure, check_executor, describe_executor, run_tasks

_AS_DEFAULT = object()


class Option(NamedTuple):
    """One option of a study: ``run``'s keyword ``name`` (default ``default``) and the command
    line's ``--name`` (underscores as dashes; a boolean whose default is true is ``--no-name``).
    ``type``, ``nargs``, ``choices``, ``metavar``: argparse's; ``cli_default``: the command line's
    default where it differs from ``run``'s."""

    name: str
    default: Any
    help: str
    type: Any = None
    nargs: Any = None
    choices: Any = None
    metavar: Optional[str] = None
    cli_default: Any = _AS_DEFAULT


def shared_options(default_out, resume=True, runs=True):
    """The options every study has: --backend, --out, --report, and (unless told not to) --resume,
    and for a study of independent runs --jobs, --executor, --scheduler, --seed and --seeds."""
    out = [Option("backend", "numpy", "array backend: numpy (CPU) or cupy (GPU)"),
           Option("out", None, f"output folder [{default_out}]", metavar="DIR"),
           Option("report", True, "write the figures, claims.json and report.md after results.json (--no-report: "
                                  "the results alone; the study's report command builds the rest later)")]
    if resume:
        out.append(Option("resume", False, "continue the study in --out: finished runs are kept, interrupted ones "
                                           "resume from their last checkpoint"))
    if runs:
        out += [Option("seed", 0, "first seed", type=int),
                Option("seeds", 1, "repeat every run with this many seeds (seed, seed+1, ...)", type=int),
                Option("jobs", 1, "runs trained at once in worker processes, one BLAS thread each [run(): 1; the "
                                  "command line: min(2, cores) on numpy, 1 on cupy; --executor dask: one per core, "
                                  "or per GPU on cupy]", type=int, cli_default=None),
                Option("executor", "local", "local: a process pool on this machine; dask: one Dask task per run, on "
                                            "the cluster of --scheduler or on a local one of --jobs workers "
                                            "(docs/distributed.md)", choices=EXECUTORS),
                Option("scheduler", None, "with --executor dask: a running Dask scheduler (tcp://HOST:8786), whose "
                                          "workers share --out; its workers decide how many runs train at once "
                                          "[a local cluster]", metavar="ADDRESS")]
    return tuple(out)


def parser(study):
    """The command line of the study module ``study``, from its ``OPTIONS``."""
    p = argparse.ArgumentParser(prog=f"python -m {study.__name__}", description=study.__doc__.split("\n\n")[0])
    for opt in study.OPTIONS:
        flag = "--" + opt.name.replace("_", "-")
        default = opt.default if opt.cli_default is _AS_DEFAULT else opt.cli_default
        shown = "" if opt.default is None or "[" in opt.help else f" [{opt.default}]"
        if isinstance(opt.default, bool):
            p.add_argument(f"--no-{flag[2:]}" if opt.default else flag, dest=opt.name, default=opt.default,
                           action="store_false" if opt.default else "store_true", help=opt.help)
            continue
        p.add_argument(flag, dest=opt.name, default=default, type=opt.type, nargs=opt.nargs, choices=opt.choices,
                       metavar=opt.metavar, help=opt.help + shown)
    return p


def options(study, given):
    """``given`` (``run``'s keyword arguments) completed with the defaults of ``study.OPTIONS``; a
    name that is not an option is a TypeError, as for any function."""
    names = [opt.name for opt in study.OPTIONS]
    unknown = sorted(set(given) - set(names))
    if unknown:
        raise TypeError(f"{study.__name__}.run() got unexpected option(s) {unknown}; its options are {names}")
    return {opt.name: given.get(opt.name, opt.default) for opt in study.OPTIONS}


def signature(study_options):
    """The signature ``run(**options)`` shows (``help``, ``inspect``): every option as a keyword."""
    return inspect.Signature([inspect.Parameter(opt.name, inspect.Parameter.KEYWORD_ONLY, default=opt.default)
                              for opt in study_options])


def checked(study, opts):
    """``opts`` with every option checked before any work starts (a ValueError naming the option):
    --jobs, then the study's own checks, then the backend, seeds, executor and, last (it creates the
    folder), --out, which defaults to ``study.DEFAULT_OUT`` filled with the options."""
    if "jobs" in opts:
        opts["jobs"] = check_jobs(opts["jobs"], opts["backend"], opts["executor"])
    opts = study.check(opts)
    check_backend(opts["backend"])
    if "seed" in opts:
        opts["seed"] = check_seed(opts["seed"])
    if "seeds" in opts:
        opts["seeds"] = check_positive("seeds", opts["seeds"], allow_none=False)
    if "executor" in opts:
        check_executor(opts["executor"], opts["scheduler"], opts["backend"])
    opts["out"] = opts["out"] or study.DEFAULT_OUT.format(**opts)
    check_writable_dir(opts["out"])
    return opts


def _study(module):
    """The study module named ``module`` (its own name when it runs as ``python -m``: a task pickled
    for a worker process then names a module the worker can import)."""
    if module == "__main__":
        module = sys.modules["__main__"].__spec__.name
    return importlib.import_module(module)


def run(module, given):
    """``module.run(**given)``: the options completed and checked (ValueError before any work), then
    the study carried out in its locked folder; returns what results.json holds."""
    study = _study(module)
    module = study.__name__
    opts = checked(study, options(study, given))
    call = ", ".join(f"{k}={v!r}" for k, v in given.items())
    return _execute(study, opts, f"{module}.run({call})")


def _execute(study, opts, command):
    """``study.execute(opts, command)`` holding ``out``'s lock (shared by the processes of a study split
    with ``only``, which lock their runs instead)."""
    with folder.locked(os.path.join(opts["out"], ".lock"), shared=bool(opts.get("only"))):
        return study.execute(opts, command)


def main(module, argv=None):
    """``python -m MODULE ARGV``: the options parsed and checked (a usage error, exit status 2), the
    study carried out under :func:`main_guard` (SIGTERM as Ctrl-C); the exit status."""
    study = _study(module)
    module = study.__name__
    argv = sys.argv[1:] if argv is None else list(argv)
    p = parser(study)
    try:
        opts = checked(study, vars(p.parse_args(argv)))
    except ValueError as err:
        p.error(str(err))
    command = shlex.join(["python", "-m", module, *argv])
    return main_guard(lambda: _execute(study, opts, command), opts["out"], command)


def entry_points(module, study_options):
    """``(run, main)`` of the study module ``module`` whose options are ``study_options``."""
    def run_study(**options):
        return run(module, options)

    def main_study(argv=None):
        return main(module, argv)

    run_study.__signature__ = signature(study_options)
    run_study.__doc__ = (f"Run the study {module} (the options of its OPTIONS as keywords) and return what "
                         f"results.json holds. Writes into ``out`` what the command line writes. A bad option "
                         f"raises ValueError before any work starts; one the study does not have, TypeError.")
    main_study.__doc__ = f"``python -m {module} ARGV``: the exit status."
    for fn, name in ((run_study, "run"), (main_study, "main")):
        fn.__module__, fn.__name__, fn.__qualname__ = module, name, name
    return run_study, main_study


def _integer(value):
    """``value`` as a Python int when it is an integer (NumPy's included, a bool not), else None."""
    return int(value) if isinstance(value, numbers.Integral) and not isinstance(value, bool) else None


def check_seed(seed):
    """``seed`` as an int, or ValueError naming --seed unless it is an integer >= 0 (what NumPy's
    generators take; NumPy integers too)."""
    value = _integer(seed)
    if value is None or value < 0:
        raise ValueError(f"--seed must be an integer >= 0, got {seed!r}")
    return value


def check_positive(name, value, allow_none=True):
    """``value`` as an int, or ValueError naming --NAME unless it is an integer >= 1 (or None, where
    allowed)."""
    if value is None and allow_none:
        return None
    number = _integer(value)
    if number is None or number < 1:
        raise ValueError(f"--{name.replace('_', '-')} must be a positive integer, got {value!r}")
    return number


def check_count(name, value):
    """``value`` as an int, or ValueError naming --NAME unless it is an integer >= 0."""
    number = _integer(value)
    if number is None or number < 0:
        raise ValueError(f"--{name.replace('_', '-')} must be an integer >= 0, got {value!r}")
    return number


def check_lr(name, value):
    """A learning rate as the one float it stays from here to the optimizer, or a ValueError naming --NAME."""
    try:
        lr = float(value)
    except (TypeError, ValueError):
        lr = float("nan")
    if not (lr > 0 and lr != float("inf")):
        raise ValueError(f"--{name.replace('_', '-')} must be positive and finite, got {value!r}")
    return lr


def as_list(value):
    """A list from a list, tuple or the command line's comma-separated string (None stays None)."""
    if value is None:
        return None
    items = value.split(",") if isinstance(value, str) else value
    return [item.strip() if isinstance(item, str) else item for item in items
            if not isinstance(item, str) or item.strip()]


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
    number = _integer(jobs)
    if number is None or number < 1:
        raise ValueError(f"--jobs must be an integer >= 1, got {jobs!r}")
    return number


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


class StudyFailed(RuntimeError):
    """Some runs failed; the message says which, why, where the tracebacks are and how to continue."""


def resume_command(command):
    """What continues a study started by ``command``: the command line plus --resume (a Python
    call: the same call with resume=True)."""
    if not command.startswith("python -m "):
        return "the same call with resume=True"
    return command if " --resume" in f"{command} " else f"{command} --resume"


def failures_of(results):
    """``{name: Failure}`` of the runs in ``results`` (``{name: result}``) that failed."""
    return {name: r for name, r in results.items() if isinstance(r, Failure)}


class Terminated(KeyboardInterrupt):
    """SIGTERM (a batch system's time limit, ``kill PID``), handled as Ctrl-C is."""


def _terminate(signum, frame):
    raise Terminated()


def main_guard(run, out, command):
    """Call ``run()`` as a study's command line does: its exit status, with failures reported in
    a few lines (tracebacks in the folder's errors.log) instead of a traceback. Ctrl-C and SIGTERM
    stop the workers and say how to continue (exit status 130 and 143); a folder that cannot take
    the study is one line (exit status 2)."""
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        run()
    except KeyboardInterrupt as err:
        what = "terminated" if isinstance(err, Terminated) else "interrupted"
        print(f"\n{what}: finished runs and checkpoints are kept in {out}; continue with: "
              f"{resume_command(command)}", file=sys.stderr)
        return 143 if isinstance(err, Terminated) else 130
    except folder.Refused as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except StudyFailed as err:
        print(err, file=sys.stderr)
        return 1
    except (OSError, io.DamagedFile) as err:  # writing the results, figures or report in this process
        print(f"error: {err}\nfinished runs and checkpoints are kept; fix the cause and continue with: "
              f"{resume_command(command)}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)
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


# --- a study of independent runs --------------------------------------------------------------

def in_parallel(opts):
    """Whether the runs go to more than one worker (a Dask cluster, or a local pool of ``jobs`` > 1)."""
    return opts["executor"] == "dask" or (opts["jobs"] or 2) > 1


def task(opts, cfg, name, **fields):
    """One run as a task for :func:`run_tasks`: its ``name`` (its folder is ``out/runs/name``), the
    study's ``config``, ``out`` and ``resume``, and the run's own ``fields``."""
    return {"name": name, "config": cfg, "out": opts["out"], "resume": opts["resume"], **fields}


def train_runs(study, title, opts, cfg, tasks, fn, command, may_change=(), order=None, labels=()):
    """Record the study in ``out/config.json`` (:func:`minibn.studies.folder.record_study`: refused for
    another study's folder or other settings), train every task with ``fn`` in its run folder
    (:func:`minibn.studies.folder.in_run_folder`: resumed only from a folder recording the same
    settings; ``labels``: task fields left out of a run's record) where ``opts`` sends them (:func:`run_tasks`; in the order ``order(tasks)`` gives,
    where given), check every run's record again, and return ``({name: result} in the order of
    tasks, wall seconds)``; :class:`StudyFailed` when some runs failed (their tracebacks in
    ``out/errors.log``) or are not what they say."""
    from tqdm.auto import tqdm

    out, jobs, executor = opts["out"], opts["jobs"], opts["executor"]
    folder.record_study(out, study, cfg, opts["resume"], may_change)
    for t in tasks:
        t["record"] = folder.run_record(study, cfg, may_change, t, labels)
    print(f"{title}: {len(tasks)} runs on {opts['backend']}, {describe_executor(executor, jobs, opts['scheduler'])}"
          f" -> {out}", flush=True)
    started = time.perf_counter()
    parallel = in_parallel(opts)
    finished = {}
    bar = tqdm(total=len(tasks), desc="runs", disable=None)
    for t, result in run_tasks(functools.partial(folder.in_run_folder, fn), order(tasks) if order else tasks,
                               executor, jobs, opts["scheduler"], opts["backend"]):
        finished[t["name"]] = result
        bar.update()
        if parallel:
            bar.write(f"{'failed' if isinstance(result, Failure) else 'finished'} {t['name']} "
                      f"({len(finished)}/{len(tasks)})")
    bar.close()
    raise_failures(out, failures_of(finished), resume_command(command))
    wrong = folder.check_runs(tasks, finished)
    if wrong:
        raise StudyFailed("\n".join(["error: results.json not written: some runs are not what they say:",
                                      *(f"  {line}" for line in wrong),
                                      f"continue with: {resume_command(command)}"]))
    return {t["name"]: finished[t["name"]] for t in tasks}, time.perf_counter() - started


def write_results(opts, doc, split_run=None, report=None):
    """``out/results.json`` (+ ``results.npz`` with what ``split_run`` moves out of each run,
    :func:`minibn.results.split_arrays`), then, unless ``opts["report"]`` is false, ``report.write``
    (the study's report module) on them; returns what results.json holds."""
    slim, arrays = results.split_arrays(doc, split_run) if split_run else (doc, {})
    results.write(opts["out"], slim, arrays)
    if opts["report"] and report is not None:
        report.write(opts["out"], slim, arrays)
    print(f"done in {doc['config']['wall_s']:.1f} s: "
          f"{os.path.join(opts['out'], 'report.md' if opts['report'] else 'results.json')}", flush=True)
    return io.jsonable(slim)


def document(study, opts, cfg, runs, command, wall_s, **fields):
    """The results document: ``{"study", "preset", **fields, "config": cfg + environment, command
    and wall time, "runs"}``."""
    return {"study": study, "preset": opts.get("preset"), **fields,
            "config": {**cfg, "environment": environment(opts["backend"]), "command": command, "wall_s": wall_s},
            "runs": runs}
