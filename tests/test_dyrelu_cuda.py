"""DY-ReLU on CUDA: every backend CUDA runs (compiled, reference) against the reference in
float64 on the CPU, and bfloat16 autocast against float32. Run on a GPU machine by
benchmarks/gpu_check.py; skipped where there is no GPU."""
import pytest
import torch

from pose.models.dyrelu import DyReLU, ops, reference

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

CASES = [("a", "coefficient"), ("b", "coefficient"), ("c", "coefficient"), ("c", "residual")]


def randomised(module: DyReLU) -> DyReLU:
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0.0, 1.0)
    return module


@pytest.mark.parametrize("backend", ["compiled", "reference"])
@pytest.mark.parametrize("variant,spatial", CASES)
@pytest.mark.parametrize("k", [1, 2, 3])
def test_cuda_float32_agrees_with_the_float64_reference(backend, variant, spatial, k):
    torch.manual_seed(0)
    module = randomised(DyReLU(16, variant=variant, k=k, reduction=4, spatial=spatial,
                               backend=backend))
    x = torch.randn(4, 16, 12, 9, dtype=torch.float64, requires_grad=True)
    grad = torch.randn_like(x)
    cpu = module.double()
    params = [x, *cpu.parameters()]
    expected_y = reference.dyrelu(x, *cpu._weights(), cpu.settings)
    expected = torch.autograd.grad(expected_y, params, grad)
    gpu = module.float().cuda()
    x_gpu = x.detach().float().cuda().requires_grad_()
    y = gpu(x_gpu)
    actual = torch.autograd.grad(y, [x_gpu, *gpu.parameters()], grad.float().cuda())
    assert gpu._backends[(x_gpu.device, torch.float32, torch.float32)] == backend
    torch.testing.assert_close(y.double().cpu(), expected_y, rtol=1e-4, atol=1e-4)
    for e, a in zip(expected, actual):
        torch.testing.assert_close(a.double().cpu(), e, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("variant,spatial", CASES)
def test_cuda_bf16_autocast_is_close_to_float32(variant, spatial):
    # Tolerance: bfloat16 keeps 8 bits of mantissa (relative step 2^-8 = 0.4%); outputs within
    # atol 0.1 / rtol 0.05 of float32, as on the CPU. Near a kink bf16 rounding can pick the
    # other piece, so at most 1% of the input gradient may differ more.
    torch.manual_seed(1)
    module = randomised(DyReLU(32, variant=variant, reduction=4, spatial=spatial)).cuda()
    x = torch.randn(8, 32, 16, 12, device="cuda", requires_grad=True)
    reference_y = module(x)
    reference_y.sum().backward()
    reference_grad, x.grad = x.grad.clone(), None
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y = module(x.to(torch.bfloat16))
    y.float().sum().backward()
    assert y.dtype == torch.bfloat16
    assert module._backends[(x.device, torch.bfloat16, torch.float32)] == "compiled"
    torch.testing.assert_close(y.float(), reference_y, atol=0.1, rtol=0.05)
    flipped = ~torch.isclose(x.grad, reference_grad, atol=0.1, rtol=0.05)
    assert flipped.float().mean() < 0.01


def test_native_asked_for_on_cuda_warns_and_uses_the_compiled_backend():
    ops.resolve.cache_clear()
    module = DyReLU(8, backend="native").cuda()
    with pytest.warns(UserWarning, match="serves float32/float64 on the CPU only"):
        module(torch.randn(2, 8, 4, 4, device="cuda"))
    assert module._backends[(torch.device("cuda", 0), torch.float32, torch.float32)] \
        == "compiled"
