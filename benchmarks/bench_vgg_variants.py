"""Images per second of the VGG study's bare training step, per variant, at a preset's scale.

    python benchmarks/bench_vgg_variants.py [--preset cpu|paper|smoke] [--backend numpy|cupy]
                                            [--steps 3] [--variants ...]

One training step (forward, softmax cross-entropy, backward, SGD update) of the model
``python -m minibn.studies.vgg --preset P`` trains for each variant, on a batch of noise
of the preset's size, timed after one warm-up step: the figure the presets are sized by
(docs/vgg.md). Runs of the study made before this moved here recorded the same figure as
``step_images_per_s`` in their results; the report prints it where it is recorded.
"""

import argparse
import time

import blas  # benchmarks/blas.py, beside this script

from minibn import backend, models
from minibn.optim import SGD
from minibn.studies import vgg


def step_throughput(cfg, variant, backend_name, steps=3, seed=0):
    """Images/s of ``steps`` training steps of ``variant``'s model for the preset ``cfg``."""
    xp = backend.get(backend_name)
    rng = backend.rng(seed)
    x = backend.to_device(rng.standard_normal((cfg["batch"], 32, 32, 3)).astype("float32"), xp)
    y = backend.to_device(rng.integers(0, 10, cfg["batch"]), xp)
    model = models.vgg(cfg["config"], norm=variant, width=cfg["width"], rng=seed)
    model.to(backend_name)
    optimizer = SGD(model, 1e-3)
    model.value_and_grad(vgg.loss_fn, x, y)  # warm-up: first-call allocations are not the step's cost
    optimizer.step()
    backend.synchronize(xp)
    start = time.perf_counter()
    for _ in range(steps):
        model.value_and_grad(vgg.loss_fn, x, y)
        optimizer.step()
    backend.synchronize(xp)
    return cfg["batch"] * steps / (time.perf_counter() - start)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="cpu", choices=sorted(vgg.PRESETS))
    p.add_argument("--backend", default="numpy")
    p.add_argument("--steps", type=int, default=3, help="timed steps per variant [3]")
    p.add_argument("--variants", nargs="+", default=list(vgg.VARIANTS), choices=vgg.VARIANTS)
    args = p.parse_args(argv)
    cfg = vgg.PRESETS[args.preset]
    print(f"VGG {cfg['config']} at width {cfg['width']:g}, batch {cfg['batch']}, backend {args.backend}")
    print(blas.describe())
    for variant in args.variants:
        rate = step_throughput(cfg, variant, args.backend, args.steps)
        print(f"{variant:15s} {rate:8.0f} images/s  ({cfg['batch'] / rate * 1e3:.0f} ms per step)")


if __name__ == "__main__":
    main()
