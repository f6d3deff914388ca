"""Which BLAS NumPy runs on and with which kernel, printed beside every benchmark's figures.

The environment of this project's machines sets OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE, which
force OpenBLAS onto older kernels (on an AVX-512 machine half the GEMM speed); run benchmarks
with both unset in that command alone (``env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python
benchmarks/...``) to measure what users get, and read this line to see which kernel ran.
"""

import os

FORCING = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


def describe():
    """One line: each BLAS library loaded by NumPy, its version, kernel and threads, and whether
    the kernel choice was forced by the environment."""
    import numpy  # noqa: F401  (loads the BLAS that threadpoolctl inspects)

    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "BLAS: not inspected (pip install threadpoolctl, or 'minibn[bench]')"
    libraries = [f"{i['internal_api']} {i['version']}, kernel {i.get('architecture', '?')}, {i['num_threads']} threads"
                 for i in threadpool_info() if i["user_api"] == "blas"]
    forced = [f"{name}={os.environ[name]}" for name in FORCING if name in os.environ]
    return (f"BLAS: {'; '.join(libraries) or 'none found'} "
            f"({'kernel forced by ' + ', '.join(forced) if forced else 'native kernel selection'})")
