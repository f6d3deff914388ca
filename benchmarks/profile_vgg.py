"""Where a VGG-16 training step spends its time, by kind of layer, with the BLAS on one thread
and on all cores: what scales with the cores and what does not.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/profile_vgg.py [--batch 128] [--steps 3]

Times every layer's forward and backward (wall clock) over ``--steps`` steps after one warm-up
step, float32, channels-last, once with the BLAS limited to one thread (threadpoolctl) and once
on all cores of the affinity mask, and prints per kind of layer the milliseconds per step in
each and their ratio: about the core count for the GEMMs inside Conv2d and Dense, about 1 for
NumPy's elementwise loops, which run on one core whatever the BLAS does. (Process CPU time
cannot tell the two apart: OpenBLAS's idle threads spin, counted as CPU, while NumPy loops.)

``--lanes K`` then times the bound of the other way to use the cores: K independent VGG-16s,
each on batch/K images in its own thread with the BLAS on one thread (NumPy releases the GIL in
its loops and GEMMs), as a pool over blocks of images would run everything, GEMMs included; the
lanes share nothing (no BatchNorm statistics across them), so this is an upper bound.
"""

import argparse
import collections
import os
import time

import blas  # benchmarks/blas.py, beside this script

from minibn import models, nn, optim


def time_layers(model, sgd, totals, column):
    """Wrap every layer's forward and backward, and the update, to add their wall time to
    ``totals[kind, pass][column[0]]``."""
    def wrap(owner, method, kind):
        inner = getattr(owner, method)

        def timed(*args, **kwargs):
            start = time.perf_counter()
            out = inner(*args, **kwargs)
            totals[kind, method][column[0]] += time.perf_counter() - start
            return out

        setattr(owner, method, timed)

    for layer in model:
        for method in ("forward", "backward"):
            wrap(layer, method, type(layer).__name__)
    wrap(sgd, "step", "SGD")


def vgg_step(batch, seed):
    """``(step, model, sgd)``: one training step of a VGG-16 on its own random batch."""
    import numpy as np

    model = models.vgg("vgg16", norm="batchnorm", rng=seed, dtype="float32")
    host = np.random.default_rng(seed)
    x = host.standard_normal((batch, 32, 32, 3), dtype=np.float32)
    labels = host.integers(0, 10, batch)
    sgd = optim.SGD(model, lr=0.01)

    def step():
        model.value_and_grad(nn.softmax_cross_entropy, x, labels, "train")
        sgd.step()

    return step, model, sgd


def time_lanes(lanes, batch, steps):
    """Seconds per step of ``lanes`` independent VGG-16s on batch/lanes images each, one thread
    and one BLAS thread per lane, all at once."""
    import threading

    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        work = [vgg_step(batch // lanes, seed)[0] for seed in range(lanes)]
        for step in work:
            step()

        def run(step):
            for _ in range(steps):
                step()

        threads = [threading.Thread(target=run, args=(step,)) for step in work]
        start = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return (time.perf_counter() - start) / steps


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--lanes", type=int, default=0, metavar="K", help="also time K independent lanes (see above) [0]")
    args = p.parse_args()
    from threadpoolctl import threadpool_limits

    step, model, sgd = vgg_step(args.batch, 0)

    cores = len(os.sched_getaffinity(0))
    step()   # first touches of every array
    totals, column = collections.defaultdict(lambda: [0.0, 0.0]), [0]
    time_layers(model, sgd, totals, column)
    per_step = []
    for column[0], threads in enumerate((1, cores)):
        with threadpool_limits(limits=threads, user_api="blas"):
            step()   # settle at this thread count; its layer times are dropped below
            for times in totals.values():
                times[column[0]] = 0.0
            start = time.perf_counter()
            for _ in range(args.steps):
                step()
            per_step.append((time.perf_counter() - start) / args.steps)

    print(f"VGG-16 step, batch {args.batch}, float32, mean of {args.steps} steps, BLAS on 1 and on {cores} threads")
    print(blas.describe())
    print(f"{'kind':>10} {'pass':>9} {'1 thread ms':>12} {f'{cores} threads ms':>14} {'speed-up':>9} {'share':>6}")
    for (kind, method), (one, many) in sorted(totals.items(), key=lambda item: -item[1][1]):
        one, many = one / args.steps, many / args.steps
        print(f"{kind:>10} {method:>9} {one * 1e3:12.1f} {many * 1e3:14.1f} {one / max(many, 1e-9):9.2f} "
              f"{many / per_step[1]:6.1%}")
    print(f"{'step':>10} {'':>9} {per_step[0] * 1e3:12.1f} {per_step[1] * 1e3:14.1f} {per_step[0] / per_step[1]:9.2f} "
          f"{1:6.0%}   ({args.batch / per_step[1]:.1f} images/s on {cores} threads)")
    if args.lanes:
        lane = time_lanes(args.lanes, args.batch, args.steps)
        print(f"{args.lanes} independent lanes of {args.batch // args.lanes} images, BLAS on 1 thread each: "
              f"{lane * 1e3:.1f} ms per {args.batch // args.lanes * args.lanes} images "
              f"({args.batch // args.lanes * args.lanes / lane:.1f} images/s, {per_step[1] / lane:.2f}x the step above)")


if __name__ == "__main__":
    main()
