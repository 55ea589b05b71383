"""Image classifiers: ResNet-18/50, MobileNetV2/V3, EfficientNet-B0, and a Paddle-style ResNet.

Written by hand in torch.nn (no torchvision) with the layer structure of the originals, so the
exported graphs carry the patterns edgeopt's passes look for: Conv+BN(+act), residual Adds,
depthwise convs, squeeze-excitation, HardSwish/HardSigmoid, SiLU.
"""

from __future__ import annotations

from collections.abc import Callable

import onnx
import torch
from onnx import helper, numpy_helper
from torch import nn

from .spec import ZooEntry, image_input, pick

Act = Callable[[], nn.Module] | None


def conv_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, act: Act = nn.ReLU
            ) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
                               nn.BatchNorm2d(cout)]
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


# --- ResNet -----------------------------------------------------------------------------------

def shortcut(cin: int, cout: int, stride: int) -> nn.Sequential | None:
    """1x1 Conv+BN projection when the residual changes shape, else the identity (None)."""
    return conv_bn(cin, cout, 1, stride, act=None) if stride != 1 or cin != cout else None


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, width: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(conv_bn(cin, width, 3, stride),
                                  conv_bn(width, width, 3, act=None))
        self.down = shortcut(cin, width, stride)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.body(x) + (x if self.down is None else self.down(x)))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, width: int, stride: int) -> None:
        super().__init__()
        cout = width * 4
        self.body = nn.Sequential(conv_bn(cin, width, 1), conv_bn(width, width, 3, stride),
                                  conv_bn(width, cout, 1, act=None))
        self.down = shortcut(cin, cout, stride)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.body(x) + (x if self.down is None else self.down(x)))


class ResNet(nn.Module):
    def __init__(self, block: type[BasicBlock] | type[Bottleneck], layers: tuple[int, ...],
                 widths: tuple[int, ...], classes: int, paddle: bool = False) -> None:
        super().__init__()
        self.paddle = paddle
        self.stem = nn.Sequential(conv_bn(3, widths[0], 7, 2), nn.MaxPool2d(3, 2, 1))
        blocks: list[nn.Module] = []
        cin = widths[0]
        for i, (n, w) in enumerate(zip(layers, widths, strict=True)):
            for j in range(n):
                blocks.append(block(cin, w, 2 if i > 0 and j == 0 else 1))
                cin = w * block.expansion
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.blocks(self.stem(x)))
        # Paddle2ONNX spells flatten out as Shape->Gather->Unsqueeze->Concat->Reshape.
        x = x.reshape(x.shape[0], -1) if self.paddle else torch.flatten(x, 1)
        return self.fc(x)


RESNET = {"small": dict(widths=(8, 16, 32, 64), classes=10, res=32),
          "full": dict(widths=(64, 128, 256, 512), classes=1000, res=224)}


def resnet(size: str, deep: bool, paddle: bool = False) -> ResNet:
    c = pick(RESNET, size)
    if deep:
        layers = (2, 1, 1, 1) if size == "small" else (3, 4, 6, 3)
        return ResNet(Bottleneck, layers, c["widths"], c["classes"])
    layers = (1, 1, 1, 1) if size == "small" else (2, 2, 2, 2)
    return ResNet(BasicBlock, layers, c["widths"], c["classes"], paddle=paddle)


