"""The training loop: steps, callbacks, evaluation, divergence, checkpoints, resume.

It knows nothing of the instruments; studies attach them as callbacks. Step t
(t = 0 .. steps-1) does, in this order:

1. ``x, target = stream.next()``;
2. every callback with ``t % every == 0`` (and every callback at the last step
   t = steps-1) is called as ``callback(t, model, x, target, optimizer)``: it sees
   w_t and the batch of step t, before the update;
3. ``loss_t = L(w_t; x, target)`` and the gradients, in ``mode`` ("train");
   a NaN or infinite loss (or one above ``diverge_above``, where given) ends the run
   here with ``diverged_at = t`` (no update, no exception). On CuPy the loss stays on
   the device and is read on logging steps only (t % log_every == 0, and the last), so
   divergence is caught at the first logging step whose loss is bad (the parameters went
   on updating since); with ``log_every=1`` that is t itself, as on NumPy;
4. ``optimizer.step()``: w_{t+1}. After it, s = t + 1 updates are done, and
   ``evaluate(model, s)`` runs when s is a multiple of ``eval_every`` (also at s = 0,
   before training) and once at the end; a checkpoint is written when s is a multiple
   of ``checkpoint_every``, and at the end.

Protocols:

* stream: ``next() -> (x, target)``, ``state() -> dict``, ``load_state(dict)``;
* callback: ``name``, ``every``, ``__call__(step, model, x, target, optimizer)``,
  ``result() -> dict`` (JSON-able), ``state()``, ``load_state(state)``; it must leave
  parameters, gradients' effect, normalization state and RNG states untouched, and
  tolerate non-finite values (a diverging run calls it too);
* ``evaluate(model, step) -> {metric: float}``, ``step`` the number of updates done.

A checkpoint is one ``.npz`` file, written to a temporary name and moved into place
with ``os.replace``, so an interrupted write never leaves a half checkpoint: the flat
parameters (host), ``model.state()`` (running statistics, noise generators),
``optimizer.state()``, ``stream.state()``, each callback's ``state()``, the results so
far and the step; arrays are npz entries and everything else is one JSON text stored
in the entry ``__meta__``. ``resume=True`` continues from it; on NumPy the resumed run
ends bit-identical to an uninterrupted one (same results, same parameters).

The results (JSON-able; NaN/inf stored as ``None``), documented in docs/instruments.md:
``{"steps": [t], "loss": [loss_t], "diverged_at": t or None, "eval_steps": [s],
"eval": {metric: [value]}, "callbacks": {name: result()}, "wall_s": seconds}``.
"""

import json
import math
import os
import sys
import time

from minibn import backend, io

FORMAT = "minibn-checkpoint-1"
CHECKPOINT_KEYS = {"format", "step", "num_params", "params", "model", "optimizer", "stream", "callbacks", "results",
                   "wall_s"}


class FullBatch:
    """The stream of full-batch gradient descent: always the same ``(x, target)``."""

    def __init__(self, x, target):
        self.x, self.target = x, target

    def next(self):
        return self.x, self.target

    def state(self):
        return {}

    def load_state(self, state):
        pass


class MiniBatches:
    """Seeded shuffled minibatches of ``(x, target)`` rows, epoch after epoch.

    Epoch e visits the rows in the order ``rng([seed, e]).permutation(n)`` and yields
    ``n // batch_size`` full batches (the remainder is dropped: every batch has the same
    size, as BatchNorm's statistics expect). Batches come out on the array module of ``x``
    (move ``x`` and ``target`` to the device first; the epoch's order then goes there once,
    at its first batch). The state is ``{seed, epoch,
    position}`` (position: batches already taken from epoch ``epoch``): each epoch's order
    follows from it, so a stream resumed from its state yields exactly the batches the
    uninterrupted one would have.
    """

    def __init__(self, x, target, batch_size, seed=0):
        if len(x) != len(target):
            raise ValueError(f"MiniBatches: x has {len(x)} rows but target has {len(target)}")
        if isinstance(batch_size, bool) or int(batch_size) != batch_size or not 1 <= batch_size <= len(x):
            raise ValueError(f"MiniBatches: batch_size must be an integer in [1, {len(x)}], got {batch_size!r}")
        self.x, self.target, self.batch_size, self.seed = x, target, int(batch_size), int(seed)
        self.epoch, self.position, self.order = 0, 0, None

    @property
    def batches_per_epoch(self):
        return len(self.x) // self.batch_size

    def next(self):
        if self.position >= self.batches_per_epoch:
            self.epoch, self.position, self.order = self.epoch + 1, 0, None
        if self.order is None:  # one host-to-device copy of the order per epoch, none per batch
            order = backend.rng([self.seed, self.epoch]).permutation(len(self.x))
            self.order = backend.to_device(order, backend.array_module(self.x))
        start = self.position * self.batch_size
        rows = self.order[start:start + self.batch_size]
        self.position += 1
        return self.x[rows], self.target[rows]

    def state(self):
        return {"seed": self.seed, "epoch": self.epoch, "position": self.position}

    def load_state(self, state):
        if int(state["seed"]) != self.seed:
            raise ValueError(f"MiniBatches.load_state: the state was saved with seed {state['seed']}, "
                             f"this stream has {self.seed}")
        self.epoch, self.position, self.order = int(state["epoch"]), int(state["position"]), None


