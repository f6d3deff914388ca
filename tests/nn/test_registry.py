"""Every registered normalizer, held to what its registry entry says of it.

For each entry but "standard" (which inserts nothing): the gradients of the layer it makes
(minibn.testing, every mode); the exact Hessian-vector product on Dense -> it -> Dense against
differences of the exact gradient; its scale invariance as ``invariance`` states it (and no more:
a scale that varies inside a pool changes it); ``pools`` and ``centres`` on its output; its docs page
quoting the final line of its backward. Then the two tables of the docs that list the
normalizers, docs/index.md's and docs/theory.md's, against the registry.

A new normalizer gets all of this by registering (the list is read when the tests are collected).
"""

import ast
import functools
import inspect
import math
import re
import textwrap
from pathlib import Path

import numpy as np
import pytest
from hypothesis import assume, given, settings, strategies as st

from minibn import models, nn, theory
from minibn.nn import normalization
from minibn.nn.normalization import REGISTRY, channel_rows, group_columns
from minibn.testing import check_layer_property, examples
from tests.nn import test_hvp

DOCS = Path(__file__).resolve().parents[2] / "docs"
F64 = "float64"
ENTRIES = [name for name in REGISTRY if name != "standard"]
INVARIANT = [name for name in ENTRIES if REGISTRY[name].invariance is not None]
INSERTED = [name for name in ENTRIES if REGISTRY[name].reparametrize is None]


def layer_of(entry, channels, dtype="float32", **options):
    """The layer the entry puts in a network after a weight layer of ``channels`` outputs: the one it
    makes, or the weight layer (a Dense) it reparametrizes."""
    if entry.reparametrize is not None:
        return entry.reparametrize(nn.Dense(channels, channels, rng=channels, dtype=dtype))
    return entry.make(channels, rng=np.random.default_rng(channels), dtype=dtype, **options)


def values_per_statistic(entry, shape):
    """How many values share one statistic in an input of ``shape``, by the entry's ``pools``."""
    layer = layer_of(entry, shape[-1])
    view = getattr(layer, "pooled_view", None)
    return view(np.zeros(shape)).shape[0] if view is not None else math.inf


@pytest.mark.parametrize("name", ENTRIES)
def test_backward_by_check_layer_property(name):
    entry = REGISTRY[name]
    ndim = 2 if entry.reparametrize is not None else (2, 4)
    # at least 2 values per statistic (with 1 a variance is 0); values off 0, where L1's sign has its kink
    inputs = examples(ndim, kinks=(0.0,), min_pooled=1).filter(lambda e: values_per_statistic(entry, e.shape) >= 2)
    check_layer_property(functools.partial(layer_of, entry), modes=("train", "probe", "eval"), max_examples=10,
                         seed=0, inputs=inputs)


@pytest.mark.parametrize("name", ENTRIES)
@settings(max_examples=8, deadline=None, derandomize=True)
@given(n=st.integers(3, 6), features=st.integers(2, 4), seed=st.integers(0, 2**16),
       loss=st.sampled_from(sorted(test_hvp.LOSSES)), mode=st.sampled_from(["probe", "eval"]))
def test_exact_hvp_matches_the_differenced_hessian(name, n, features, seed, loss, mode):
    """Sequential.hvp on Dense -> the normalizer (or the Dense reparametrized) -> Dense, float64, as
    tests/nn/test_hvp.py checks every layer: against the Hessian differenced from the exact gradient.
    At least 3 values per statistic: with 2, x_hat is +-1 whatever x is, and the curvature of the
    pool's variance near 0 defeats the differences (a draw of GroupNorm(2, 4) on 3 samples failed)."""
    assume(values_per_statistic(REGISTRY[name], (n, features)) >= 3)
    rng = np.random.default_rng(seed)
    weights = nn.Dense(features, features, rng=rng, dtype=F64)
    layers = models.normalized(name, weights, features, rng, F64) + [nn.Dense(features, 3, rng=rng, dtype=F64)]
    model = test_hvp.perturb(nn.Sequential(layers), rng)
    loss_fn, kind = test_hvp.LOSSES[loss]
    x = rng.normal(size=(n, features))
    test_hvp.check_against_differences(model, loss_fn, x, test_hvp.target_for(kind, 3, rng, n), mode)


def invariance_input(seed, dense):
    """A float64 input with at least 3 values per statistic, and a GroupNorm group count that keeps it so."""
    rng = np.random.default_rng(seed)
    shape = (5, 6) if dense else (3, 2, 2, 6)
    return rng.normal(size=shape) * 3.0 + 1.0, rng, 2 if dense else 3


@pytest.mark.parametrize("dense", [True, False], ids=["dense", "channels_last"])
@pytest.mark.parametrize("name", INVARIANT)
def test_scale_invariance_as_the_entry_states(name, dense):
    """eps = 0: y(a u) = y(u) and a dL/du(a u) = dL/du(u) for a global a and a random scale of the
    entry's invariance group (u the input, or a reparametrization's v); a scale that varies inside
    one pool (one per value) breaks it, so the fact is not weaker than the code."""
    x, rng, groups = invariance_input(1, dense)
    norm, u, local = theory.invariance_case(REGISTRY[name], x, rng, num_groups=groups)
    held = theory.normalizer_scale_invariance(norm, u, scales=(0.37, 23.0, local))
    assert held["max_output_error"] < 1e-13 and held["max_grad_error"] < 1e-12
    per_value = theory.normalizer_scale_invariance(norm, u, scales=(rng.uniform(0.1, 10.0, size=u.shape),))
    assert per_value["max_output_error"] > 1e-3


