"""pose.models.convert: DY-ReLU in torchvision's (and a user's own) networks, one layer per
activation call site."""
import collections

import pytest
import torch
import torchvision
from torch import nn

from pose.complexity import count_madds, count_parameters
from pose.config import ModelConfig
from pose.models import build_model
from pose.models.convert import ConversionError, convert
from pose.models.dyrelu import DyReLU, reference


def dyrelu_layers(model):
    return [m for m in model.modules() if isinstance(m, DyReLU)]


def activation_calls(model, kinds=(nn.ReLU, nn.ReLU6), example=None):
    """How often activation modules of ``kinds`` are called in one forward (forward hooks)."""
    calls = collections.Counter()
    hooks = [m.register_forward_hook(lambda m, i, o: calls.update([type(m).__name__]))
             for m in model.modules() if isinstance(m, kinds)]
    with torch.no_grad():
        model.eval()(example)
    for hook in hooks:
        hook.remove()
    return calls


def test_resnet18_gets_one_layer_per_call_site_of_its_shared_relu():
    torch.manual_seed(0)
    example = torch.randn(1, 3, 224, 224)
    original = torchvision.models.resnet18()
    assert activation_calls(original, example=example)["ReLU"] == 17  # 9 modules, 17 calls
    model = convert(original, "dyrelu_b", example)
    layers = dyrelu_layers(model)
    channels = collections.Counter(layer.channels for layer in layers)
    assert channels == {64: 5, 128: 4, 256: 4, 512: 4}
    assert all(layer.variant == "b" for layer in layers)
    assert not activation_calls(model, example=example)  # no ReLU call left
    assert not [n for n in model.graph.nodes
                if n.op in ("call_function", "call_method") and "relu" in str(n.target)]
    model.train()
    images = torch.randn(2, 3, 64, 64, requires_grad=True)
    model(images).square().mean().backward()
    assert images.grad is not None and all(layer.fc1.weight.grad is not None for layer in layers)
    report = model.conversion
    assert len(report.replaced) == 17 and not report.kept
    assert {site.path for site in report.replaced} >= {"relu", "layer1.0.relu"}


def test_each_converted_layer_computes_the_dyrelu_formula():
    torch.manual_seed(0)
    model = convert(torchvision.models.resnet18(), {"name": "dyrelu_c", "k": 3},
                    torch.randn(1, 3, 64, 64)).eval()
    inputs = {}

    def keep(module, args, output):
        inputs[module] = (args[0], output)

    hooks = [m.register_forward_hook(keep) for m in dyrelu_layers(model)]
    with torch.no_grad():
        model(torch.randn(2, 3, 64, 64))
    for hook in hooks:
        hook.remove()
    assert len(inputs) == 17
    for layer, (x, y) in inputs.items():
        expected = reference.dyrelu(x.double(), *(None if w is None else w.double()
                                                  for w in layer._weights()), layer.settings)
        torch.testing.assert_close(y.double(), expected, rtol=1e-4, atol=1e-5)


def test_mobilenet_v2_matches_our_own_dyrelu_b_classifier_in_parameters():
    example = torch.randn(1, 3, 224, 224)
    model = convert(torchvision.models.mobilenet_v2(), {"name": "dyrelu_b", "k": 2}, example)
    assert len(dyrelu_layers(model)) == 35  # every ReLU6 call site
    cfg = ModelConfig(type="classifier")
    cfg.backbone.width_mult, cfg.backbone.act = 1.0, "dyrelu_b"
    ours = build_model(cfg)
    # both are Table 1's DY-ReLU-B row (7.5M in the paper)
    assert count_parameters(model) == pytest.approx(count_parameters(ours), rel=0.005)


def test_mobilenet_v3_small_keeps_hardswish_unless_asked():
    example = torch.randn(1, 3, 96, 96)
    calls = activation_calls(torchvision.models.mobilenet_v3_small(), (nn.ReLU, nn.Hardswish),
                             example)
    model = convert(torchvision.models.mobilenet_v3_small(), "dyrelu_a", example)
    left = activation_calls(model, (nn.ReLU, nn.Hardswish), example)
    assert left == {"Hardswish": calls["Hardswish"]}
    assert len(dyrelu_layers(model)) == calls["ReLU"]
    both = convert(torchvision.models.mobilenet_v3_small(), "dyrelu_a", example,
                   include=("relu", "hardswish"))
    # the classifier's Hardswish runs on (N, 1024): kept, and reported
    kept = [(site.kind, why) for site, why in both.conversion.kept]
    assert kept == [("hardswish", "input (1, 1024) is not (N, C, H, W)")]
    assert len(dyrelu_layers(both)) == calls["ReLU"] + calls["Hardswish"] - 1


