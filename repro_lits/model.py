"""The study's reduced 3D U-Net, with the channel width as a parameter.

Input (N, 1, X, Y, Z) float32 CT cubes; output (N, 3, X, Y, Z) float32
softmax probabilities over the classes background, liver and tumor. Every
spatial edge must be a multiple of 4, because the network halves it twice.

At width 32 the network is the study's: 2,339,491 trainable parameters, split
into input block 28,704, down 1 174,496, down 2 697,152, middle 885,504, up 1
442,752, up 2 110,784 and output 99.
"""

from __future__ import annotations

import torch
from torch import nn

#: Classes the network predicts, in channel order.
NUM_CLASSES = 3

#: Names of the network's parts, in the order the input passes them.
PARTS = ("input_block", "down1", "down2", "middle", "up1", "up2", "output")


class ConvBlock(nn.Sequential):
    """Twice [Dropout3d -> Conv3d 3x3x3 (padding 1) -> BatchNorm3d -> ReLU]."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float) -> None:
        super().__init__(
            nn.Dropout3d(dropout),
            nn.Conv3d(in_channels, out_channels, kernel_size=3, padding=1),
            nn.BatchNorm3d(out_channels),
            nn.ReLU(inplace=True),
            nn.Dropout3d(dropout),
            nn.Conv3d(out_channels, out_channels, kernel_size=3, padding=1),
            nn.BatchNorm3d(out_channels),
            nn.ReLU(inplace=True),
        )


class Down(nn.Sequential):
    """Dropout3d -> Conv3d with kernel 2 and stride 2 (halves each edge) -> ConvBlock."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float, sampling_dropout: float) -> None:
        super().__init__(
            nn.Dropout3d(sampling_dropout),
            nn.Conv3d(in_channels, in_channels, kernel_size=2, stride=2),
            ConvBlock(in_channels, out_channels, dropout),
        )


class Up(nn.Module):
    """Dropout3d -> nearest-neighbour upsampling x2 -> concatenation with the skip -> ConvBlock.

    The skip's channels come after the upsampled channels in the concatenation.
    """

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int, dropout: float,
                 sampling_dropout: float) -> None:
        super().__init__()
        self.dropout = nn.Dropout3d(sampling_dropout)
        self.upsample = nn.Upsample(scale_factor=2, mode="nearest")
        self.block = ConvBlock(in_channels + skip_channels, out_channels, dropout)

    def forward(self, features: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        upsampled = self.upsample(self.dropout(features))
        return self.block(torch.cat([upsampled, skip], dim=1))


class UNet3D(nn.Module):
    """The study's reduced 3D U-Net: two down- and two upsampling steps.

    Args:
        width: channels of the input block (study: 32); the deeper levels use
            2 x width and 4 x width channels.
        dropout: Dropout3d rate inside every conv block (study: 0.25).
        sampling_dropout: Dropout3d rate before every down- and upsampling step
            (study: 0.001).
    """

    def __init__(self, width: int = 32, dropout: float = 0.25, sampling_dropout: float = 0.001) -> None:
        super().__init__()
        if width <= 0:
            raise ValueError(f"U-Net width = {width!r}; expected a positive number of channels")
        self.input_block = ConvBlock(1, width, dropout)
        self.down1 = Down(width, 2 * width, dropout, sampling_dropout)
        self.down2 = Down(2 * width, 4 * width, dropout, sampling_dropout)
        self.middle = ConvBlock(4 * width, 4 * width, dropout)
        self.up1 = Up(4 * width, 2 * width, 2 * width, dropout, sampling_dropout)
        self.up2 = Up(2 * width, width, width, dropout, sampling_dropout)
        self.output = nn.Conv3d(width, NUM_CLASSES, kernel_size=1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Map (N, 1, X, Y, Z) cubes to (N, 3, X, Y, Z) class probabilities (softmax over axis 1)."""
        full = self.input_block(image)
        half = self.down1(full)
        quarter = self.middle(self.down2(half))
        decoded = self.up2(self.up1(quarter, half), full)
        return torch.softmax(self.output(decoded), dim=1)


def build_model(model_config: dict) -> UNet3D:
    """Build the U-Net from the ``[model]`` section of an experiment (width, dropout, sampling_dropout)."""
    return UNet3D(
        width=model_config["width"],
        dropout=model_config["dropout"],
        sampling_dropout=model_config["sampling_dropout"],
    )


def count_parameters(module: nn.Module) -> int:
    """Count the trainable parameters of a module."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def parameter_counts(model: UNet3D) -> dict[str, int]:
    """Count the trainable parameters per part (keys of :data:`PARTS`) and in total (key ``total``)."""
    counts = {part: count_parameters(getattr(model, part)) for part in PARTS}
    counts["total"] = count_parameters(model)
    return counts
