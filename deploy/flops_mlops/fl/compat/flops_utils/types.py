"""The flavour names FLOps knows (``flops_utils.types.MLModelFlavor``); flops-mlops logs sklearn, pytorch, keras."""

from enum import Enum


class MLModelFlavor(str, Enum):
    SKLEARN = "sklearn"
    PYTORCH = "pytorch"
    TENSORFLOW = "tensorflow"
    KERAS = "keras"
