"""Functional models against the equivalent torch.nn modules (outputs, gradients, parameter order)."""

import math

import pytest
import torch

import fastdd
from fastdd.models import build_model

CASES = [
    ("convnet", 1, (28, 28), {}),
    ("convnet", 3, (32, 32), {"width": 16}),
    ("convnet", 3, (32, 32), {"width": 16, "norm": "batchnorm"}),
    ("convnet", 3, (16, 16), {"width": 8, "depth": 2, "norm": "layernorm", "act": "sigmoid", "pool": "maxpool"}),
    ("convnet", 3, (16, 16), {"width": 8, "depth": 2, "norm": "groupnorm", "act": "swish"}),
    ("convnet", 3, (12, 12), {"width": 8, "depth": 2, "norm": "none", "act": "leakyrelu", "pool": "none"}),
    ("convnetd4bn", 3, (64, 64), {"width": 8}),
    ("lenet", 1, (28, 28), {}),
    ("lenet", 3, (32, 32), {}),
    ("alexcifarnet", 3, (32, 32), {}),
    ("vgg11", 1, (28, 28), {}),
    ("vgg11bn", 3, (32, 32), {}),
    ("mlp", 1, (28, 28), {}),
    ("resnet18bn", 3, (32, 32), {}),
    ("resnet18bn", 3, (64, 64), {}),
    ("resnet18", 3, (32, 32), {}),
    ("resnet18", 1, (28, 28), {"norm": "instancenorm"}),
]


@pytest.mark.parametrize("name,c,size,kw", CASES, ids=[f"{c[0]}-{c[1]}x{c[2][0]}-{c[3]}" for c in CASES])
def test_functional_equals_module(name, c, size, kw):
    net = build_model(name, in_channels=c, num_classes=7, im_size=size, **kw)
    mod = net.module().double().train()
    theta = net.init(torch.Generator().manual_seed(1), dtype=torch.float64).requires_grad_()
    net.load_into_module(mod, theta.detach())
    # same order, names and shapes as nn.Module.parameters()
    assert [(n, tuple(p.shape)) for n, p in mod.named_parameters()] == [(p.name, p.shape) for p in net.params]
    assert net.num_params == sum(p.numel() for p in mod.parameters())
    assert torch.equal(net.flat_from_module(mod), theta.detach())

    x = torch.randn(3, c, *size, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    y = torch.tensor([0, 3, 6])
    out_f = net(x, theta)
    out_m = mod(x)
    torch.testing.assert_close(out_f, out_m, rtol=1e-10, atol=1e-10)
    gf = torch.autograd.grad(torch.nn.functional.cross_entropy(out_f, y), theta)[0]
    torch.nn.functional.cross_entropy(out_m, y).backward()
    gm = torch.cat([p.grad.reshape(-1) for p in mod.parameters()])
    torch.testing.assert_close(gf, gm, rtol=1e-9, atol=1e-12)


def test_reference_parameter_counts():
    # Figures from the reference brief (measured on the reference ConvNet).
    assert build_model("convnet", in_channels=3, num_classes=10, im_size=(32, 32)).num_params == 320_010
    assert build_model("convnet", in_channels=3, num_classes=100, im_size=(32, 32)).num_params == 504_420
    assert build_model("convnetd4", in_channels=3, num_classes=200, im_size=(64, 64)).num_params == 857_160


def test_batchnorm_buffers_track_running_stats_like_module():
    net = build_model("convnetbn", in_channels=3, num_classes=5, im_size=(8, 8), width=4, depth=2)
    mod = net.module().double().train()
    theta = net.init(torch.Generator().manual_seed(0), dtype=torch.float64)
    bufs = net.init_buffers(dtype=torch.float64)
    net.load_into_module(mod, theta, bufs)
    g = torch.Generator().manual_seed(3)
    for _ in range(3):
        x = torch.randn(6, 3, 8, 8, dtype=torch.float64, generator=g)
        net(x, theta, bufs, train=True)
        mod(x)
    mod_bufs = torch.cat([b.reshape(-1) for n, b in mod.named_buffers() if "num_batches" not in n])
    torch.testing.assert_close(bufs, mod_bufs, rtol=1e-12, atol=1e-12)
    mod.eval()
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64, generator=g)
    torch.testing.assert_close(net(x, theta, bufs, train=False), mod(x), rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match="running"):
        net(x, theta, train=False)


def test_init_is_deterministic_and_matches_pytorch_bounds():
    net = build_model("convnet", in_channels=3, num_classes=10, im_size=(32, 32))
    a = net.init(torch.Generator().manual_seed(5))
    b = net.init(torch.Generator().manual_seed(5))
    c = net.init(torch.Generator().manual_seed(6))
    assert a.dtype == torch.float32 and a.shape == (320_010,)
    assert torch.equal(a, b) and not torch.equal(a, c)
    state = torch.get_rng_state()
    net.init(torch.Generator().manual_seed(0))
    assert torch.equal(state, torch.get_rng_state()), "init must not touch the global RNG"
    for view, p in zip(net.unflatten(a), net.params):
        if p.init in ("weight", "bias"):
            bound = 1 / math.sqrt(p.fan_in)  # kaiming_uniform(a=sqrt(5)) == U(+-1/sqrt(fan_in))
            assert view.abs().max() <= bound + 1e-7
            if view.numel() > 1000:  # uniform on [-b, b]: variance b^2/3
                assert abs(view.var().item() - bound**2 / 3) < 0.1 * bound**2 / 3
        elif p.init == "ones":
            assert torch.all(view == 1)
        else:
            assert torch.all(view == 0)


def test_xavier_init():
    net = build_model("lenet", in_channels=1, num_classes=10, im_size=(28, 28), init="xavier")
    theta = net.init(torch.Generator().manual_seed(0))
    for view, p in zip(net.unflatten(theta), net.params):
        if p.init == "bias":
            assert torch.all(view == 0)
        elif view.numel() > 2000:
            want = 2.0 / (p.fan_in + p.fan_out)
            assert abs(view.var().item() - want) < 0.15 * want


def test_embed_is_input_of_classifier():
    net = build_model("convnet", in_channels=1, num_classes=10, im_size=(28, 28), width=8)
    theta = net.init(torch.Generator().manual_seed(0))
    x = torch.randn(2, 1, 28, 28)
    f = net.embed(x, theta)
    assert f.shape == (2, net.feature_dim) == (2, 8 * 4 * 4)
    w, b = net.unflatten(theta)[-2:]
    torch.testing.assert_close(f @ w.T + b, net(x, theta))


@pytest.mark.parametrize(
    "name,size,kw,match",
    [
        ("convnet", (28, 28), {"depth": 6}, "does not fit"),
        ("lenet", (8, 8), {}, "does not fit"),
        ("vgg11", (16, 16), {}, "does not fit"),
        ("convnet", (32, 32), {"norm": "bogus"}, "norm"),
        ("nosuchnet", (32, 32), {}, "unknown model"),
    ],
)
def test_bad_model_arguments(name, size, kw, match):
    with pytest.raises(ValueError, match=match):
        build_model(name, in_channels=1, num_classes=10, im_size=size, **kw)


def test_wrong_input_and_theta_shapes():
    net = fastdd.build_model("convnet", in_channels=1, num_classes=10, im_size=(28, 28), width=8)
    theta = net.init()
    with pytest.raises(ValueError, match=r"\(B, 1, 28, 28\)"):
        net(torch.zeros(2, 3, 32, 32), theta)
    with pytest.raises(fastdd.ModelMismatchError, match="flat vector"):
        net(torch.zeros(2, 1, 28, 28), theta[:-1])
