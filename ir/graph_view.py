"""A networkx view of the graph for dependency and channel-group analyses.

Nodes of the DiGraph are the IR nodes themselves (hashable, identity-compared),
each annotated with its op type and name; an edge u -> v carries the names of
the values u produces that v consumes. The view is read-only: rewriting goes
through the IR, then the pass manager invalidates this cache.
"""

from __future__ import annotations

import networkx as nx
import onnx_ir as ir

from edgeopt.ir.analysis import AnalysisManager, register_analysis


def graph_view(graph: ir.Graph) -> nx.DiGraph:
    view = nx.DiGraph(name=graph.name or "main")
    for node in graph:
        view.add_node(node, op_type=node.op_type, name=node.name or "")
    for node in graph:
        for value in node.outputs:
            for consumer, _ in value.uses():
                if consumer.graph is not graph:
                    continue  # used inside a subgraph: the owning node depends on it instead
                if view.has_edge(node, consumer):
                    view.edges[node, consumer]["values"].append(value.name)
                else:
                    view.add_edge(node, consumer, values=[value.name])
    return view


@register_analysis("graph")
def _graph_analysis(model: ir.Model, manager: AnalysisManager) -> nx.DiGraph:
    del manager
    return graph_view(model.graph)
