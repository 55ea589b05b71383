"""edgeopt.ir: the intermediate representation every other layer works on.

The in-memory graph is onnx-ir's ``Model`` (https://github.com/onnx/ir-py), not a
home-made one, because it gives us what a compiler IR needs and ONNX's protobuf
classes do not: use-def chains (``value.uses()``, ``node.inputs``), safe mutation
while iterating, lazy memory-mapped external tensors (a model over 2 GB never
loads whole), a pass infrastructure our pass manager builds on, and it is the
format torch.onnx's exporter and onnxscript's rewriter already speak. This
package adds loading with safety checks, torch lowering, cached analyses
(shapes, costs, a networkx view) and the ONNX Runtime reference executor.
"""

from edgeopt.ir import costs, graph_view, shapes  # noqa: F401  (register analyses)
from edgeopt.ir.analysis import ALL, AnalysisManager, register_analysis
from edgeopt.ir.costs import GraphCost, NodeCost, graph_cost, parameter_count
from edgeopt.ir.errors import (
    EdgeoptError,
    InternalError,
    ModelLoadError,
    PassFailedError,
    PipelineError,
    PluginError,
    TargetError,
    UserError,
)
from edgeopt.ir.lower import from_torch
from edgeopt.ir.model_io import (
    MAX_OPSET,
    MIN_OPSET,
    default_opset,
    load_model,
    model_bytes,
    save_model,
)
from edgeopt.ir.reference import Comparison, ReferenceExecutor, compare_outputs
from edgeopt.ir.shapes import TensorInfo, bind_shape, infer_shapes

__all__ = [
    "ALL",
    "MAX_OPSET",
    "MIN_OPSET",
    "AnalysisManager",
    "Comparison",
    "EdgeoptError",
    "GraphCost",
    "InternalError",
    "ModelLoadError",
    "NodeCost",
    "PassFailedError",
    "PipelineError",
    "PluginError",
    "ReferenceExecutor",
    "TargetError",
    "TensorInfo",
    "UserError",
    "bind_shape",
    "compare_outputs",
    "default_opset",
    "from_torch",
    "graph_cost",
    "infer_shapes",
    "load_model",
    "model_bytes",
    "parameter_count",
    "register_analysis",
    "save_model",
]
