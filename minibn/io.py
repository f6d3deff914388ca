"""Atomic result files: write to a temporary file beside the target, then rename.

A reader (or a resumed study) therefore sees either the old file or the new one,
never half of one. A file damaged anyway (a disk error, a hand edit, a copy cut short)
is reported by the readers as :class:`DamagedFile`, naming it; a failed write (a full
disk, a folder that cannot be written) raises an OSError that names the target.
"""

import json
import math
import os
import tempfile


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


class DamagedFile(ValueError):
    """A result, config or checkpoint file that cannot be read back; the message names it."""


def _atomic(path, write, mode):
    path = os.fspath(path)
    try:
        _write_atomic(path, write, mode)
    except OSError as err:
        # "No space left on device" alone names no file: say which one could not be written
        if err.filename is None:
            raise OSError(err.errno, f"{err.strerror or err} (writing {path})", path) from err
        raise


def _write_atomic(path, write, mode):
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.basename(path), dir=folder)
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 would make results private to their writer
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def json_float(value):
    """``float(value)``, or ``None`` when it is NaN or infinite (JSON has no such numbers)."""
    value = float(value)
    return value if math.isfinite(value) else None


def jsonable(value):
    """Plain JSON types; non-finite floats become ``None`` (null), as :func:`json_float` writes them."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        return jsonable(value.tolist())
    if isinstance(value, float):
        return json_float(value)
    return value


def write_text(path, text):
    _atomic(path, lambda f: f.write(text), "w")


def write_json(path, obj):
    write_text(path, json.dumps(jsonable(obj), indent=1) + "\n")


def read_json(path):
    """The JSON document in ``path``; :class:`DamagedFile` (naming it) when it is not valid JSON."""
    with open(path, "rb") as f:
        raw = f.read()
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DamagedFile(f"{path} is damaged (not valid JSON: {err})") from None


def write_npz(path, **arrays):
    from minibn import backend

    _atomic(path, lambda f: backend.host.savez(f, **arrays), "wb")


def write_figure(path, fig):
    """Save a matplotlib figure atomically (format from the path's suffix); figures from
    :func:`minibn.report.new_figure` lay themselves out (constrained layout)."""
    fmt = os.path.splitext(os.fspath(path))[1].lstrip(".") or "png"
    _atomic(path, lambda f: fig.savefig(f, format=fmt, dpi=100), "wb")
