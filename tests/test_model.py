import pytest
import torch

from gliofed.model import HEADS, MultiTaskUNet


def test_default_is_the_seed_network():
    net = MultiTaskUNet()
    assert sum(p.numel() for p in net.parameters()) == 1_395_645
    assert [net.conv_0.conv_0.conv.out_channels, net.down_1.convs.conv_0.conv.out_channels,
            net.down_2.convs.conv_0.conv.out_channels, net.down_3.convs.conv_0.conv.out_channels] == [16, 32, 64, 128]
    assert net.down_1.pool.kernel_size == (1, 2, 2)
    assert HEADS == {"idh": 2, "codeletion": 2, "mgmt": 2, "grade": 3}


@pytest.mark.parametrize("shape", [(7, 8, 9), (5, 33, 40), (1, 16, 16)])
def test_any_depth_and_odd_inplane_sizes_keep_the_input_shape(shape):
    net = MultiTaskUNet(features=(4, 8, 16, 32), hidden=8).eval()
    out = net(torch.randn(2, 4, *shape), return_features=True)
    assert out["seg"].shape == (2, 4, *shape)
    expected = {"idh": (2, 2), "codeletion": (2, 2), "mgmt": (2, 2), "grade": (2, 3)}
    assert {k: tuple(out[k].shape) for k in HEADS} == expected
    assert out["bottleneck"].shape == (2, 32) and out["decoder"].shape == (2, 4, *shape)


def test_configurable_channels_and_pooling():
    net = MultiTaskUNet(in_channels=2, features=(8, 16, 32, 64), pool=(2, 2, 2), norm="instance")
    out = net(torch.randn(1, 2, 8, 16, 16))
    assert out["seg"].shape == (1, 4, 8, 16, 16)


def test_channels_last_and_bf16_autocast_match_fp32():
    torch.manual_seed(0)
    net = MultiTaskUNet(features=(4, 8, 16, 32), hidden=8).eval()
    x = torch.randn(1, 4, 3, 16, 16)
    reference = net(x)["seg"]
    cl = net.to(memory_format=torch.channels_last_3d)(x.contiguous(memory_format=torch.channels_last_3d))["seg"]
    torch.testing.assert_close(cl, reference, atol=1e-4, rtol=1e-4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = net(x)["seg"]
    assert low.dtype == torch.bfloat16 and torch.allclose(low.float(), reference, atol=0.1)


def test_wrong_number_of_stages_is_refused():
    with pytest.raises(ValueError, match="four stage widths"):
        MultiTaskUNet(features=(8, 16, 32))


def test_group_norm_option_replaces_every_batchnorm_and_keeps_the_parameter_count_close():
    batch, group = MultiTaskUNet(), MultiTaskUNet(norm="group")
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in group.modules())
    norms = [m for m in group.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert len(norms) == 14 and {m.num_groups for m in norms} == {8}
    # GroupNorm has the same affine parameters as BatchNorm, and no running statistics
    assert sum(p.numel() for p in group.parameters()) == sum(p.numel() for p in batch.parameters())
    assert not any("running_" in key for key in group.state_dict())
    assert group.config["norm"] == "group" and batch.config["norm"] == "batch"


def test_group_norm_groups_divide_small_widths_and_the_model_rebuilds_from_its_config():
    from gliofed.model import build_model

    net = MultiTaskUNet(features=(4, 8, 16, 32), hidden=8, norm="group")
    assert {m.num_groups for m in net.modules() if isinstance(m, torch.nn.GroupNorm)} == {4}
    twin = build_model(net.config)
    twin.load_state_dict(net.state_dict())
    x = torch.randn(2, 4, 3, 9, 8)
    torch.testing.assert_close(twin.eval()(x)["seg"], net.eval()(x)["seg"])


def test_group_norm_output_of_a_case_does_not_depend_on_its_batch():
    torch.manual_seed(0)
    net = MultiTaskUNet(features=(4, 8, 16, 32), hidden=8, norm="group").eval()  # eval: dropout off
    x = torch.randn(3, 4, 3, 8, 8)
    torch.testing.assert_close(net(x[:1])["seg"], net(x)["seg"][:1], atol=1e-5, rtol=1e-5)
    batch_norm = MultiTaskUNet(features=(4, 8, 16, 32), hidden=8).train()  # train-mode BatchNorm mixes cases
    assert not torch.allclose(batch_norm(x[:2])["seg"][:1], batch_norm(x)["seg"][:1], atol=1e-3)


def _kernels(net, x) -> set[str]:
    from torch.profiler import ProfilerActivity, profile

    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU]) as prof:
        net(x)
    return {event.key for event in prof.key_averages()}


