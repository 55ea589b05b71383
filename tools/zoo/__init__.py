"""Model zoo: hand-written torch architectures with seeded random weights, exported unoptimized
to ONNX (opset >= 17, symbolic batch) so edgeopt has realistic inputs without any downloads.

    from tools.zoo import ZOO, build, example_inputs, module
    path = build("resnet18", out_dir, size="small")   # -> out_dir/resnet18-small.onnx

Command line: python -m tools.zoo --out DIR --size small|full [--only a,b]
"""

from .build import ZOO, build, entry, example_inputs, module
from .export import Summary, summarize
from .spec import SIZES, InputSpec, ZooEntry

__all__ = ["SIZES", "ZOO", "InputSpec", "Summary", "ZooEntry", "build", "entry",
           "example_inputs", "module", "summarize"]
