"""The cascade's networks (Pham et al. 2025): a deformable UNet block and an affine block.

Both take a 2-channel input ``[N, 2, K, J, I]`` (fixed, moving; on the network
grid, 64 x 48 x 80 voxels by default, i.e. K, J, I = 80, 48, 64) in [0, 1].

* :class:`UNet` -- encoder of 5 stages (16, 32, 32, 32, 32 channels; the first
  with stride 1, then stride 2), each one 3^3 convolution (padding 1) and
  LeakyReLU(0.2). Decoder of 6 stages (32, 32, 32, 8, 8, 3): stages 1-4 are
  transposed 3^3 convolutions (stride 2, padding 1) that upsample and are then
  concatenated with the encoder output of the same resolution; stages 5 and 6
  are 3^3 convolutions at full resolution, and stage 6 also sees the input
  image (VoxelMorph's skip of the input, 2 channels). This reading gives the
  255,949 parameters measured for the paper's block (without the input skip
  it would be 255,787). The last stage has no activation and starts near zero
  (weights N(0, 1e-5), zero bias), so an untrained block is the identity.
  Output: a displacement in voxels of the network grid, components (x, y, z)
  = (i, j, k) (see :mod:`TotalRegistratorLib.learned.cascade` for the conversion to mm).
* :class:`AffineNet` -- the same encoder, flattened, and one linear layer to the
  12 parameters of a 3 x 4 matrix ``theta`` acting on normalised coordinates
  (grid_sample, align_corners=True): a fixed point ``n`` samples the moving
  image at ``theta @ [n, 1]``. Initialised to the identity (zero weights).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

ENCODER_CHANNELS = (16, 32, 32, 32, 32)
DECODER_CHANNELS = (32, 32, 32, 8, 8, 3)
IN_CHANNELS = 2
HEAD_INIT_STD = 1e-5


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv3d(cin, cout, 3, stride, 1), nn.LeakyReLU(0.2))


class Encoder(nn.Module):
    """Five conv stages; returns every stage's output (full resolution first)."""

    def __init__(self, channels: Sequence[int] = ENCODER_CHANNELS, in_channels: int = IN_CHANNELS):
        super().__init__()
        cins = (in_channels, *channels[:-1])
        self.stages = nn.ModuleList(_conv(cin, cout, 1 if n == 0 else 2)
                                    for n, (cin, cout) in enumerate(zip(cins, channels)))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features


class UNet(nn.Module):
    """Deformable block: [N, 2, K, J, I] -> displacement [N, 3, K, J, I] in network voxels, (x, y, z)."""

    def __init__(self, encoder: Sequence[int] = ENCODER_CHANNELS, decoder: Sequence[int] = DECODER_CHANNELS,
                 in_channels: int = IN_CHANNELS):
        super().__init__()
        levels = len(encoder) - 1  # upsampling stages
        if len(decoder) != levels + 2:
            raise ValueError(f"decoder needs {levels + 2} stages for a {len(encoder)}-stage encoder")
        self.encoder = Encoder(encoder, in_channels)
        self.up = nn.ModuleList()
        cin = encoder[-1]
        for n in range(levels):
            self.up.append(nn.ConvTranspose3d(cin, decoder[n], 3, stride=2, padding=1))
            cin = decoder[n] + encoder[levels - 1 - n]
        self.refine = _conv(cin, decoder[levels])
        self.head = nn.Conv3d(decoder[levels] + in_channels, decoder[levels + 1], 3, 1, 1)
        nn.init.normal_(self.head.weight, std=HEAD_INIT_STD)
        nn.init.zeros_(self.head.bias)
        self.activation = nn.LeakyReLU(0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        *skips, y = self.encoder(x)
        for up, skip in zip(self.up, reversed(skips)):
            y = self.activation(up(y, output_size=skip.shape[2:]))
            y = torch.cat([y, skip], dim=1)
        y = self.refine(y)
        return self.head(torch.cat([y, x], dim=1))


def encoded_shape(size_kji: Sequence[int], stages: int = len(ENCODER_CHANNELS)) -> tuple[int, int, int]:
    """Spatial shape of the last encoder stage for an input of shape (K, J, I)."""
    shape = tuple(int(s) for s in size_kji)
    for _ in range(stages - 1):
        shape = tuple((s + 1) // 2 for s in shape)
    return shape


IDENTITY_THETA = (1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0)


class AffineNet(nn.Module):
    """Affine block: [N, 2, K, J, I] -> theta [N, 3, 4] on normalised coordinates (identity at init)."""

    def __init__(self, shape_kji: Sequence[int], encoder: Sequence[int] = ENCODER_CHANNELS,
                 in_channels: int = IN_CHANNELS):
        super().__init__()
        self.encoder = Encoder(encoder, in_channels)
        features = encoder[-1] * int(torch.tensor(encoded_shape(shape_kji, len(encoder))).prod())
        self.head = nn.Linear(features, 12)
        nn.init.zeros_(self.head.weight)
        with torch.no_grad():
            self.head.bias.copy_(torch.tensor(IDENTITY_THETA))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x)[-1].flatten(1)).reshape(-1, 3, 4)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
