"""A study's output folder: one study per folder, one writer at a time, runs that are what their
records say.

- **The lock.** A study holds ``DIR/.lock`` (an OS file lock, :func:`locked`) from its first
  write to its last, so a second study into DIR refuses at once; the lock dies with its process,
  so a killed study never leaves a stale one. ``--only`` (a study split by hand over several
  processes) shares the folder's lock and locks each of its runs instead.
- **The study's record.** ``DIR/config.json`` names the study and its settings
  (:func:`record_study`). A study started into a folder of another study refuses, and so does one
  of other settings unless they are among those a resume may change: one line, nothing touched.
- **The run's record.** ``DIR/runs/NAME/run.json`` holds what the run was trained under: the
  study, its settings and the run's own fields (:func:`in_run_folder`). A run continues from its
  folder (checkpoint, finished result, measurements at initialization) only on ``--resume`` and
  only when that record is the study's own; otherwise the folder is cleared and the run trains
  anew. Before results.json is written every run's record is checked again (:func:`check_runs`).
"""

import contextlib
import os

from minibn import io

RECORD = "run.json"
#: What clearing a run's folder keeps: the Dask task's own record of its attempts.
KEPT = ("attempt.json", ".lock")


class Refused(ValueError):
    """The folder cannot take this study (another study's, other settings, another writer): the
    one-line reason. Raised before anything is written."""


@contextlib.contextmanager
def locked(path, shared=False, what="study"):
    """Hold an OS lock on ``path`` (created if needed) for the ``with`` block: exclusive, or ``shared``
    with other shared holders; :class:`Refused` at once when another process holds it the other way."""
    try:
        import fcntl
    except ImportError:   # no POSIX locks (Windows): one writer is the user's to ensure
        yield
        return
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            raise Refused(f"another process is writing this {what} ({path} is locked): wait for it to end, "
                          f"or choose another --out") from None
        except OSError:   # a file system without locks (some network mounts): proceed unlocked
            pass
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def study_of(out):
    """``(study, config)`` recorded in ``out`` (``(None, None)`` for a folder of no study); a study
    written before config.json named its study is known by its results.json."""
    config = _read(os.path.join(out, "config.json"))
    study = config.pop("study", None) if isinstance(config, dict) else None
    if study is None:
        results = _read(os.path.join(out, "results.json"))
        study = results.get("study") if isinstance(results, dict) else None
    return study, config


def _read(path):
    if not os.path.exists(path):
        return None
    try:
        return io.read_json(path)
    except io.DamagedFile as err:
        raise Refused(f"{err}; start a new --out (or delete the folder to start over)") from None


def kept(cfg, may_change):
    """The settings of ``cfg`` that every run depends on (all but those a resume may change)."""
    return {k: v for k, v in io.jsonable(cfg).items() if k not in may_change}


def record_study(out, study, cfg, resume, may_change=()):
    """Write ``out/config.json`` (the study's name and ``cfg``) after refusing (:class:`Refused`) a
    folder that holds another study, or this study with settings other than ``cfg``'s (the keys in
    ``may_change`` aside), with or without ``resume``."""
    there, old = study_of(out)
    if there is not None and there != study:
        raise Refused(f"{out} holds a {there} study's results: a {study} study would replace them; choose "
                      f"another --out")
    if old is not None:
        old, new = kept(old, may_change), kept(cfg, may_change)
        changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        if changed:
            how = "continue it with the same options and --resume" if not resume else "use the same options"
            raise Refused(f"{out} holds a {study} study of other settings ({', '.join(changed)}: "
                          f"{_shown(old, changed)} there, {_shown(new, changed)} here); {how}, or choose "
                          f"another --out")
    io.write_json(os.path.join(out, "config.json"), {"study": study, **io.jsonable(cfg)})


def _shown(cfg, keys):
    text = ", ".join(f"{cfg.get(k)!r}" for k in keys)
    return text if len(text) <= 80 else text[:77] + "..."


def run_record(study, cfg, may_change, task, labels=()):
    """What a run is trained under: the study, the settings every run depends on, the run's own fields
    (but its ``labels``: fields that say where the run is used, not how it trains)."""
    own = {k: v for k, v in task.items() if k not in ("config", "out", "resume", "name", "record", *labels)}
    return io.jsonable({"study": study, "config": kept(cfg, may_change), "run": own})


def in_run_folder(fn, task):
    """``fn(task)`` in the run's folder ``out/runs/NAME``, locked while it trains: resumed from what the
    folder holds only when ``task["resume"]`` and the folder's run.json is ``task["record"]``;
    otherwise the folder is cleared (all but :data:`KEPT`), the record written, and the run trained
    anew (a line says so where the folder held another run)."""
    folder = os.path.join(task["out"], "runs", task["name"])
    with locked(os.path.join(folder, ".lock"), what=f"run {task['name']}"):
        path = os.path.join(folder, RECORD)
        try:
            same = io.read_json(path) == task["record"] if os.path.exists(path) else False
        except io.DamagedFile:
            same = False
        if not (task["resume"] and same):
            if task["resume"] and os.path.exists(path):
                print(f"{task['name']}: its folder holds a run of other settings; trained anew", flush=True)
            clear(folder)
            io.write_json(path, task["record"])
            task = {**task, "resume": False}
        return fn(task)


def clear(folder):
    """Remove what ``folder`` holds (all but :data:`KEPT`), so nothing of an earlier run is read back."""
    import shutil

    for entry in os.listdir(folder) if os.path.isdir(folder) else ():
        if entry not in KEPT:
            path = os.path.join(folder, entry)
            shutil.rmtree(path) if os.path.isdir(path) and not os.path.islink(path) else os.unlink(path)


def check_runs(tasks, results):
    """The reasons (one line each) why ``results`` (``{name: result}``) may not be written: a run whose
    folder's record is not its task's, or whose result names another run (variant, LR, seed, part,
    width). Empty when every run is what it says."""
    wrong = []
    for task in tasks:
        result = results.get(task["name"])
        if not isinstance(result, dict):
            continue
        path = os.path.join(task["out"], "runs", task["name"], RECORD)
        try:
            record = io.read_json(path) if os.path.exists(path) else None
        except io.DamagedFile:
            record = None
        if record != task["record"]:
            wrong.append(f"{task['name']}: {path} does not record the settings this study trained it under "
                         f"(another process wrote into its folder?)")
            continue
        differs = {k: (result[k], v) for k, v in identity(task).items() if k in result and result[k] != v}
        if differs:
            wrong.append(f"{task['name']}: its result is of another run (result, task: {differs})")
    return wrong


def identity(task):
    """What names a task's run: its variant, LR and seed (a :class:`~minibn.results.Run` given as
    ``run``, or in ``spec``), and its part and width where it has them."""
    run = task.get("run") or (task.get("spec") or {}).get("run")
    fields = dict(run._asdict()) if run is not None else {}
    fields.update({k: task[k] for k in ("part", "width", "variant", "lr", "seed") if k in task})
    return fields
