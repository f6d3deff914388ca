"""Internal covariate shift, Definition 2.1 of the paper (docs/protocol.md §3).

For a model whose parameters form blocks 1..k (``model.blocks()``: a weight layer
with its normalization's gamma, beta), a batch (x, target) and the optimizer's update
W' = W + delta (delta = ``optimizer.updates()``, what ``optimizer.step()`` would add):

    G_i  = grad_{W_i} L(W_1,  ..., W_{i-1},  W_i, ..., W_k; x, target)
    G'_i = grad_{W_i} L(W_1', ..., W_{i-1}', W_i, ..., W_k; x, target)
    l2_i  = ||G_i - G'_i||_2
    cos_i = <G_i, G'_i> / (||G_i||_2 ||G'_i||_2)

with every layer in "probe" mode (batch statistics, no state change). No shift means
l2 = 0 and cos = 1. G'_1 = G_1 by definition (no earlier layers).

Cost: k forward/backward passes -- one for G, then one per block i >= 2, applying
block i-1's update before each (the updates accumulate, so pass i sees W'_1..W'_{i-1}),
its backward stopping at block i and its forward starting at block i-1 (the input of
block i-1 is that of pass i-1): about half a forward and half a backward on average.
The parameters are written back bit-exactly afterwards.
"""

import math

from minibn.measure import Recorder, block_vector, json_float


def _l2_and_cos(g, g_new, xp):
    """||g - g'|| and cos(g, g'); cos is exactly 1 for identical non-zero vectors, None when undefined."""
    l2 = float(xp.linalg.norm(g - g_new))
    norms = float(xp.linalg.norm(g)) * float(xp.linalg.norm(g_new))
    if l2 == 0.0 and norms > 0.0:
        return 0.0, 1.0  # identical vectors: say so exactly instead of 1 - rounding
    cos = float(xp.vdot(g, g_new)) / norms if norms > 0.0 else float("nan")
    if math.isfinite(cos):
        cos = max(-1.0, min(1.0, cos))  # rounding can step just outside [-1, 1]
    return json_float(l2), json_float(cos)


def measure_ics(model, loss_fn, x, target, optimizer, *, block_lrs=None):
    """Definition 2.1 for every block of ``model`` on one batch: ``{"l2": [...], "cos": [...]}``.

    ``optimizer`` supplies the update (``optimizer.updates()``: its lr, momentum and
    weight decay, without touching its buffers). ``block_lrs``, one learning rate per
    block, replaces the optimizer's lr block by block (block i's update is
    ``optimizer.updates(lr=block_lrs[i])``); with zeros for blocks 1..i-1 the shift at
    block i is exactly 0. Non-finite values are reported as ``None``.
    """
    blocks = model.blocks()
    if block_lrs is not None:
        block_lrs = [float(lr) for lr in block_lrs]
        if len(block_lrs) != len(blocks):
            raise ValueError(f"measure_ics: block_lrs has {len(block_lrs)} entries but the model has {len(blocks)} blocks")
    xp = model.xp
    with model.snapshot():
        model.value_and_grad(loss_fn, x, target, mode="probe")
        grads = [block_vector(model, block) for block in blocks]
        if block_lrs is None:
            updates = optimizer.updates()
            block_updates = [updates] * len(blocks)
        else:
            by_lr = {lr: optimizer.updates(lr=lr) for lr in set(block_lrs)}
            block_updates = [by_lr[lr] for lr in block_lrs]
        l2, cos = [0.0], [_l2_and_cos(grads[0], grads[0], xp)[1]]
        below, at = x, 0   # the input of layer `at`, with every block before it already moved
        for i in range(1, len(blocks)):
            # Pass i differs from pass i-1 only from block i-1 on: the input of block i-1 is the same
            below, at = model.forward(below, "probe", start=at, stop=blocks[i - 1][0]), blocks[i - 1][0]
            for layer_index in blocks[i - 1]:  # W'_{i-1} = W_{i-1} + delta_{i-1}, as step() would
                for key, delta in block_updates[i - 1][layer_index].items():
                    model[layer_index].params[key] += delta
            # G'_i needs the backward only down to block i's first layer
            model.value_and_grad(loss_fn, below, target, mode="probe", first=blocks[i][0], start=at)
            d, c = _l2_and_cos(grads[i], block_vector(model, blocks[i]), xp)
            l2.append(d)
            cos.append(c)
    return {"l2": l2, "cos": cos}


class ICSRecorder(Recorder):
    """Callback: :func:`measure_ics` every ``every`` steps, with the training optimizer's update.

    ``result()``: ``{"steps": [t], "layers": [1..k], "l2": [[per block] per t], "cos": [[per block] per t]}``
    (``layers`` numbers the blocks from 1, as the paper numbers layers).
    """

    def __init__(self, loss_fn, every=100, *, block_lrs=None, name="ics"):
        super().__init__(name, every, {"steps": [], "layers": [], "l2": [], "cos": []})
        self.loss_fn, self.block_lrs = loss_fn, block_lrs

    def __call__(self, step, model, x, target, optimizer):
        out = measure_ics(model, self.loss_fn, x, target, optimizer, block_lrs=self.block_lrs)
        self.records["layers"] = list(range(1, len(out["l2"]) + 1))
        self.records["steps"].append(int(step))
        self.records["l2"].append(out["l2"])
        self.records["cos"].append(out["cos"])
