import pytest

from minibn import backend
from tests import fakecupy

BACKENDS = ["numpy", pytest.param("cupy", marks=pytest.mark.cupy)]


def pytest_addoption(parser):
    parser.addoption("--fake-cupy", action="store_true",
                     help="run the CuPy halves on the strict CuPy stand-in (tests/fakecupy) where no GPU is usable; "
                          "a real GPU takes precedence")
    parser.addoption("--fake-cupy-version", default="13.3.0",
                     help="the CuPy version the stand-in models (12.x: eigsh without v0) [13.3.0]")


def pytest_configure(config):
    config.fake_cupy_note = None
    if config.getoption("--fake-cupy"):
        if backend.is_available("cupy"):
            config.fake_cupy_note = "fake-cupy: a GPU is usable, the CuPy halves run on the real CuPy"
        else:
            fakecupy.install(config.getoption("--fake-cupy-version"))
            config.fake_cupy_note = f"fake-cupy: CuPy halves run on the stand-in (as CuPy {fakecupy.cupy.__version__})"


def pytest_report_header(config):
    return config.fake_cupy_note


@pytest.fixture(params=BACKENDS)
def xp(request):
    """Run a test body on NumPy and on CuPy; the CuPy half skips with its reason where there is no GPU."""
    try:
        return backend.get(request.param)
    except backend.BackendUnavailable as err:
        pytest.skip(str(err))
