"""edgeopt.passes: the pass API, the pass manager, instruments and every built-in pass.

Write a pass (built-in and plugin passes look the same)::

    from dataclasses import dataclass
    from edgeopt.passes import Pass, PassContext, PassResult, option, register_pass

    @dataclass
    class MyOptions:
        threshold: float = option(0.5, help="...")

    @register_pass("my-pass")
    class MyPass(Pass):
        \"\"\"One line: what the pass changes.\"\"\"

        Options = MyOptions

        def run(self, model, ctx: PassContext) -> PassResult:
            ...
            return PassResult(model, modified=True, counts={"nodes_removed": 3})
"""

from edgeopt.passes.base import CostQuery, Pass, PassContext, PassResult
from edgeopt.passes.instruments import (
    DeltaInstrument,
    IRCheckInstrument,
    PrintAfterInstrument,
    ReproducerInstrument,
    VerifyInstrument,
)
from edgeopt.passes.manager import GraphStats, Instrument, PassManager, PassRecord, PipelineResult
from edgeopt.passes.options import Choice, FloatRange, IntRange, describe_options, option, search_spaces
from edgeopt.passes.pipeline import (
    PassSpec,
    instantiate,
    load_pipeline_config,
    parse_pipeline,
    pipeline_text,
)
from edgeopt.passes.registry import (
    ENTRY_POINT_GROUP,
    get_pass,
    load_entry_point_plugins,
    load_plugin_file,
    register_pass,
    registered_passes,
)

__all__ = [
    "ENTRY_POINT_GROUP",
    "Choice",
    "CostQuery",
    "DeltaInstrument",
    "FloatRange",
    "GraphStats",
    "IRCheckInstrument",
    "Instrument",
    "IntRange",
    "Pass",
    "PassContext",
    "PassManager",
    "PassRecord",
    "PassResult",
    "PassSpec",
    "PipelineResult",
    "PrintAfterInstrument",
    "ReproducerInstrument",
    "VerifyInstrument",
    "describe_options",
    "get_pass",
    "instantiate",
    "load_entry_point_plugins",
    "load_pipeline_config",
    "load_plugin_file",
    "option",
    "parse_pipeline",
    "pipeline_text",
    "register_pass",
    "registered_passes",
    "search_spaces",
]
