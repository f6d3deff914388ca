"""Model builders: the paper's CIFAR VGG and deep linear network (docs/protocol.md §1).

Both take ``norm``, the normalization inserted after each weight layer (before the
ReLU in VGG): a name of :data:`minibn.nn.normalization.REGISTRY` ("standard" or None,
"batchnorm", "batchnorm_noaffine", "noisy" (BN + Algorithm 1 noise), "standard_noisy" (the noise
alone, for noise added to the standard net; also accepted as "noise"), "l1", "l2", "linf",
"layernorm", "groupnorm", "weightnorm").
A normalizer with ``reparametrize`` (WeightNorm) inserts no layer: each weight layer that a
normalization would follow is built as usual (same initial weights) and replaced by
``reparametrize(layer)`` (``WeightNorm(Dense(...))``, ``WeightNorm(Conv2d(...))``).
``num_groups`` (GroupNorm's group count: an int, a function of the channel count, or None for
:func:`minibn.nn.groupnorm.default_groups`) is passed on with the noise options.
All randomness (weights, noise generators) comes from one seed or Generator.
"""

from minibn import backend, nn
from minibn.nn import normalization

VGG_CONFIGS = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
}


def check_norm(norm):
    """The registered name of ``norm`` (None and the old "noise" accepted), or a ValueError."""
    return normalization.get(norm).name


def make_norm(norm, num_features, rng, dtype, **noise):
    """The normalization layer named ``norm`` for ``num_features`` channels (None for "standard")."""
    return normalization.get(norm).make(num_features, rng=rng, dtype=dtype, **noise)


def normalized(norm, weight_layer, num_features, rng, dtype, **noise):
    """``[weight layer, its normalization]`` for a weight layer of ``num_features`` outputs: one
    item when the normalizer inserts nothing, the weight layer reparametrized when it does that."""
    entry = normalization.get(norm)
    if entry.reparametrize is not None:
        weight_layer = entry.reparametrize(weight_layer)
    layer = entry.make(num_features, rng=rng, dtype=dtype, **noise)
    return [weight_layer] if layer is None else [weight_layer, layer]


def dln(depth=25, width=10, in_features=None, out_features=None, norm=None, norm_layers=None,
        rng=None, dtype="float64", init="glorot_uniform", **noise):
    """The deep linear network f(x) = W_depth ... W_1 x (rows are samples: y = x W_1 ... W_depth).

    ``norm_layers``: after how many of the first linear layers a normalization is
    inserted (default ``depth - 1``: all but the output layer; ``depth`` for all).
    """
    if depth < 1 or width < 1:
        raise ValueError(f"dln: depth and width must be positive, got depth={depth}, width={width}")
    norm_layers = depth - 1 if norm_layers is None else norm_layers
    if not 0 <= norm_layers <= depth:
        raise ValueError(f"dln: norm_layers must lie in [0, depth={depth}], got {norm_layers}")
    rng = backend.rng(rng)
    noise_rng = rng.spawn(1)[0]  # noise seeds apart, so every variant starts from the same weights
    d_in = width if in_features is None else in_features
    d_out = width if out_features is None else out_features
    layers = []
    for i in range(depth):
        fan_in = d_in if i == 0 else width
        fan_out = d_out if i == depth - 1 else width
        dense = nn.Dense(fan_in, fan_out, bias=False, rng=rng, dtype=dtype, init=init)
        layers += normalized(norm, dense, fan_out, noise_rng, dtype, **noise) if i < norm_layers else [dense]
    return nn.Sequential(layers)


def vgg(config="vgg16", norm=None, width=1.0, num_classes=10, in_channels=3, input_size=32,
        rng=None, dtype="float32", init="glorot_uniform", **noise):
    """The CIFAR VGG: conv3x3 (padding 1) [-> norm] -> ReLU per entry, 2x2/2 max-pool per "M",
    flatten, Dense -> ``num_classes``. ``config`` is a name in :data:`VGG_CONFIGS` or a list;
    ``width`` multiplies every channel count (at least 1 channel)."""
    stages = VGG_CONFIGS[config] if isinstance(config, str) and config in VGG_CONFIGS else config
    if isinstance(stages, str) or not stages:
        raise ValueError(f"vgg: config must be one of {sorted(VGG_CONFIGS)} or a non-empty list, got {config!r}")
    if width <= 0:
        raise ValueError(f"vgg: width must be positive, got {width}")
    rng = backend.rng(rng)
    noise_rng = rng.spawn(1)[0]  # noise seeds apart, so every variant starts from the same weights
    layers, channels, size = [], in_channels, input_size
    for entry in stages:
        if entry == "M":
            if size < 2:
                raise ValueError(f"vgg: config {stages} pools a {size}x{size} map; too many 'M' for input_size={input_size}")
            layers.append(nn.MaxPool2d(2, 2))
            size //= 2
            continue
        if not isinstance(entry, int) or entry < 1:
            raise ValueError(f"vgg: config entries must be positive ints or 'M', got {entry!r}")
        out = max(1, int(round(entry * width)))
        conv = nn.Conv2d(channels, out, 3, stride=1, padding=1, rng=rng, dtype=dtype, init=init)
        layers += normalized(norm, conv, out, noise_rng, dtype, **noise)
        layers.append(nn.ReLU())
        channels = out
    layers.append(nn.Flatten())
    layers.append(nn.Dense(channels * size * size, num_classes, rng=rng, dtype=dtype, init=init))
    return nn.Sequential(layers)
