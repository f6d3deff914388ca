"""Run a layer's threaded path in each regime of minibn.parallel.over_rows, on small arrays.

``regime(monkeypatch, name)`` sets the thread count and shrinks the size thresholds so that
arrays of a few kB take the path a VGG activation takes:

- "plain":     under the size threshold: one call on the calling thread;
- "blocks":    above it, one thread: many blocks in turn;
- "threads":   above it, three threads: many blocks on the pool.
"""

import pytest

from minibn import parallel

REGIMES = ("plain", "blocks", "threads")


def regime(monkeypatch, name):
    if name == "plain":
        monkeypatch.setattr(parallel, "MIN_BYTES", 2**62)
        parallel.set_num_threads(3)
    else:
        monkeypatch.setattr(parallel, "MIN_BYTES", 64)
        monkeypatch.setattr(parallel, "BLOCK_BYTES", 200)   # not a divisor of the rows' sizes
        parallel.set_num_threads(1 if name == "blocks" else 3)


@pytest.fixture(params=REGIMES)
def threaded(request, monkeypatch):
    """The regime's name, set up for the test and undone after it."""
    regime(monkeypatch, request.param)
    yield request.param
    parallel.set_num_threads(None)
