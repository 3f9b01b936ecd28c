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