@pytest.mark.parametrize("name", [name for name in ENTRIES if REGISTRY[name].invariance is None])
def test_no_scale_invariance_where_the_entry_states_none(name):
    x, rng, _ = invariance_input(2, dense=True)
    layer = layer_of(REGISTRY[name], x.shape[-1], F64)
    assert theory.normalizer_scale_invariance(layer, x, scales=(3.0,))["max_output_error"] > 1e-3


POOLED_VIEWS = {"channel over batch": lambda layer, x: channel_rows(x),
                "sample": lambda layer, x: group_columns(x, 1),
                "sample and group": lambda layer, x: group_columns(x, layer.num_groups)}


@pytest.mark.parametrize("name", [name for name in INSERTED if REGISTRY[name].pools is not None])
def test_pools_and_centres_on_the_output(name):
    """With gamma = 1, beta = 0, the output of a normalizer that centres has mean 0 over each pool its
    ``pools`` names (probe mode: batch statistics, no noise); one that does not centre has not."""
    entry = REGISTRY[name]
    assert entry.pools in POOLED_VIEWS
    x = np.random.default_rng(3).normal(size=(4, 2, 3, 6)) * 2.0 + 1.5
    layer = layer_of(entry, 6, F64)
    means = POOLED_VIEWS[entry.pools](layer, layer.forward(x, "probe")).mean(axis=0)
    assert (np.abs(means).max() < 1e-12) == entry.centres, means


def final_line(backward):
    """The last assignment of a functional backward (whitespace collapsed): where its derivation ends."""
    source = textwrap.dedent(inspect.getsource(backward))
    function = ast.parse(source).body[0]
    last = [node for node in function.body if isinstance(node, (ast.Assign, ast.AugAssign))][-1]
    return " ".join(ast.get_source_segment(source, last).split())


@pytest.mark.parametrize("name", ENTRIES)
def test_the_docs_page_derives_the_backward_down_to_its_code_line(name):
    entry = REGISTRY[name]
    assert entry.doc and entry.backward, f"{name}: the entry names no docs page or backward"
    page = DOCS / entry.doc
    assert page.is_file(), f"{name}: no page {page}"
    line = final_line(entry.backward)
    assert line in " ".join(page.read_text(encoding="utf-8").split()), f"{entry.doc} does not quote `{line}`"


def test_the_final_line_is_the_last_assignment():
    from minibn.nn import groupnorm, weightnorm
    assert final_line(nn.batchnorm.backward) == "dx = (gamma * inv_std / m) * (m * dy2 - dbeta - x_hat * dgamma)"
    assert final_line(weightnorm.backward) == "dv = (g * inv_norm) * (dW - v_hat * dg)"
    assert final_line(groupnorm.backward).startswith("dx = (inv_std / m) * (m * dx_hat - dx_hat.sum(axis=(1, 3), ")


def table(page, header):
    """The rows (lists of cells) of the markdown table of ``page`` whose header row starts with ``header``."""
    lines = (DOCS / page).read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip().strip("|").split(" | ")])
    return rows


def names_in(cell):
    return re.findall(r"`([^`]+)`", cell)


def test_theory_md_lists_every_normalizer_with_its_facts():
    rows = table("theory.md", "| name | pools | centres | invariant to a positive scale of |")
    listed = {}
    for name_cell, pools, centres, invariance, *_ in rows:
        (name,) = names_in(name_cell)
        assert name not in listed, f"docs/theory.md lists {name} twice"
        listed[name] = (None if pools == "—" else pools, {"yes": True, "no": False}[centres],
                        None if invariance == "none" else invariance)
    assert sorted(listed) == sorted(REGISTRY), "docs/theory.md's table and the registry differ"
    for name, entry in REGISTRY.items():
        assert listed[name] == (entry.pools, entry.centres, entry.invariance), name


def test_index_md_lists_every_normalizer_on_its_page():
    rows = table("index.md", "| page | class / function | module | registered as |")
    pages = {}
    for page_cell, *_, registered in rows:
        page = re.search(r"\]\(([^)]+\.md)\)", page_cell).group(1)
        for name in names_in(registered):
            assert name not in pages, f"docs/index.md lists {name} twice"
            pages[name] = page
    assert pages == {name: entry.doc for name, entry in REGISTRY.items() if entry.doc is not None}


def test_register_refuses_facts_outside_the_vocabulary():
    make = REGISTRY["layernorm"].make
    for facts, match in [({"pools": "batch"}, "pools must be one of"), ({"invariance": "global"}, "invariance must be"),
                         ({"centres": "yes"}, "centres must be True or False")]:
        with pytest.raises(ValueError, match=match):
            normalization.register("not_a_normalizer", "nothing", make, **facts)
    assert "not_a_normalizer" not in REGISTRY