def constants_as_nodes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Move rank<=1 initializers (biases, BN statistics) into Constant nodes, as Paddle2ONNX did."""
    g = model.graph
    moved = [t for t in g.initializer if len(t.dims) <= 1]
    nodes = [helper.make_node("Constant", [], [t.name], name=f"const_{i}",
                              value=numpy_helper.from_array(numpy_helper.to_array(t), t.name))
             for i, t in enumerate(moved)]
    keep = [t for t in g.initializer if len(t.dims) > 1]
    names = {t.name for t in moved}
    inputs = [i for i in g.input if i.name not in names]
    del g.initializer[:], g.input[:]
    g.initializer.extend(keep)
    g.input.extend(inputs)
    old = list(g.node)
    del g.node[:]
    g.node.extend(nodes + old)
    return model


# --- MobileNetV2 / V3 / EfficientNet: one inverted-residual block serves all three ---------------

class SqueezeExcite(nn.Module):
    def __init__(self, ch: int, squeeze: int, act: Act, gate: Act) -> None:
        super().__init__()
        assert act is not None and gate is not None
        self.fc = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(ch, squeeze, 1), act(),
                                nn.Conv2d(squeeze, ch, 1), gate())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.fc(x)


class MBConv(nn.Module):
    """Expand 1x1 -> depthwise kxk -> (SE) -> project 1x1, residual when shapes allow."""

    def __init__(self, cin: int, cout: int, k: int, stride: int, exp: int, act: Act,
                 se: int = 0, se_act: Act = nn.ReLU, gate: Act = nn.Hardsigmoid) -> None:
        super().__init__()
        layers: list[nn.Module] = [conv_bn(cin, exp, 1, act=act)] if exp != cin else []
        layers.append(conv_bn(exp, exp, k, stride, groups=exp, act=act))
        if se:
            layers.append(SqueezeExcite(exp, se, se_act, gate))
        layers.append(conv_bn(exp, cout, 1, act=None))
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x) if self.residual else self.body(x)


def div8(v: float) -> int:
    """Channel rounding of the MobileNet papers (multiple of 8, never below 90%)."""
    r = max(8, int(v + 4) // 8 * 8)
    return r + 8 if r < 0.9 * v else r


def classifier(cin: int, blocks: list[nn.Module], head: int, classes: int, act: Act,
               stem: int, hidden: int = 0) -> nn.Sequential:
    fc: list[nn.Module] = [nn.Dropout(0.2), nn.Linear(head, classes)]
    if hidden and act is not None:  # MobileNetV3 has a hidden Linear+act before the classifier
        fc = [nn.Linear(head, hidden), act(), nn.Dropout(0.2), nn.Linear(hidden, classes)]
    return nn.Sequential(conv_bn(3, stem, 3, 2, act=act), *blocks, conv_bn(cin, head, 1, act=act),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), *fc)


# rows: (expansion t, out channels, repeats, stride)
MNV2 = {"small": dict(stem=8, head=64, classes=10, res=32,
                      rows=[(1, 8, 1, 1), (6, 12, 2, 2), (6, 16, 1, 2), (6, 24, 1, 2)]),
        "full": dict(stem=32, head=1280, classes=1000, res=224,
                     rows=[(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                           (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)])}


def mobilenet_v2(size: str) -> nn.Sequential:
    c = pick(MNV2, size)
    cin, blocks = c["stem"], []
    for t, cout, n, s in c["rows"]:
        for j in range(n):
            blocks.append(MBConv(cin, cout, 3, s if j == 0 else 1, cin * t, nn.ReLU6))
            cin = cout
    return classifier(cin, blocks, c["head"], c["classes"], nn.ReLU6, c["stem"])


# rows: (kernel, expanded, out, se, hardswish, stride) -- MobileNetV3-Large for "full"
MNV3 = {"small": dict(stem=8, head=64, hidden=128, classes=10, res=32,
                      rows=[(3, 8, 8, 0, 0, 1), (3, 24, 12, 0, 0, 2), (5, 36, 12, 1, 0, 1),
                            (3, 48, 16, 0, 1, 2), (5, 64, 16, 1, 1, 1), (3, 64, 24, 1, 1, 2)]),
        "full": dict(stem=16, head=960, hidden=1280, classes=1000, res=224,
                     rows=[(3, 16, 16, 0, 0, 1), (3, 64, 24, 0, 0, 2), (3, 72, 24, 0, 0, 1),
                           (5, 72, 40, 1, 0, 2), (5, 120, 40, 1, 0, 1), (5, 120, 40, 1, 0, 1),
                           (3, 240, 80, 0, 1, 2), (3, 200, 80, 0, 1, 1), (3, 184, 80, 0, 1, 1),
                           (3, 184, 80, 0, 1, 1), (3, 480, 112, 1, 1, 1), (3, 672, 112, 1, 1, 1),
                           (5, 672, 160, 1, 1, 2), (5, 960, 160, 1, 1, 1), (5, 960, 160, 1, 1, 1)])}


def mobilenet_v3(size: str) -> nn.Sequential:
    c = pick(MNV3, size)
    cin, blocks = c["stem"], []
    for k, exp, cout, se, hs, s in c["rows"]:
        act = nn.Hardswish if hs else nn.ReLU
        blocks.append(MBConv(cin, cout, k, s, exp, act, div8(exp / 4) if se else 0))
        cin = cout
    return classifier(cin, blocks, c["head"], c["classes"], nn.Hardswish, c["stem"], c["hidden"])


# rows: (expansion, kernel, stride, out, repeats) -- EfficientNet-B0 for "full"
EFFNET = {"small": dict(stem=8, head=64, classes=10, res=32,
                        rows=[(1, 3, 1, 8, 1), (6, 3, 2, 12, 2), (6, 5, 2, 16, 1),
                              (6, 3, 2, 24, 1)]),
          "full": dict(stem=32, head=1280, classes=1000, res=224,
                       rows=[(1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3),
                             (6, 5, 1, 112, 3), (6, 5, 2, 192, 4), (6, 3, 1, 320, 1)])}


def efficientnet(size: str) -> nn.Sequential:
    c = pick(EFFNET, size)
    cin, blocks = c["stem"], []
    for e, k, s, cout, n in c["rows"]:
        for j in range(n):
            blocks.append(MBConv(cin, cout, k, s if j == 0 else 1, cin * e, nn.SiLU,
                                 max(1, cin // 4), nn.SiLU, nn.Sigmoid))
            cin = cout
    return classifier(cin, blocks, c["head"], c["classes"], nn.SiLU, c["stem"])


def _img(cfgs: dict[str, dict]) -> Callable[[str], tuple]:
    return lambda size: image_input(pick(cfgs, size)["res"])


ENTRIES = [
    ZooEntry("resnet18", "cnn", "ResNet-18: BasicBlocks, Conv+BN+ReLU, residual Adds",
             lambda s: resnet(s, deep=False), _img(RESNET)),
    ZooEntry("resnet50", "cnn", "ResNet-50: Bottleneck blocks with 1x1/3x3/1x1 Conv+BN",
             lambda s: resnet(s, deep=True), _img(RESNET)),
    ZooEntry("resnet18_paddle", "cnn",
             "ResNet-18 as Paddle2ONNX writes it: Shape/Gather/Concat/Reshape, Constant nodes",
             lambda s: resnet(s, deep=False, paddle=True), _img(RESNET),
             postprocess=constants_as_nodes),
    ZooEntry("mobilenet_v2", "cnn", "MobileNetV2: inverted residuals, depthwise convs, ReLU6",
             mobilenet_v2, _img(MNV2)),
    ZooEntry("mobilenet_v3", "cnn", "MobileNetV3-Large: SE, HardSwish/HardSigmoid, depthwise",
             mobilenet_v3, _img(MNV3)),
    ZooEntry("efficientnet_b0", "cnn", "EfficientNet-B0: MBConv with SiLU and squeeze-excitation",
             efficientnet, _img(EFFNET)),
]
