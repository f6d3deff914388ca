"""Time one full-batch gradient-descent step of the paper's 25-layer DLN, per variant.

    python benchmarks/bench_dln.py [--backend numpy|cupy] [--steps 300] [--variants ...] [--ics 10]

Prints wall and CPU milliseconds per step (forward, summed squared error, backward, SGD
update) for each normalization variant, and what 10,000 such steps cost: the training part
of one run of `python -m minibn.studies.dln` (the instruments add about a third more). With
``--ics K``, also the CPU milliseconds of one internal-covariate-shift measurement (the
study's most costly instrument, taken every 100 steps), the mean of K after the timed steps.
"""

import argparse
import time

import blas  # benchmarks/blas.py, beside this script

from minibn import backend
from minibn.measure import ics
from minibn.optim import SGD
from minibn.studies.dln import DEFAULT_VARIANTS as VARIANTS
from minibn.studies.dln import PRESETS, data_and_model, loss_fn


def time_variant(variant, backend_name, steps, warmup=20, ics_repeats=0):
    """``(wall s, CPU s)`` per step, and the CPU seconds of one ICS measurement (None without repeats)."""
    xp = backend.get(backend_name)
    X, Y, model = data_and_model(PRESETS["paper"], variant, seed=0)   # the study's run, seed 0
    model.to(backend_name)
    X, Y = backend.to_device(X, xp), backend.to_device(Y, xp)
    optimizer = SGD(model, 1e-6)
    for _ in range(warmup):
        model.value_and_grad(loss_fn, X, Y)
        optimizer.step()
    backend.synchronize(xp)
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        model.value_and_grad(loss_fn, X, Y)
        optimizer.step()
    backend.synchronize(xp)
    wall, cpu = (time.perf_counter() - wall) / steps, (time.process_time() - cpu) / steps
    ics_cpu = None
    if ics_repeats:
        start = time.process_time()
        for _ in range(ics_repeats):
            ics.measure_ics(model, loss_fn, X, Y, optimizer)
        backend.synchronize(xp)
        ics_cpu = (time.process_time() - start) / ics_repeats
    return wall, cpu, ics_cpu


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backend", default="numpy")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--ics", type=int, default=0, metavar="K", help="also time K ICS measurements per variant [0]")
    args = p.parse_args()
    try:
        load = " ".join(open("/proc/loadavg").read().split()[:3])
    except OSError:
        load = "unknown"
    print(f"DLN step, 25 x Dense(10, 10), 1000 samples, float64, backend {args.backend}; load average {load}")
    print(blas.describe())
    print(f"{'variant':>10} {'wall ms':>9} {'CPU ms':>8} {'10k steps, s':>13}" + (f" {'ICS CPU ms':>11}" if args.ics else ""))
    for variant in args.variants:
        wall, cpu, ics_cpu = time_variant(variant, args.backend, args.steps, ics_repeats=args.ics)
        print(f"{variant:>10} {wall * 1e3:9.3f} {cpu * 1e3:8.3f} {wall * 1e4:13.1f}"
              + (f" {ics_cpu * 1e3:11.1f}" if args.ics else ""))


if __name__ == "__main__":
    main()
