"""Parameters and multiply-adds (MAdds) of a model for one input.

Convention (written in the README too): MAdds are the multiply-adds of convolutions and
linear layers (torch.utils.flop_counter's FLOPs / 2; this includes DY-ReLU's hyper-function
FCs), plus K per output element of each DY-ReLU (one multiply-add per linear piece) and, for
DY-ReLU-C, C per output position for its 1x1 spatial conv (C -> 1), which the fused layer
computes without calling a convolution operator. DY-ReLU layers run as plain operators while
counting (pose.models.dyrelu.plain_operators), so the count is the same on every path.
BatchNorm, pooling, element-wise activations, additions and upsampling are not counted, as in
the MobileNetV2 and DY-ReLU papers.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from pose.models.activations import DyReLU
from pose.models.dyrelu import plain_operators


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_madds(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """MAdds of one forward pass on a zero tensor of ``input_shape`` (batch included)."""
    piecewise = [0]

    def add_pieces(module: DyReLU, _inputs, output: torch.Tensor) -> None:
        piecewise[0] += output.numel() * module.k
        if module.variant == "c":
            piecewise[0] += output.numel()  # 1x1 conv C -> 1: C per position

    hooks = [m.register_forward_hook(add_pieces) for m in model.modules()
             if isinstance(m, DyReLU)]
    was_training = model.training
    model.eval()
    try:
        counter = FlopCounterMode(display=False)
        with counter, plain_operators():  # the native kernels' FCs would go uncounted
            model(torch.zeros(input_shape))
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    return counter.get_total_flops() // 2 + piecewise[0]


def complexity(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, int]:
    return {"params": count_parameters(model), "madds": count_madds(model, input_shape)}
