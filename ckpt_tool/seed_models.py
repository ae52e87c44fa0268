"""The models of the seed notes, with stable names and the notes' typos fixed."""

from __future__ import annotations

import itertools
from collections import OrderedDict

import torch
from torch import nn
from torch.nn import functional as F


def mlp(in_features: int = 784, hidden: int = 256, num_classes: int = 10) -> nn.Sequential:
    """The 784-256-10 MLP with named layers (fc1, relu1, fc2)."""
    return nn.Sequential(
        OrderedDict(
            [
                ("fc1", nn.Linear(in_features, hidden)),
                ("relu1", nn.ReLU()),
                ("fc2", nn.Linear(hidden, num_classes)),
            ]
        )
    )


class ConvNet(nn.Module):
    """The MNIST ConvNet: two conv-BN-ReLU-pool blocks and a linear head, 1x28x28 input."""

    def __init__(self, num_classes: int = 10, in_chans: int = 1) -> None:
        super().__init__()
        self.layer1 = nn.Sequential(
            nn.Conv2d(in_chans, 16, kernel_size=5, stride=1, padding=2),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=2, stride=2),
        )
        self.layer2 = nn.Sequential(
            nn.Conv2d(16, 32, kernel_size=5, stride=1, padding=2),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=2, stride=2),
        )
        self.fc = nn.Linear(7 * 7 * 32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layer2(self.layer1(x))
        logits: torch.Tensor = self.fc(out.reshape(out.size(0), -1))
        return logits


class ResBlock(nn.Module):
    """The seed's residual block (`res_block`), with its typos fixed and BN after each conv."""

    def __init__(
        self, in_c: int, out_c: int, stride: int = 1, shortcut: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.left = nn.Sequential(
            nn.Conv2d(in_c, out_c, 3, stride, 1, bias=False),
            nn.BatchNorm2d(out_c),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_c, out_c, 3, 1, 1, bias=False),
            nn.BatchNorm2d(out_c),
        )
        self.right = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.left(x)
        residual = x if self.right is None else self.right(x)
        return F.relu(out + residual)


class ResNet34(nn.Module):
    """The seed notes' ResNet34: `pre` stem, 3-4-6-3 residual blocks, global pool, `fc`."""

    def __init__(self, num_classes: int = 2, in_chans: int = 3) -> None:
        super().__init__()
        self.pre = nn.Sequential(
            nn.Conv2d(in_chans, 64, 7, 2, 3, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, 1),
        )
        self.layer1 = self._make_layer(64, 128, 3)
        self.layer2 = self._make_layer(128, 256, 4, stride=2)
        self.layer3 = self._make_layer(256, 512, 6, stride=2)
        self.layer4 = self._make_layer(512, 512, 3, stride=2)
        self.fc = nn.Linear(512, num_classes)

    @staticmethod
    def _make_layer(in_c: int, out_c: int, blocks: int, stride: int = 1) -> nn.Sequential:
        shortcut = nn.Sequential(
            nn.Conv2d(in_c, out_c, 1, stride, bias=False), nn.BatchNorm2d(out_c)
        )
        layers: list[nn.Module] = [ResBlock(in_c, out_c, stride, shortcut)]
        layers += [ResBlock(out_c, out_c) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pre(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        # The seed used avg_pool2d(x, 7), which only works for 224x224 input; adaptive
        # pooling keeps the same result there and accepts small smoke-test images.
        x = F.adaptive_avg_pool2d(x, 1)
        logits: torch.Tensor = self.fc(x.reshape(x.size(0), -1))
        return logits


class SigmoidNet(nn.Module):
    """The seed's ModuleList net: 10-10-50-10-10-1 linear layers with sigmoids between."""

    def __init__(self, in_features: int = 10, num_classes: int = 1) -> None:
        super().__init__()
        widths = [in_features, 10, 50, 10, 10, num_classes]
        self.fc = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(widths))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        last = len(self.fc) - 1
        for i, layer in enumerate(self.fc):
            x = layer(x)
            if i < last:
                x = torch.sigmoid(x)
        return x


SEED_MODELS = {
    "mlp": mlp,
    "convnet": ConvNet,
    "seed_resnet34": ResNet34,
    "sigmoid_net": SigmoidNet,
}
