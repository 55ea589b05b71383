"""Regenerate the bundled example model examples/tiny_cnn.onnx (deterministic).

A small image classifier exported the way most models in the wild are: with the
TorchScript exporter, BatchNormalization not folded, a dynamic batch dim and
the flatten spelled as a Shape/Gather/Concat/Reshape chain, so the default
pipeline has real work to do.

    python tools/make_examples.py
"""

from __future__ import annotations

import io
from pathlib import Path

import onnx
import torch
from torch import nn

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


class ConvBlock(nn.Sequential):
    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class TinyCNN(nn.Module):
    """Conv-BN-ReLU stem, a residual block, global pooling and a linear head (10 classes)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = ConvBlock(3, 16, stride=2)
        self.block = nn.Sequential(ConvBlock(16, 16), nn.Conv2d(16, 16, 3, 1, 1), nn.BatchNorm2d(16))
        self.down = ConvBlock(16, 32, stride=2)
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.relu(x + self.block(x))
        x = self.down(x).mean(dim=(2, 3), keepdim=True)
        return self.head(x.reshape(x.shape[0], -1))


def build_tiny_cnn(path: Path) -> Path:
    torch.manual_seed(0)
    model = TinyCNN().eval()
    # Non-trivial BN statistics, as a trained network would have.
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
    buffer = io.BytesIO()
    torch.onnx.export(
        model, (torch.randn(1, 3, 32, 32),), buffer, dynamo=False, opset_version=17,
        input_names=["image"], output_names=["logits"], do_constant_folding=False,
        dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
    )
    proto = onnx.load_from_string(buffer.getvalue())
    proto.graph.name = "tiny_cnn"
    proto.model_version = 1
    onnx.checker.check_model(proto, full_check=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, str(path))
    return path


if __name__ == "__main__":
    out = build_tiny_cnn(EXAMPLES / "tiny_cnn.onnx")
    print(f"wrote {out} ({out.stat().st_size} bytes)")
