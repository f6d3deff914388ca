"""What every study's command line shares: option checks and the record of the machine."""

import os
import platform

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
