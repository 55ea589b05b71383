"""A YOLOv8-shaped detector: CSP backbone (C2f with Split), SPPF, PAN neck with Resize/Concat,
and the anchor-free head with DFL decoding, as `yolo export format=onnx` produces it."""

from __future__ import annotations

import torch
from torch import nn

from .spec import ZooEntry, image_input, pick


class Conv(nn.Sequential):
    """Conv + BN + SiLU, the only conv flavour YOLOv8 uses outside the head's last 1x1."""

    def __init__(self, cin: int, cout: int, k: int = 1, s: int = 1) -> None:
        super().__init__(nn.Conv2d(cin, cout, k, s, k // 2, bias=False), nn.BatchNorm2d(cout),
                         nn.SiLU())


class Bottleneck(nn.Module):
    def __init__(self, c: int, shortcut: bool) -> None:
        super().__init__()
        self.cv = nn.Sequential(Conv(c, c, 3), Conv(c, c, 3))
        self.add = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.cv(x) if self.add else self.cv(x)


class C2f(nn.Module):
    """Split the 1x1 output in two (ONNX Split), chain bottlenecks on one half, Concat all."""

    def __init__(self, cin: int, cout: int, n: int, shortcut: bool) -> None:
        super().__init__()
        self.c = cout // 2
        self.cv1 = Conv(cin, 2 * self.c)
        self.cv2 = Conv((2 + n) * self.c, cout)
        self.m = nn.ModuleList(Bottleneck(self.c, shortcut) for _ in range(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = list(self.cv1(x).chunk(2, 1))
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))


class SPPF(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.cv1, self.cv2 = Conv(cin, cin // 2), Conv(cin * 2, cout)
        self.pool = nn.MaxPool2d(5, 1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = [self.cv1(x)]
        y.extend(self.pool(y[-1]) for _ in range(3))
        return self.cv2(torch.cat(y, 1))


class Detect(nn.Module):
    """Per-level box (4 x reg_max DFL bins) and class branches, decoded to (B, 4 + nc, anchors)."""

    def __init__(self, nc: int, ch: tuple[int, ...], res: int, reg_max: int = 16) -> None:
        super().__init__()
        self.nc, self.reg_max, self.no = nc, reg_max, nc + 4 * reg_max
        c2, c3 = max(16, ch[0] // 4, 4 * reg_max), max(ch[0], min(nc, 100))
        self.box = nn.ModuleList(nn.Sequential(Conv(c, c2, 3), Conv(c2, c2, 3),
                                               nn.Conv2d(c2, 4 * reg_max, 1)) for c in ch)
        self.cls = nn.ModuleList(nn.Sequential(Conv(c, c3, 3), Conv(c3, c3, 3),
                                               nn.Conv2d(c3, nc, 1)) for c in ch)
        # DFL: expectation over the bins as a frozen 1x1 conv with weights 0..reg_max-1.
        self.dfl = nn.Conv2d(reg_max, 1, 1, bias=False).requires_grad_(False)
        self.dfl.weight.data[:] = torch.arange(reg_max, dtype=torch.float32).view(1, reg_max, 1, 1)
        # The input size is fixed, so anchors are constants (YOLOv8 exports bake them in too).
        points, strides = [], []
        for s in (8, 16, 32):
            g = torch.arange(res // s, dtype=torch.float32) + 0.5
            yy, xx = torch.meshgrid(g, g, indexing="ij")
            points.append(torch.stack((xx, yy), -1).view(-1, 2))
            strides.append(torch.full((points[-1].shape[0], 1), float(s)))
        self.register_buffer("anchors", torch.cat(points).T.contiguous(), persistent=False)
        self.register_buffer("strides", torch.cat(strides).T.contiguous(), persistent=False)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        b = feats[0].shape[0]
        x = torch.cat([torch.cat((bx(f), cl(f)), 1).view(b, self.no, -1)
                       for f, bx, cl in zip(feats, self.box, self.cls, strict=True)], 2)
        box, cls = x.split((4 * self.reg_max, self.nc), 1)
        a = box.shape[2]
        dist = self.dfl(box.view(b, 4, self.reg_max, a).transpose(2, 1).softmax(1)).view(b, 4, a)
        lt, rb = dist.chunk(2, 1)
        x1y1, x2y2 = self.anchors - lt, self.anchors + rb
        xywh = torch.cat(((x1y1 + x2y2) / 2, x2y2 - x1y1), 1) * self.strides
        return torch.cat((xywh, cls.sigmoid()), 1)


class YOLO(nn.Module):
    def __init__(self, w: tuple[int, ...], d: tuple[int, ...], nc: int, res: int) -> None:
        super().__init__()
        self.b1 = nn.Sequential(Conv(3, w[0], 3, 2), Conv(w[0], w[1], 3, 2),  # P3
                                C2f(w[1], w[1], d[0], True), Conv(w[1], w[2], 3, 2),
                                C2f(w[2], w[2], d[1], True))
        self.b2 = nn.Sequential(Conv(w[2], w[3], 3, 2), C2f(w[3], w[3], d[2], True))  # P4
        self.b3 = nn.Sequential(Conv(w[3], w[4], 3, 2), C2f(w[4], w[4], d[3], True),  # P5
                                SPPF(w[4], w[4]))
        self.up = nn.Upsample(scale_factor=2.0, mode="nearest")
        self.h1 = C2f(w[4] + w[3], w[3], d[3], False)
        self.h2 = C2f(w[3] + w[2], w[2], d[3], False)
        self.down1, self.h3 = Conv(w[2], w[2], 3, 2), C2f(w[2] + w[3], w[3], d[3], False)
        self.down2, self.h4 = Conv(w[3], w[3], 3, 2), C2f(w[3] + w[4], w[4], d[3], False)
        self.detect = Detect(nc, (w[2], w[3], w[4]), res)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p3 = self.b1(x)
        p4 = self.b2(p3)
        p5 = self.b3(p4)
        t4 = self.h1(torch.cat((self.up(p5), p4), 1))
        o3 = self.h2(torch.cat((self.up(t4), p3), 1))
        o4 = self.h3(torch.cat((self.down1(o3), t4), 1))
        o5 = self.h4(torch.cat((self.down2(o4), p5), 1))
        return self.detect([o3, o4, o5])


# YOLOv8n: widths 0.25x, depths 0.33x of the base 64/128/256/512/1024 and 3/6/6/3.
YOLO_CFG = {"small": dict(w=(8, 8, 16, 16, 32), d=(1, 1, 1, 1), nc=4, res=64),
            "full": dict(w=(16, 32, 64, 128, 256), d=(1, 2, 2, 1), nc=80, res=640)}


def yolo(size: str) -> YOLO:
    c = pick(YOLO_CFG, size)
    return YOLO(c["w"], c["d"], c["nc"], c["res"])


ENTRIES = [
    ZooEntry("yolov8n", "detector",
             "YOLOv8n-shaped detector: C2f (Split), SPPF, Resize+Concat neck, DFL head",
             yolo, lambda s: image_input(pick(YOLO_CFG, s)["res"]), outputs=("output0",)),
]
