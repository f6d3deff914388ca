"""Stochastic Lanczos quadrature's cost against the Hessian-vector products it takes.

    python benchmarks/bench_slq.py [--steps 80] [--probes 2] [--batch 256]

On an MLP of about 1e5 parameters with BatchNorm (float64, one batch), times
:func:`minibn.measure.slq.spectral_density` and then the same number of products alone
(``HessianOperator.matvec`` on random vectors), and prints both and their ratio: the rest of
SLQ (re-orthogonalization, the tridiagonal eigenproblems, the smoothing) is the ratio's
excess over 1. The issue's target is a ratio of at most 2. Prints; never asserts a time.
"""

import argparse
import os
import time

import blas  # benchmarks/blas.py, beside this script

import numpy as np

from minibn import nn
from minibn.measure import hessian, slq


def network(seed=0):
    rng = np.random.default_rng(seed)
    widths = [64, 208, 208, 208, 10]
    layers = []
    for i, (a, b) in enumerate(zip(widths, widths[1:])):
        layers.append(nn.Dense(a, b, rng=rng, dtype="float64"))
        if i < len(widths) - 2:
            layers += [nn.BatchNorm(b, dtype="float64"), nn.ReLU()]
    return nn.Sequential(layers)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=80)
    p.add_argument("--probes", type=int, default=2)
    p.add_argument("--batch", type=int, default=256)
    args = p.parse_args()
    model = network()
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((args.batch, 64)), rng.integers(0, 10, args.batch)
    print(f"MLP 64-208-208-208-10 with BN, {model.num_params} parameters, batch {args.batch}, float64; "
          f"BLAS threads {os.environ.get('OPENBLAS_NUM_THREADS', 'default')}; load average {os.getloadavg()[0]:.1f}")
    start = time.perf_counter()
    out = slq.spectral_density(model, nn.softmax_cross_entropy, x, y, steps=args.steps, probes=args.probes)
    total = time.perf_counter() - start
    with hessian.HessianOperator(model, nn.softmax_cross_entropy, x, y) as op:
        vectors = [op.random_vector(k) for k in range(out["hvps"])]
        start = time.perf_counter()
        for v in vectors:
            op.matvec(v)
        products = time.perf_counter() - start
    print(f"SLQ: {args.probes} probes x {args.steps} steps = {out['hvps']} products, {total:.2f} s "
          f"(setup gradient included)")
    print(f"the same {out['hvps']} products alone: {products:.2f} s")
    print(f"ratio SLQ / products: {total / products:.2f} (target <= 2); lambda_max {out['lambda_max']:.4g}")
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    print(blas.describe())


if __name__ == "__main__":
    main()
