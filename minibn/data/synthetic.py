"""The deep linear network's embedded synthetic regression data (docs/protocol.md §1).

A target map A with A_ij ~ N(0, 1) and inputs x ~ N(0, I); with samples as rows,
X has shape (n, d_in) and Y = X A^T has shape (n, d_out). Everything is drawn from
one seed (or Generator) on the host, so a seed gives the same data on every backend.
"""

from minibn import backend


def linear_regression(n_samples=1000, in_features=10, out_features=10, rng=None, dtype="float64"):
    """``(X, Y, A)`` with X ~ N(0, I) of shape (n, in), A ~ N(0, 1) of shape (out, in), Y = X A^T."""
    for name, v in (("n_samples", n_samples), ("in_features", in_features), ("out_features", out_features)):
        if int(v) != v or v < 1:
            raise ValueError(f"linear_regression: {name} must be a positive integer, got {v!r}")
    rng = backend.rng(rng)
    A = rng.standard_normal((out_features, in_features))
    X = rng.standard_normal((n_samples, in_features))
    Y = X @ A.T
    return X.astype(dtype), Y.astype(dtype), A.astype(dtype)
