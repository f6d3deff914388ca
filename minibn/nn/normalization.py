"""What every normalizer shares, and the registry of normalizers by name.

The registry is the one list the rest of minibn derives from: the models' ``norm=``
argument, the studies' accepted variants, and the figures' labels and colours. A layer
module registers its normalizer(s) when it is imported (``minibn.nn`` imports them all),
so adding a normalizer touches its module (with its :func:`register` call), its docs page
and its tests, and nothing else.

>>> from minibn import nn
>>> list(nn.normalization.REGISTRY)
['standard', 'batchnorm', 'noisy', 'standard_noisy', 'l1', 'l2', 'linf']
>>> nn.normalization.get("l2").label
'L2 norm'
"""

from typing import Callable, NamedTuple


class Normalizer(NamedTuple):
    """A registered normalization: ``make(num_features, rng=..., dtype=..., **options)``
    returns the layer to insert after a weight layer (None: insert nothing)."""

    name: str
    label: str
    color: str
    make: Callable


REGISTRY = {}

#: Old names still accepted by :func:`get` (``models.vgg(norm="noise")``).
ALIASES = {None: "standard", "noise": "standard_noisy"}


def register(name, label, color, make):
    """Add a normalizer under ``name`` (a new name; re-registering one is an error)."""
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"register: a normalizer's name must be an identifier-like string, got {name!r}")
    if name in REGISTRY or name in ALIASES:
        raise ValueError(f"register: a normalizer named {name!r} is already registered")
    REGISTRY[name] = Normalizer(name, label, color, make)
    return REGISTRY[name]


def get(name):
    """The :class:`Normalizer` registered as ``name`` (or one of its :data:`ALIASES`)."""
    key = ALIASES.get(name, name)
    if key not in REGISTRY:
        raise ValueError(f"unknown normalizer {name!r}; choose one of {tuple(REGISTRY)} "
                         f"(or None for the standard network)")
    return REGISTRY[key]


register("standard", "standard", "C0", lambda num_features, **_: None)
