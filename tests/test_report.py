"""minibn.report: the palette handed out from the registry, markdown without a plotting library."""

import subprocess
import sys

from minibn import report
from minibn.nn import normalization


def test_every_normalizer_has_its_own_colour_and_a_users_gets_a_free_one(monkeypatch):
    registry = dict(normalization.REGISTRY)
    monkeypatch.setattr(normalization, "REGISTRY", registry)
    named = {name: entry.color for name, entry in registry.items() if entry.color}
    before = report.colors()
    assert {name: before[name] for name in named} == named          # an entry's own colour is an override
    assert len(set(before.values())) == len(before)                 # no two normalizers share one
    make = registry["layernorm"].make
    normalization.register("mine", "my norm", make, pools="sample", centres=True, invariance="per sample")
    normalization.register("also_mine", "my other norm", make, pools="sample", centres=True, invariance="per sample")
    after = report.colors()
    assert {k: after[k] for k in before} == before                  # nobody else's colour moves
    mine = (after["mine"], after["also_mine"])
    assert mine[0] != mine[1] and not set(mine) & set(before.values())
    assert mine[0] in report.PALETTE and report.color("mine") == mine[0]
    assert report.label("mine") == "my norm"


def test_markdown_helpers_load_no_plotting_library():
    code = ("import sys; from minibn import report; report.table(['a'], [[report.fmt(1.5)]]); "
            "assert 'matplotlib' not in sys.modules")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