# --- checkpoints -----------------------------------------------------------------

#: A list of at least this many plain floats goes into the archive as one binary run of float64
#: (exact: a Python float is a float64) instead of JSON text: the instruments' records hold
#: long ones (the DLN's activation samples, 500,000 numbers by the end of a run), whose
#: JSON took 0.7 s per checkpoint.
FLOAT_RUN = 32


def _pack(obj, arrays, where, floats):
    """JSON-able copy of ``obj`` with every array moved into ``arrays`` (host) and referenced,
    and every long list of floats appended to the list ``floats`` and referenced by its span there."""
    if isinstance(obj, dict):
        return {str(k): _pack(v, arrays, f"{where}/{k}", floats) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        if len(obj) >= FLOAT_RUN and all(type(v) is float for v in obj):
            start = len(floats)
            floats.extend(obj)
            return {"__floats__": [start, len(obj)]}
        return [_pack(v, arrays, f"{where}/{i}", floats) for i, v in enumerate(obj)]
    if isinstance(obj, backend.host.generic):
        return obj.item()
    if hasattr(obj, "shape") and hasattr(obj, "dtype"):
        key = f"a{len(arrays)}"
        arrays[key] = backend.to_host(obj)
        return {"__array__": key}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"train: cannot checkpoint a {type(obj).__name__} (at {where or '/'})")


def _unpack(obj, arrays):
    if isinstance(obj, dict):
        if set(obj) == {"__array__"}:
            return arrays[obj["__array__"]]
        if set(obj) == {"__floats__"}:
            start, length = obj["__floats__"]
            return arrays["__floats__"][start:start + length].tolist()
        return {k: _unpack(v, arrays) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_unpack(v, arrays) for v in obj]
    return obj


def save_checkpoint(path, payload):
    """Write ``payload`` (dicts, lists, scalars, arrays) to ``path`` atomically (creating its folder)."""
    arrays, floats = {}, []
    meta = json.dumps(_pack(payload, arrays, "", floats))
    arrays["__meta__"] = backend.host.frombuffer(meta.encode("utf-8"), dtype=backend.host.uint8)
    if floats:
        arrays["__floats__"] = backend.host.array(floats, dtype=backend.host.float64)
    io.write_npz(path, **arrays)


def load_checkpoint(path):
    """The payload written by :func:`save_checkpoint` (arrays come back as host arrays);
    :class:`minibn.io.DamagedFile` naming ``path`` when it cannot be read back."""
    import zipfile
    import zlib

    try:
        with backend.host.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
        meta = json.loads(arrays.pop("__meta__").tobytes().decode("utf-8"))
        return _unpack(meta, arrays)
    # what a cut-short or overwritten file raises: NumPy's pickle refusal is a ValueError
    except (zipfile.BadZipFile, zlib.error, EOFError, ValueError, KeyError, AttributeError) as err:
        # NumPy takes bytes that are no archive for a pickle, and its message suggests loading it unsafely
        why = "not an .npz archive" if "pickle" in str(err) else f"{type(err).__name__}: {err}"
        raise io.DamagedFile(f"checkpoint {path} is damaged ({why})") from None


# --- the loop --------------------------------------------------------------------

def _progress_bar(progress, total, initial):
    from tqdm import tqdm

    options = progress if isinstance(progress, dict) else {"desc": progress} if isinstance(progress, str) else {}
    enabled = sys.stderr.isatty() if progress is None or options else bool(progress)
    return tqdm(total=total, initial=initial, disable=not enabled, file=sys.stderr, dynamic_ncols=True, **options)


def _check_positive(arg, value, allow_none=True):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or int(value) != value or value < 1:
        raise ValueError(f"train: {arg} must be a positive integer, got {value!r}")
    return int(value)


