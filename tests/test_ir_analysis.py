"""Analyses (shapes, costs, graph view), caching, the reference executor, torch lowering."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest

from edgeopt.ir import AnalysisManager, ReferenceExecutor, compare_outputs, load_model
from edgeopt.ir.reference import compare_arrays


def test_shapes_keep_symbolic_dims(conv_bn_path: Path) -> None:
    model = load_model(conv_bn_path)
    shapes = AnalysisManager().get(model, "shapes")
    assert shapes["c"].describe() == "float[N,4,8,8]"
    assert shapes["y"].shape[0].value == "N"


def test_conv_flops_params_bytes_are_exact(conv_bn_path: Path) -> None:
    model = load_model(conv_bn_path)
    costs = AnalysisManager().get(model, "costs")
    conv = next(n for n in model.graph if n.op_type == "Conv")
    cost = costs.per_node[conv]
    # 4 output channels x 8x8 positions, each a 3x3x3 dot product (2 FLOPs/MAC) + bias add.
    assert cost.flops == 4 * 64 * 27 * 2 + 4 * 64
    assert cost.params == 4 * 3 * 3 * 3 + 4
    assert cost.weight_bytes == (108 + 4) * 4
    assert cost.activation_bytes == (3 * 64 + 4 * 64) * 4


def test_costs_measure_shapes_inference_cannot_know(example_model: Path) -> None:
    # The Reshape target comes from a Shape/Gather/Concat chain: its output shape
    # is found by running the model, so the Gemm after it still has its FLOPs.
    model = load_model(example_model)
    costs = AnalysisManager().get(model, "costs")
    gemm = next(n for n in model.graph if n.op_type == "Gemm")
    assert costs.per_node[gemm].flops == 2 * 32 * 10 + 10


def test_analysis_cache_and_invalidation(conv_bn_path: Path) -> None:
    model = load_model(conv_bn_path)
    manager = AnalysisManager()
    first = manager.get(model, "graph")
    assert manager.get(model, "graph") is first and manager.computed["graph"] == 1
    manager.invalidate(model, preserved=("graph",))
    assert manager.get(model, "graph") is first
    manager.invalidate(model)
    assert manager.get(model, "graph") is not first and manager.computed["graph"] == 2
    with pytest.raises(KeyError, match="unknown analysis"):
        manager.get(model, "nope")


def test_graph_view_edges(conv_bn_path: Path) -> None:
    model = load_model(conv_bn_path)
    view = AnalysisManager().get(model, "graph")
    by_name = {data["name"]: node for node, data in view.nodes(data=True)}
    assert view.has_edge(by_name["conv"], by_name["bn"])
    assert view.edges[by_name["conv"], by_name["bn"]]["values"] == ["c"]
    assert set(view.successors(by_name["relu"])) == {by_name["dropout"], by_name["dead_mul"]}


def test_generated_inputs_bind_symbolic_dims(conv_bn_path: Path) -> None:
    model = load_model(conv_bn_path)
    executor = ReferenceExecutor()
    feeds = executor.generate_inputs(model, bindings={"N": 3})
    assert feeds["x"].shape == (3, 3, 8, 8) and feeds["x"].dtype == np.float32
    outputs = executor.run(model, feeds, extra_outputs=["c"])
    assert outputs["y"].shape == (3, 4, 8, 8) and outputs["c"].shape == (3, 4, 8, 8)


def test_compare_reports_errors_cosine_and_top1() -> None:
    reference = np.array([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]], np.float32)
    same = compare_outputs({"y": reference}, {"y": reference.copy()})
    assert same.ok and same.max_abs == 0 and same.cosine == pytest.approx(1.0) and same.top1 == 1.0
    flipped = reference.copy()
    flipped[1] = [1.0, 2.0, 3.5]
    result = compare_arrays("y", reference, flipped)
    assert not result.within and result.max_abs == pytest.approx(2.5)
    assert result.max_rel == pytest.approx(2.5 / 3.0) and result.top1 == 0.5
    assert not compare_arrays("y", reference, reference[:1]).shape_match


def test_from_torch_matches_torch_and_keeps_dynamic_batch() -> None:
    torch = pytest.importorskip("torch")
    from edgeopt.ir import from_torch

    module = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.GELU(), torch.nn.Linear(5, 2)).eval()
    example = torch.randn(2, 6)
    model = from_torch(module, (example,), input_names=["x"],
                       dynamic_shapes={"input": {0: torch.export.Dim("batch")}})
    assert isinstance(model, ir.Model)
    assert not isinstance(model.graph.inputs[0].shape[0], int)
    batch = np.random.default_rng(1).standard_normal((4, 6)).astype(np.float32)
    got = ReferenceExecutor().run(model, {model.graph.inputs[0].name: batch})
    expected = module(torch.from_numpy(batch)).detach().numpy()
    np.testing.assert_allclose(next(iter(got.values())), expected, rtol=1e-5, atol=1e-6)
