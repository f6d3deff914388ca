"""Device operations (kernel launches) of one training step, per variant, counted by the CuPy
stand-in (tests/fakecupy): one VGG-16 step and one DLN step, with the largest contributors.

    python benchmarks/count_ops.py            # from the repository root

The counts do not depend on width or batch (one launch per array operation), so the VGG-16
is built at 1/8 width and batch 16 to keep the stand-in quick. A step is forward, loss,
backward and SGD update; the second step is counted (the first makes lazy state).
"""

import collections
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tests import fakecupy  # noqa: E402

cp = fakecupy.install()

from minibn import backend, models, nn  # noqa: E402
from minibn.nn import normalization  # noqa: E402
from minibn.optim import SGD  # noqa: E402


def counted_step(model, loss_fn, x, target):
    opt = SGD(model, 1e-4)
    model.value_and_grad(loss_fn, x, target)
    opt.step()
    with fakecupy.counting() as counts:
        model.value_and_grad(loss_fn, x, target)
        opt.step()
    return counts.ops


def by_file(ops):
    files = collections.Counter()
    for site, n in ops.items():
        files[site.rsplit(":", 1)[0]] += n
    return files


rng = backend.rng(0)
rows = []
for variant in normalization.REGISTRY:
    norm = None if variant == "standard" else variant
    vgg = models.vgg("vgg16", width=0.125, norm=norm, rng=0).to("cupy")
    x = cp.asarray(rng.standard_normal((16, 32, 32, 3), dtype="float32"))
    labels = cp.asarray(rng.integers(0, 10, size=16))
    vgg_ops = counted_step(vgg, nn.softmax_cross_entropy, x, labels)
    dln = models.dln(25, 10, norm=norm, norm_layers=24, rng=0, dtype="float64").to("cupy")
    xd, yd = cp.asarray(rng.standard_normal((1000, 10))), cp.asarray(rng.standard_normal((1000, 10)))
    dln_ops = counted_step(dln, lambda p, t: nn.squared_error(p, t), xd, yd)
    rows.append((variant, sum(vgg_ops.values()), sum(dln_ops.values()), by_file(vgg_ops), by_file(dln_ops)))

print("| variant | VGG-16 step | DLN step | largest contributors (VGG-16 / DLN, by file) |")
print("|---|---|---|---|")
for variant, v, d, vf, df in rows:
    top = lambda files: ", ".join(f"{os.path.basename(f)} {n}" for f, n in files.most_common(3))
    print(f"| {variant} | {v} | {d} | {top(vf)} / {top(df)} |")
