"""Layer code takes its array module from minibn.backend; it never imports numpy or cupy itself."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "minibn"
FORBIDDEN = {"numpy", "cupy"}
GUARDED = sorted(
    [*ROOT.glob("nn/*.py"), *ROOT.glob("measure/*.py"),
     *(ROOT / name for name in ("train.py", "theory.py", "models.py", "optim.py", "gradcheck.py") if (ROOT / name).exists())]
)


def forbidden_imports(source):
    """(line, module) of every import of numpy/cupy, including importlib/__import__ with a literal name."""
    found = []
    for node in ast.walk(ast.parse(source)):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if called in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                names = [node.args[0].value]
        found += [(node.lineno, n) for n in names if n.split(".")[0] in FORBIDDEN]
    return found


def test_the_guarded_files_are_there():
    names = {p.relative_to(ROOT).as_posix() for p in GUARDED}
    assert {"nn/layer.py", "nn/dense.py", "nn/batchnorm.py", "nn/noisy.py", "nn/lpnorm.py", "models.py", "optim.py",
            "gradcheck.py"} <= names


@pytest.mark.parametrize("path", GUARDED, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_direct_numpy_or_cupy_import(path):
    assert forbidden_imports(path.read_text()) == [], f"{path}: import the array module via minibn.backend"


@pytest.mark.parametrize("source", ["import numpy as np", "import cupy", "from numpy.random import default_rng",
                                    "import os, numpy.linalg", "import importlib\nimportlib.import_module('cupy')",
                                    "np = __import__('numpy')", "def f():\n    import numpy\n"])
def test_the_checker_catches_every_form(source):
    assert forbidden_imports(source)


@pytest.mark.parametrize("source", ["from minibn import backend", "import numpyish", "from . import numpy_helpers",
                                    "xp = backend.get('numpy')"])
def test_the_checker_allows_the_backend_route(source):
    assert forbidden_imports(source) == []
