"""The improved ResNet ("iresnet") of insightface's arcface_torch, so its released ``backbone.pth`` state dicts load.

Layout (parameter names follow the released files): a 3x3 stem (``conv1``, ``bn1``, ``prelu``), four stages
``layer1``..``layer4`` of pre-activation blocks (BN, 3x3 conv, BN, PReLU, 3x3 conv with the stage's stride 2, BN,
plus a 1x1 strided shortcut where the shape changes), then ``bn2``, a fully connected layer from the 7x7x512 map
(``fc``) and a BatchNorm1d (``features``) giving the 512-d embedding. Input: 112x112 RGB scaled to [-1, 1].
Depths: r18 (2, 2, 2, 2), r34 (3, 4, 6, 3), r50 (3, 4, 14, 3), r100 (3, 13, 30, 3), r200 (6, 26, 60, 6).
"""

from __future__ import annotations

import re

from torch import nn

WIDTHS = (64, 128, 256, 512)
DEPTHS = {"r18": (2, 2, 2, 2), "r34": (3, 4, 6, 3), "r50": (3, 4, 14, 3), "r100": (3, 13, 30, 3),
          "r200": (6, 26, 60, 6)}
EPS = 1e-5


def conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride, padding=1, bias=False)


class Block(nn.Module):
    """Pre-activation residual block: BN, conv, BN, PReLU, strided conv, BN, plus the (projected) input."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin, eps=EPS)
        self.conv1 = conv3x3(cin, cout)
        self.bn2 = nn.BatchNorm2d(cout, eps=EPS)
        self.prelu = nn.PReLU(cout)
        self.conv2 = conv3x3(cout, cout, stride)
        self.bn3 = nn.BatchNorm2d(cout, eps=EPS)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout, eps=EPS))

    def forward(self, x):
        y = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        return y + (x if self.downsample is None else self.downsample(x))


class IResNet(nn.Module):
    """iresnet with ``depths`` blocks per stage: (N, 3, 112, 112) in [-1, 1] -> (N, embedding_size)."""

    def __init__(self, depths=DEPTHS["r50"], embedding_size: int = 512):
        super().__init__()
        self.conv1 = conv3x3(3, WIDTHS[0])
        self.bn1 = nn.BatchNorm2d(WIDTHS[0], eps=EPS)
        self.prelu = nn.PReLU(WIDTHS[0])
        cin = WIDTHS[0]
        for i, (width, depth) in enumerate(zip(WIDTHS, depths)):
            blocks = [Block(cin if j == 0 else width, width, 2 if j == 0 else 1) for j in range(depth)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            cin = width
        self.bn2 = nn.BatchNorm2d(WIDTHS[-1], eps=EPS)
        self.fc = nn.Linear(WIDTHS[-1] * 7 * 7, embedding_size)
        self.features = nn.BatchNorm1d(embedding_size, eps=EPS)

    def forward(self, x):
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.features(self.fc(self.bn2(x).flatten(1)))


def depths_of(state: dict) -> tuple[int, ...]:
    """Blocks per stage of an iresnet state dict (from its ``layer<i>.<j>.`` keys)."""
    found = {}
    for key in state:
        m = re.match(r"layer([1-4])\.(\d+)\.", key)
        if m:
            found[int(m[1])] = max(found.get(int(m[1]), 0), int(m[2]) + 1)
    return tuple(found.get(i, 0) for i in range(1, 5))


def from_state_dict(state: dict) -> IResNet:
    """An eval-mode IResNet shaped like ``state`` (depths and embedding size read from it), weights loaded strictly."""
    model = IResNet(depths_of(state), embedding_size=state["fc.weight"].shape[0])
    model.load_state_dict(state, strict=True)
    return model.eval()
