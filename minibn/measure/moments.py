"""Activation moments through training (docs/protocol.md §3, paper Fig 2, 5, 7).

For each chosen layer index l, the input h_l that layer l sees on the batch (the
forward run layer by layer in "probe" mode), and for each unit j (the last axis;
statistics pool every other axis: batch, and H, W for conv maps):

    mean_j = mean_i h_l[i, j],     var_j = mean_i (h_l[i, j] - mean_j)^2   (biased)

Between consecutive measurements t-1, t (every ``every`` steps) and from the first
measurement 0, averaged over the units of the layer:

    mean_change = avg_j |mean_j(t) - mean_j(t-1)|,   var_change = avg_j |var_j(t) - var_j(t-1)|
    mean_drift  = avg_j |mean_j(t) - mean_j(0)|,     var_drift  = avg_j |var_j(t) - var_j(0)|

For one unit per layer, drawn once from ``seed``, its signed mean and variance
(``unit_mean``, ``unit_var``, from which its signed changes and drifts follow) and
``n_samples`` of its values drawn without replacement (seeded by seed, layer and
step, so a resumed run draws the same), for ridge and violin plots. With
``per_unit=True`` every unit's mean and variance are kept as well.

``mode="train"`` runs that forward pass as a training step would (noisy BN's and the
injected noise's draws are in the distribution, as the paper's Fig 2 shows them) and puts
the model's state (running statistics, noise generators) back afterwards, so the run is
not disturbed: the draws seen are the very ones the step that follows will use.

Cost: one forward pass up to the deepest chosen layer; no backward.
"""

from minibn import backend
from minibn.measure import Recorder, json_float


def _floats(values):
    return [json_float(v) for v in backend.to_host(values).tolist()]


def _avg_abs_diff(a, b):
    return json_float(abs(a - b).mean())


def layer_inputs(model, x, layers, mode="probe"):
    """``{l: input of layer l}`` for the layer indices ``layers``, by a forward pass in ``mode``
    ("probe", or "train" with the model's state restored afterwards)."""
    if mode not in ("probe", "train"):
        raise ValueError(f"layer_inputs: mode must be 'probe' or 'train', got {mode!r}")
    wanted = set(layers)
    inputs, h = {}, x
    with model.snapshot():  # in "train" mode, also what the forward moved: running statistics, noise generators
        for index, layer in enumerate(model):
            if index in wanted:
                inputs[index] = h
            if len(inputs) == len(wanted):
                break
            h = layer.forward(h, mode)
    return inputs


class MomentsRecorder(Recorder):
    """Callback: moments of the inputs of layers ``layers`` every ``every`` steps.

    ``result()``: ``{"steps": [t], "layers": {str(l): {"unit", "mean_change", "var_change",
    "mean_drift", "var_drift", "unit_mean", "unit_var", "samples"[, "mean", "var"]}}}``,
    every list aligned with ``steps`` (the changes are ``None`` at the first measurement).
    """

    SERIES = ("mean_change", "var_change", "mean_drift", "var_drift", "unit_mean", "unit_var", "samples")

    def __init__(self, layers, every=100, n_samples=256, seed=0, *, per_unit=False, mode="probe", name="moments"):
        self.layers = [int(l) for l in layers]
        if not self.layers or min(self.layers) < 0 or len(set(self.layers)) != len(self.layers):
            raise ValueError(f"MomentsRecorder: layers must be distinct non-negative layer indices, got {layers!r}")
        if int(n_samples) != n_samples or n_samples < 1:
            raise ValueError(f"MomentsRecorder: n_samples must be a positive integer, got {n_samples!r}")
        super().__init__(name, every, {"steps": [], "layers": {}})
        self.n_samples, self.seed = int(n_samples), int(seed)
        if mode not in ("probe", "train"):
            raise ValueError(f"MomentsRecorder: mode must be 'probe' or 'train', got {mode!r}")
        self.per_unit, self.mode = per_unit, mode
        self.first, self.last = {}, {}  # host (mean, var) arrays per layer, for drifts and changes

    def _units(self, inputs):
        """One unit per layer, drawn once from the seed in the order of ``layers``."""
        rng = backend.rng(self.seed)
        return {l: int(rng.integers(inputs[l].shape[-1])) for l in self.layers}

    def __call__(self, step, model, x, target, optimizer):
        if max(self.layers) >= len(model):
            raise ValueError(f"MomentsRecorder: layer index {max(self.layers)} out of range for a model of {len(model)} layers")
        inputs = layer_inputs(model, x, self.layers, self.mode)
        series = self.records["layers"]
        if not series:
            units = self._units(inputs)
            series.update({str(l): {"unit": units[l], **{k: [] for k in self.SERIES},
                                    **({"mean": [], "var": []} if self.per_unit else {})} for l in self.layers})
        self.records["steps"].append(int(step))
        xp = backend.array_module(x)
        for l in self.layers:
            rec = series[str(l)]
            h = inputs[l].reshape(-1, inputs[l].shape[-1])
            mean = h.mean(axis=0)
            var = ((h - mean) ** 2).mean(axis=0)
            mean_h, var_h = backend.to_host(mean).astype("float64"), backend.to_host(var).astype("float64")
            first = self.first.setdefault(l, (mean_h, var_h))
            last = self.last.get(l)
            rec["mean_change"].append(None if last is None else _avg_abs_diff(mean_h, last[0]))
            rec["var_change"].append(None if last is None else _avg_abs_diff(var_h, last[1]))
            rec["mean_drift"].append(_avg_abs_diff(mean_h, first[0]))
            rec["var_drift"].append(_avg_abs_diff(var_h, first[1]))
            self.last[l] = (mean_h, var_h)
            unit = rec["unit"]
            rec["unit_mean"].append(json_float(mean_h[unit]))
            rec["unit_var"].append(json_float(var_h[unit]))
            values = h[:, unit]
            if values.shape[0] > self.n_samples:
                pick = backend.rng([self.seed, l, int(step)]).choice(values.shape[0], self.n_samples, replace=False)
                values = values[xp.asarray(pick)]
            rec["samples"].append(_floats(values))
            if self.per_unit:
                rec["mean"].append(_floats(mean_h))
                rec["var"].append(_floats(var_h))

    # the state adds the host moments behind the changes and drifts to the records
    def state(self):
        return {"result": self.result(),
                "first": {str(l): list(v) for l, v in self.first.items()},
                "last": {str(l): list(v) for l, v in self.last.items()}}

    def load_state(self, state):
        super().load_state(state["result"])
        host = backend.host
        self.first = {int(l): tuple(host.asarray(a, dtype="float64") for a in v) for l, v in state["first"].items()}
        self.last = {int(l): tuple(host.asarray(a, dtype="float64") for a in v) for l, v in state["last"].items()}
