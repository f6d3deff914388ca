import pytest

from minibn import backend

BACKENDS = ["numpy", pytest.param("cupy", marks=pytest.mark.cupy)]


@pytest.fixture(params=BACKENDS)
def xp(request):
    """Run a test body on NumPy and on CuPy; the CuPy half skips with its reason where there is no GPU."""
    try:
        return backend.get(request.param)
    except backend.BackendUnavailable as err:
        pytest.skip(str(err))