def train(model, loss_fn, stream, optimizer, steps, *, callbacks=(), evaluate=None, eval_every=None,
          log_every=1, checkpoint=None, checkpoint_every=None, resume=False, progress=None, mode="train",
          diverge_above=None):
    """Train ``model`` for ``steps`` updates; see the module docstring. Returns the results dict.

    ``loss_fn(out, target) -> (loss, dout)``; ``progress``: None (a bar when stderr is a
    terminal), a string (the bar's label, same rule), a dict of tqdm options (``desc``,
    ``position``, ...; same rule), True or False (force). With
    ``resume=True`` and an existing ``checkpoint`` file, the run continues from it (a
    finished or diverged run just returns its results); the callbacks must be the same.
    """
    if isinstance(steps, bool) or int(steps) != steps or steps < 0:
        raise ValueError(f"train: steps must be a non-negative integer, got {steps!r}")
    steps = int(steps)
    eval_every, log_every = _check_positive("eval_every", eval_every), _check_positive("log_every", log_every, False)
    checkpoint_every = _check_positive("checkpoint_every", checkpoint_every)
    if (checkpoint_every or resume) and checkpoint is None:
        raise ValueError("train: checkpoint_every and resume need a checkpoint path")
    callbacks = list(callbacks)
    names = [cb.name for cb in callbacks]
    if len(set(names)) != len(names):
        raise ValueError(f"train: callback names must be unique, got {names}")
    for cb in callbacks:
        _check_positive(f"callback {cb.name!r}.every", cb.every, False)

    results = {"steps": [], "loss": [], "diverged_at": None, "eval_steps": [], "eval": {}}
    start, wall_before, done = 0, 0.0, False
    if resume and os.path.exists(checkpoint):
        saved = load_checkpoint(checkpoint)
        missing = CHECKPOINT_KEYS - set(saved) if isinstance(saved, dict) else CHECKPOINT_KEYS
        if missing:
            raise io.DamagedFile(f"checkpoint {checkpoint} is damaged (it lacks {sorted(missing)})")
        if saved.get("format") != FORMAT or saved["num_params"] != model.num_params:
            raise ValueError(f"train: checkpoint {checkpoint} does not match this model "
                             f"({saved.get('num_params')} parameters saved, {model.num_params} here)")
        if sorted(saved["callbacks"]) != sorted(names):
            raise ValueError(f"train: checkpoint {checkpoint} was written with callbacks {sorted(saved['callbacks'])}, "
                             f"resumed with {sorted(names)}")
        xp = model.xp
        model.set_flat_params(backend.to_device(saved["params"], xp))
        model.load_state(saved["model"])
        optimizer.load_state(saved["optimizer"])
        stream.load_state(saved["stream"])
        for cb in callbacks:
            cb.load_state(saved["callbacks"][cb.name])
        results, start, wall_before = saved["results"], saved["step"], saved["wall_s"]
        done = results["diverged_at"] is not None or start >= steps

    t0 = time.perf_counter()

    def run_evaluate(s):
        results["eval_steps"].append(s)
        for metric, value in evaluate(model, s).items():
            results["eval"].setdefault(metric, []).append(io.json_float(value))

    def write_checkpoint(s):
        save_checkpoint(checkpoint, {
            "format": FORMAT, "step": s, "steps": steps, "num_params": model.num_params,
            "params": backend.to_host(model.flat_params()), "model": model.state(),
            "optimizer": optimizer.state(), "stream": stream.state(),
            "callbacks": {cb.name: cb.state() for cb in callbacks}, "results": results,
            "wall_s": wall_before + time.perf_counter() - t0})

    s = start
    if not done:
        if start == 0 and evaluate is not None and eval_every:
            run_evaluate(0)
        bar = _progress_bar(progress, steps, start)
        try:
            for t in range(start, steps):
                x, target = stream.next()
                last = t == steps - 1
                for cb in callbacks:
                    if t % cb.every == 0 or last:
                        cb(t, model, x, target, optimizer)
                loss = model.value_and_grad(loss_fn, x, target, mode=mode)
                # A loss on the GPU is read (a transfer that waits for the step) on logging steps only.
                read = t % log_every == 0 or last or backend.array_module(loss) is backend.host
                loss = float(loss) if read else None
                healthy = loss is None or (math.isfinite(loss) and (diverge_above is None or loss <= diverge_above))
                if t % log_every == 0 or last or not healthy:
                    results["steps"].append(t)
                    results["loss"].append(io.json_float(loss))
                if not healthy:
                    results["diverged_at"] = t
                    break
                optimizer.step()
                s = t + 1
                bar.update(1)
                if t % log_every == 0:
                    bar.set_postfix(loss=f"{loss:.4g}", refresh=False)
                if evaluate is not None and eval_every and s % eval_every == 0:
                    run_evaluate(s)
                if checkpoint_every and s % checkpoint_every == 0 and s < steps:
                    write_checkpoint(s)
        finally:
            bar.close()
        if evaluate is not None and (not results["eval_steps"] or results["eval_steps"][-1] != s):
            run_evaluate(s)
        if checkpoint is not None:
            write_checkpoint(s)

    out = dict(results)
    out["callbacks"] = {cb.name: cb.result() for cb in callbacks}
    out["wall_s"] = wall_before + (time.perf_counter() - t0 if not done else 0.0)
    return out
