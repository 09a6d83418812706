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
    """MAdds of one forward pass on a zero tensor of ``input_shape`` (batch included), made on
    the device of the model's parameters."""
    piecewise = [0]

    def add_pieces(module: DyReLU, _inputs, output: torch.Tensor) -> None:
        piecewise[0] += output.numel() * module.settings.k
        if module.variant == "c":
            piecewise[0] += output.numel()  # 1x1 conv C -> 1: C per position

    hooks = [m.register_forward_hook(add_pieces) for m in model.modules()
             if isinstance(m, DyReLU)]
    was_training = model.training
    model.eval()
    try:
        counter = FlopCounterMode(display=False)
        with counter, plain_operators():  # the native kernels' FCs would go uncounted
            device = next(model.parameters(), torch.zeros(())).device
            model(torch.zeros(input_shape, device=device))
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    return counter.get_total_flops() // 2 + piecewise[0]


def complexity(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, int]:
    return {"params": count_parameters(model), "madds": count_madds(model, input_shape)}


# Table 1 of the DY-ReLU paper's supplementary: MobileNetV2 x1.0 on ImageNet at 224x224, one
# activation at every non-linear position. (row, activation spec, paper #Param, paper MAdds)
TABLE1 = (
    ("ReLU", "relu", 3.5e6, 300.0e6),
    ("RReLU", "rrelu", 3.5e6, 300.0e6),
    ("LeakyReLU", "leaky_relu", 3.5e6, 300.0e6),
    ("PReLU (channel-wise)", "prelu", 3.5e6, 300.0e6),
    ("PReLU (channel-shared)", "prelu_shared", 3.5e6, 300.0e6),
    ("SE + ReLU", "se_relu", 5.1e6, 304.8e6),
    ("Maxout (K = 2)", {"name": "maxout", "k": 2}, 5.7e6, 579.1e6),
    ("Maxout (K = 3)", {"name": "maxout", "k": 3}, 7.8e6, 866.4e6),
    ("DY-ReLU-B (K = 2)", {"name": "dyrelu_b", "k": 2}, 7.5e6, 315.5e6),
    ("DY-ReLU-B (K = 3)", {"name": "dyrelu_b", "k": 3}, 9.2e6, 322.8e6),
)
TABLE1_TOLERANCE = 0.02


def table1(model_cfg, image_size: tuple[int, int]) -> list[dict]:
    """Every Table 1 row for the classifier ``model_cfg`` describes (its backbone's activation
    replaced by the row's), ours beside the paper's: {row, act, params, madds, paper_params,
    paper_madds, params_ratio, madds_ratio, within} (within: both ratios within 2%)."""
    import copy

    from pose.models import build_model

    rows = []
    for label, spec, paper_params, paper_madds in TABLE1:
        cfg = copy.deepcopy(model_cfg)
        cfg.backbone.act = spec
        ours = complexity(build_model(cfg), (1, 3, *image_size))
        ratios = ours["params"] / paper_params, ours["madds"] / paper_madds
        rows.append({"row": label, "act": spec, **ours, "paper_params": int(paper_params),
                     "paper_madds": int(paper_madds), "params_ratio": ratios[0],
                     "madds_ratio": ratios[1],
                     "within": all(abs(r - 1) <= TABLE1_TOLERANCE for r in ratios)})
    return rows
