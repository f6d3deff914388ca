"""``python -m minibn.gpucheck``: its GPU parts, sized for the CuPy stand-in (--quick), end to end."""

import json
import os
import subprocess
import sys

import pytest

from minibn import backend
from tests import fakecupy
from tests.data.test_cifar10 import make_folder

pytestmark = pytest.mark.cupy
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def gpucheck(*args):
    if not fakecupy.is_installed() and not backend.is_available("cupy"):
        pytest.skip("no CuPy here: run with --fake-cupy")
    prefix = ["-m", "tests.fakecupy"] if fakecupy.is_installed() else []
    return subprocess.run([sys.executable, *prefix, "-m", "minibn.gpucheck", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=600, env=dict(os.environ, OPENBLAS_NUM_THREADS="1"))


def test_gpu_parts_run_and_write_their_report(tmp_path):
    data = make_folder(tmp_path / "cifar", rows=20)
    done = gpucheck("--out", str(tmp_path / "out"), "--quick", "--parts", "dln_compare,vgg_step,vgg_e1",
                    "--data-dir", str(data))
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    doc = json.loads((tmp_path / "out" / "gpucheck.json").read_text())
    assert doc["ok"] and list(doc["parts"]) == ["dln_compare", "vgg_step", "vgg_e1"]
    compare = doc["parts"]["dln_compare"]
    assert compare["status"] == "passed" and compare["max_rel_diff"] <= 1e-9
    assert any(isinstance(r, str) and "differs by design" in r for r in compare["runs"].values())
    assert doc["parts"]["vgg_step"]["minibn_images_per_s"] > 0 and doc["parts"]["vgg_e1"]["steps"] >= 1
    assert doc["device"]["device_name"] and "| dln_compare | passed |" in (tmp_path / "out" / "gpucheck.md").read_text()


def test_unknown_part_is_refused(tmp_path):
    done = gpucheck("--out", str(tmp_path), "--parts", "dln_compare,warp_drive")
    assert done.returncode == 2 and "unknown part(s) ['warp_drive']" in done.stderr
