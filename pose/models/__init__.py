from pose.models.activations import ACTIVATIONS, DyReLU, make_activation
from pose.models.posenet import TopDownPoseNet, build_model

__all__ = ["ACTIVATIONS", "DyReLU", "make_activation", "TopDownPoseNet", "build_model"]
