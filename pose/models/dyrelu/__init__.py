"""DY-ReLU (Chen et al., ECCV 2020): the formula in ``reference.py``, the fast layer beside
it in ``ops.py`` (one registered operator with native, compiled and reference backends), the
module in ``layer.py``."""
from pose.models.dyrelu.layer import DyReLU, plain_operators
from pose.models.dyrelu.settings import DyReLUSettings

__all__ = ["DyReLU", "DyReLUSettings", "plain_operators"]
