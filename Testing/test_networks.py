"""Networks: the paper's layer shapes and channel counts, parameter count, identity at initialisation."""

from __future__ import annotations

import torch
from single_thread import one_thread  # noqa: F401  (autouse)
from torch import nn

from TotalRegistratorLib.learned.networks import AffineNet, UNet, count_parameters


def test_unet_layers_match_the_paper():
    net = UNet()
    assert count_parameters(net) == 255_949, "DESIGN.md's measured size of one deformable block"
    convs = [m for m in net.encoder.modules() if isinstance(m, nn.Conv3d)]
    assert [c.out_channels for c in convs] == [16, 32, 32, 32, 32]
    assert [c.in_channels for c in convs] == [2, 16, 32, 32, 32]
    assert [c.stride for c in convs] == [(1, 1, 1)] + [(2, 2, 2)] * 4
    assert all(c.kernel_size == (3, 3, 3) and c.padding == (1, 1, 1) for c in convs)
    ups = list(net.up)
    assert all(isinstance(u, nn.ConvTranspose3d) and u.stride == (2, 2, 2) and u.kernel_size == (3, 3, 3)
               and u.padding == (1, 1, 1) for u in ups)
    decoder = [u.out_channels for u in ups] + [net.refine[0].out_channels, net.head.out_channels]
    assert decoder == [32, 32, 32, 8, 8, 3]
    # skips by concatenation: each upsampled stage is followed by the encoder output of its resolution
    assert [u.in_channels for u in ups] == [32, 32 + 32, 32 + 32, 32 + 32]
    assert net.refine[0].in_channels == 8 + 16 and net.head.in_channels == 8 + 2
    acts = [m for m in net.modules() if isinstance(m, nn.LeakyReLU)]
    assert acts and all(a.negative_slope == 0.2 for a in acts)


def test_unet_shapes_and_small_initial_output():
    torch.manual_seed(0)
    net = UNet()
    for shape in [(20, 12, 16), (13, 10, 7)]:  # even and odd sizes come back at full size
        x = torch.rand(1, 2, *shape)
        with torch.no_grad():
            y = net(x)
        assert y.shape == (1, 3, *shape)
        assert y.abs().max() < 1e-2, "small-init head: an untrained block barely moves"


def test_affine_head_is_identity_at_init():
    torch.manual_seed(0)
    net = AffineNet((20, 12, 16))
    assert [c.out_channels for c in net.encoder.modules() if isinstance(c, nn.Conv3d)] == [16, 32, 32, 32, 32]
    theta = net(torch.rand(2, 2, 20, 12, 16))
    assert theta.shape == (2, 3, 4)
    assert torch.equal(theta.detach(), torch.eye(3, 4).expand(2, 3, 4))
    assert net.head.in_features == 32 * 2 * 1 * 1  # 20, 12, 16 -> 2, 1, 1 after four stride-2 stages