class FunctionalNet(nn.Module):
    """A user's model that calls relu as functions and a method, and has its own block."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 16, 3, padding=1)
        self.head = nn.Sequential(nn.Conv2d(16, 4, 1), nn.ReLU())
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        x = torch.nn.functional.relu(self.conv1(x))
        x = torch.relu(self.conv2(x)) + self.conv2(x).relu()
        x = self.head(x).mean((2, 3))
        return self.fc(torch.relu(x))  # (N, 4): not a feature map


def test_functional_calls_are_call_sites_and_exclusions_are_the_users():
    example = torch.randn(2, 3, 16, 16)
    model = convert(FunctionalNet(), "dyrelu_b", example)
    assert sorted(layer.channels for layer in dyrelu_layers(model)) == [4, 8, 16, 16]
    assert [why for _, why in model.conversion.kept] == ["input (2, 4) is not (N, C, H, W)"]
    model(example).sum().backward()
    by_name = convert(FunctionalNet(), "dyrelu_b", example, exclude=["head.*"])
    assert sorted(layer.channels for layer in dyrelu_layers(by_name)) == [8, 16, 16]
    by_type = convert(FunctionalNet(), "prelu", example, exclude=[nn.Sequential])
    assert sorted(m.num_parameters for m in by_type.modules()
                  if isinstance(m, nn.PReLU)) == [8, 16, 16]


def test_the_report_adds_what_the_per_layer_formula_says():
    example = torch.randn(1, 3, 32, 32)
    model = convert(FunctionalNet(), {"name": "dyrelu_c", "k": 2}, example)
    report = model.conversion
    assert report.before == {"params": count_parameters(FunctionalNet()),
                             "madds": count_madds(FunctionalNet(), example.shape)}
    params = madds = 0
    for site in report.replaced:
        c, h, w = site.shape[1:]
        hidden = max(c // 13, 1)
        params += (c * hidden + hidden) + (hidden * c * 2 * 2 + c * 2 * 2) + (c + 1)
        # hyper-function FCs, K per output element, the C -> 1 spatial conv per position
        madds += c * hidden + hidden * c * 2 * 2 + 2 * c * h * w + c * h * w
    assert report.after["params"] - report.before["params"] == params
    assert report.after["madds"] - report.before["madds"] == madds
    text = str(report)
    assert text.startswith("4 call sites replaced by {'name': 'dyrelu_c', 'k': 2}, 1 kept")
    assert "| conv1 |" not in text and "| head.1 | relu | 4 | act_head_1 |" in text


def test_an_untraceable_model_is_one_error_naming_the_part():
    class DataDependent(nn.Module):
        def forward(self, x):
            return torch.relu(x) if x.sum() > 0 else x

    class Outer(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem, self.block = nn.Conv2d(3, 3, 1), DataDependent()

        def forward(self, x):
            return self.block(self.stem(x))

    with pytest.raises(ConversionError, match=r"cannot trace Outer: it failed in module "
                                              r"'block' \(DataDependent\)"):
        convert(Outer(), "dyrelu_b", torch.randn(1, 3, 8, 8))
    with pytest.raises(ConversionError, match="unknown activation kind.*'gelu'"):
        convert(Outer(), "dyrelu_b", torch.randn(1, 3, 8, 8), include=("gelu",))


@pytest.mark.slow(seconds=40)
def test_converted_resnet18_exports_to_onnx_and_agrees(tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    model = convert(torchvision.models.resnet18(), "dyrelu_b", torch.randn(1, 3, 64, 64)).eval()
    example = torch.randn(1, 3, 64, 64)
    path = tmp_path / "resnet18_dyrelu.onnx"
    torch.onnx.export(model, (example,), str(path), dynamo=True, verbose=False)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    ours = session.run(None, {name: example.numpy()})[0]
    with torch.no_grad():
        expected = model(example).numpy()
    assert abs(ours - expected).max() <= 1e-4


@pytest.mark.slow(seconds=60)
@pytest.mark.compiled_backend
def test_converted_model_runs_under_torch_compile():
    torch.manual_seed(0)
    model = convert(FunctionalNet(), "dyrelu_b", torch.randn(2, 3, 16, 16)).eval()
    example = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(torch.compile(model)(example), model(example),
                                   rtol=1e-4, atol=1e-5)


def test_timm_models_convert_when_timm_is_installed():
    timm = pytest.importorskip("timm")
    example = torch.randn(1, 3, 64, 64)
    model = convert(timm.create_model("resnet18", pretrained=False), "dyrelu_b", example)
    assert len(dyrelu_layers(model)) == 17
    model(example).sum().backward()
