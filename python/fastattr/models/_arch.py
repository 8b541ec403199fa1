"""Architectures of the bundled models.

All of them take images in [0, 1] and normalise inside (``Normalize``, whose
mean / std are buffers saved with the weights). They are deliberately ordinary
PyTorch: the VGG uses ``nn.ReLU`` / ``nn.MaxPool2d`` modules, the residual net
mixes an ``nn.ReLU`` module with functional ``F.relu`` calls (as torchvision's
ResNet-like models do), the U-Net uses modules, transposed convolutions and
skip concatenations.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel; mean and std are persistent buffers."""

    def __init__(self, channels: int = 3):
        super().__init__()
        self.register_buffer("mean", torch.zeros(channels))
        self.register_buffer("std", torch.ones(channels))

    def forward(self, x):
        return (x - self.mean[:, None, None]) / self.std[:, None, None]

    def extra_repr(self) -> str:
        return f"mean={[round(v, 4) for v in self.mean.tolist()]}, std={[round(v, 4) for v in self.std.tolist()]}"


def _conv_bn_relu(cin: int, cout: int) -> list:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


class ShapesVGG(nn.Module):
    """A small VGG with batch norm (like torchvision's ``vgg11_bn``): four
    conv/BN/ReLU/max-pool blocks and a two-layer classifier
    (global average pooling of the last 4×4 feature map, so any input size
    works; the objects sit anywhere in the image)."""

    fastattr_normalizes_input = True  # takes [0, 1] images; Normalize is inside

    def __init__(self, num_classes: int = 5, widths=(16, 32, 64, 96), hidden: int = 128):
        super().__init__()
        self.normalize = Normalize(3)
        c1, c2, c3, c4 = widths
        self.features = nn.Sequential(
            *_conv_bn_relu(3, c1),
            nn.MaxPool2d(2),
            *_conv_bn_relu(c1, c2),
            *_conv_bn_relu(c2, c2),
            nn.MaxPool2d(2),
            *_conv_bn_relu(c2, c3),
            *_conv_bn_relu(c3, c3),
            nn.MaxPool2d(2),
            *_conv_bn_relu(c3, c4),
            nn.MaxPool2d(2),
        )
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.classifier = nn.Sequential(
            nn.Linear(c4, hidden),
            nn.ReLU(),
            nn.Dropout(0.1),
            nn.Linear(hidden, num_classes),
        )
        for m in self.modules():  # as torchvision's VGG
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = self.features(self.normalize(x))
        x = torch.flatten(self.avgpool(x), 1)
        return self.classifier(x)


class BasicBlock(nn.Module):
    """Two 3×3 conv + batch-norm layers with an identity (or 1×1 projection)
    shortcut; the ReLUs are functional calls."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + identity)


class ShapesResNet(nn.Module):
    """A small ResNet: conv-BN-ReLU-maxpool stem, three stages of basic blocks,
    global average pooling and a linear classifier."""

    fastattr_normalizes_input = True  # takes [0, 1] images; Normalize is inside

    def __init__(self, num_classes: int = 5, widths=(24, 48, 96)):
        super().__init__()
        self.normalize = Normalize(3)
        w1, w2, w3 = widths
        self.stem = nn.Sequential(
            nn.Conv2d(3, w1, 3, padding=1, bias=False),
            nn.BatchNorm2d(w1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.layer1 = BasicBlock(w1, w1)
        self.layer2 = BasicBlock(w1, w2, stride=2)
        self.layer3 = BasicBlock(w2, w3, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(w3, num_classes)

    def forward(self, x):
        x = self.stem(self.normalize(x))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _double_conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(),
    )


@torch.fx.wrap
def _check_unet_size(x):
    # A leaf for torch.fx (wrapped), so that symbolic_trace keeps the check
    # instead of failing on a shape-dependent branch.
    if x.shape[-1] % 8 or x.shape[-2] % 8:
        raise ValueError(f"LesionUNet: height and width must be multiples of 8, got {tuple(x.shape[-2:])}")


class LesionUNet(nn.Module):
    """A small U-Net (three down-sampling steps) giving one channel of lesion
    logits at the input resolution. Height and width must be multiples of 8."""

    fastattr_normalizes_input = True  # takes [0, 1] images; Normalize is inside

    def __init__(self, widths=(8, 16, 32, 48), out_channels: int = 1):
        super().__init__()
        self.normalize = Normalize(3)
        w1, w2, w3, w4 = widths
        self.enc1 = _double_conv(3, w1)
        self.enc2 = _double_conv(w1, w2)
        self.enc3 = _double_conv(w2, w3)
        self.bottleneck = _double_conv(w3, w4)
        self.pool = nn.MaxPool2d(2)
        self.up3 = nn.ConvTranspose2d(w4, w3, 2, stride=2)
        self.dec3 = _double_conv(2 * w3, w3)
        self.up2 = nn.ConvTranspose2d(w3, w2, 2, stride=2)
        self.dec2 = _double_conv(2 * w2, w2)
        self.up1 = nn.ConvTranspose2d(w2, w1, 2, stride=2)
        self.dec1 = _double_conv(2 * w1, w1)
        self.head = nn.Conv2d(w1, out_channels, 1)

    def forward(self, x):
        _check_unet_size(x)
        e1 = self.enc1(self.normalize(x))
        e2 = self.enc2(self.pool(e1))
        e3 = self.enc3(self.pool(e2))
        b = self.bottleneck(self.pool(e3))
        d3 = self.dec3(torch.cat([self.up3(b), e3], 1))
        d2 = self.dec2(torch.cat([self.up2(d3), e2], 1))
        d1 = self.dec1(torch.cat([self.up1(d2), e1], 1))
        return self.head(d1)


# name -> (constructor, dataset, task)
ARCHITECTURES = {
    "shapes-vgg": (ShapesVGG, "shapes", "classification"),
    "shapes-resnet": (ShapesResNet, "shapes", "classification"),
    "lesions-unet": (LesionUNet, "lesions", "segmentation"),
}


def build(name: str) -> nn.Module:
    """A freshly initialised bundled architecture (with the default widths)."""
    return ARCHITECTURES[name][0]()
