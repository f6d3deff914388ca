"""Every normalizer of the registry beyond the paper's six (LayerNorm, GroupNorm, WeightNorm, RMSNorm,
BatchNorm without affine, and whatever is registered next) in the studies: the DLN study takes them
by name and runs end to end; a VGG with each builds and trains a step, and the VGG study's layer
numbering sees through WeightNorm."""

import numpy as np
import pytest

from minibn import io, models, nn
from minibn.optim import SGD
from minibn.nn import normalization
from minibn.studies import dln, vgg

NEW = [v for v in normalization.REGISTRY if v not in (*dln.DEFAULT_VARIANTS, "standard_noisy")]


def test_dln_smoke_with_the_new_variants_end_to_end(tmp_path):
    doc = dln.run(out=str(tmp_path), preset="smoke", variants=NEW, jobs=1)
    assert {r["variant"] for r in doc["runs"].values()} == set(NEW)
    for name, run in doc["runs"].items():
        assert run["diverged_at"] is None, name
        assert np.isfinite(run["loss"]).all() and run["loss"][-1] < run["loss"][0], name
        assert run["ics"]["l2"] and run["landscape"]["loss_min"], name
    assert (tmp_path / "report.md").exists() and io.read_json(tmp_path / "claims.json")


@pytest.mark.parametrize("norm", NEW)
def test_vgg_with_each_builds_and_trains_one_step(norm):
    model = models.vgg(config=[4, "M", 8, "M"], norm=norm, input_size=8, rng=0)
    rng = np.random.default_rng(0)
    x, labels = rng.normal(size=(6, 8, 8, 3)).astype(np.float32), rng.integers(0, 10, size=6)
    before = model.flat_params()
    loss = model.value_and_grad(nn.softmax_cross_entropy, x, labels)
    SGD(model, 0.1).step()
    assert np.isfinite(loss) and not np.array_equal(model.flat_params(), before)
    assert len(vgg.conv_layers(model)) == 2 and len(vgg.preactivation_layers(model)) == 2
    assert len(model.blocks()) == 3   # two conv blocks (with their norm's parameters, if any) and the classifier