def test_a_single_small_cpu_volume_takes_onednn_convolutions_with_the_same_outputs_and_gradients(monkeypatch):
    from gliofed.model import OneDNNConv3d

    torch.manual_seed(0)
    net = MultiTaskUNet(features=(4, 8, 16, 32), hidden=8).eval()
    convs = [layer for layer in net.modules() if isinstance(layer, torch.nn.Conv3d)
             and not isinstance(layer, torch.nn.ConvTranspose3d)]
    assert len(convs) == 15 and all(type(layer) is OneDNNConv3d for layer in convs)
    import copy

    from gliofed.model import plain_convolutions

    plain = plain_convolutions(copy.deepcopy(net))
    assert not any(isinstance(layer, OneDNNConv3d) for layer in plain.modules())
    assert list(net.state_dict()) == list(plain.state_dict())  # checkpoints load either way
    x = torch.randn(1, 4, 6, 24, 24)  # batch 1, small: PyTorch's size rule alone would pick slow_conv3d
    kernels = _kernels(net, x)
    assert "aten::mkldnn_convolution" in kernels and "aten::slow_conv3d_forward" not in kernels

    fast_in = x.clone().requires_grad_(True)
    fast = net(fast_in)
    (fast["seg"].square().mean() + fast["idh"].sum()).backward()
    fast_grads = [None if p.grad is None else p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    monkeypatch.setattr(torch.backends.mkldnn, "enabled", False)  # the generic kernel, as PyTorch's rule picks it
    assert "aten::slow_conv3d_forward" in _kernels(net, x)
    slow_in = x.clone().requires_grad_(True)
    slow = net(slow_in)
    (slow["seg"].square().mean() + slow["idh"].sum()).backward()
    monkeypatch.undo()
    assert torch.backends.mkldnn.enabled
    for name in ("seg", *HEADS):
        torch.testing.assert_close(fast[name], slow[name], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(fast_in.grad, slow_in.grad, atol=1e-6, rtol=1e-4)
    compared = [(mine, p.grad) for mine, p in zip(fast_grads, net.parameters()) if p.grad is not None]
    assert len(compared) > 10 and all(mine is not None for mine, _ in compared)
    for mine, reference in compared:
        torch.testing.assert_close(mine, reference, atol=1e-5, rtol=1e-4)


def test_onednn_convolutions_leave_compile_unbatched_inputs_and_autocast_as_pytorch_has_them():
    from gliofed.model import OneDNNConv3d

    torch.manual_seed(0)
    net = MultiTaskUNet(features=(4, 8, 16, 32), hidden=8).eval()
    x = torch.randn(1, 4, 3, 16, 16)
    with torch.no_grad():
        eager = net(x)["seg"]
        compiled = torch.compile(net, backend="eager")(x)["seg"]  # traces the plain convolution
    torch.testing.assert_close(compiled, eager, atol=1e-5, rtol=1e-4)
    conv = net.conv_0.conv_0.conv
    assert type(conv) is OneDNNConv3d
    single = torch.randn(4, 3, 8, 8)  # unbatched (C, D, H, W), as torch.nn.Conv3d accepts it
    torch.testing.assert_close(conv(single), conv(single[None])[0], atol=1e-5, rtol=1e-4)
