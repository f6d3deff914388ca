"""The layer library: one layer per module, forward and backward side by side."""

from minibn.nn.layer import MODES, Layer, LayerError, Sequential
from minibn.nn.dense import Dense
from minibn.nn.conv import Conv2d
from minibn.nn.pool import MaxPool2d
from minibn.nn.relu import ReLU
from minibn.nn.flatten import Flatten
from minibn.nn.batchnorm import BatchNorm
from minibn.nn.noisy import NoiseInjection, NoisyBatchNorm
from minibn.nn.lpnorm import LpNorm
from minibn.nn.layernorm import LayerNorm
from minibn.nn.groupnorm import GroupNorm
from minibn.nn.rmsnorm import RMSNorm
from minibn.nn.weightnorm import WeightNorm
from minibn.nn.losses import check_labels, softmax_cross_entropy, squared_error
from minibn.nn.init import glorot_normal, glorot_uniform

__all__ = [
    "MODES", "Layer", "LayerError", "Sequential",
    "Dense", "Conv2d", "MaxPool2d", "ReLU", "Flatten", "BatchNorm",
    "NoisyBatchNorm", "NoiseInjection", "LpNorm", "LayerNorm", "GroupNorm", "RMSNorm", "WeightNorm",
    "check_labels", "softmax_cross_entropy", "squared_error", "glorot_normal", "glorot_uniform",
]
