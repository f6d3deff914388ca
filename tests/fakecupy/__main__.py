"""Run a module on the CuPy stand-in: ``python -m tests.fakecupy -m MODULE [ARGS...]``.

For command lines that must run with ``--backend cupy`` on a machine without a GPU (CI):
the stand-in is installed, then MODULE runs as ``python -m MODULE ARGS`` would.
"""

import runpy
import sys

from . import install

if len(sys.argv) < 3 or sys.argv[1] != "-m":
    sys.exit("usage: python -m tests.fakecupy -m MODULE [ARGS...]")
install()
module = sys.argv[2]
sys.argv = [module] + sys.argv[3:]
runpy.run_module(module, run_name="__main__", alter_sys=True)
