"""The `edgeopt` command line.

User mistakes end as one line on stderr naming the file, node or option and a
non-zero exit code; `--debug` shows the traceback. Only this module turns
errors into exit codes.
"""

from __future__ import annotations

import importlib
import logging
import sys
import traceback
from collections import Counter
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from edgeopt import __version__
from edgeopt.ir.errors import EdgeoptError, PassFailedError
from edgeopt.report import pass_table, passes_table, targets_table

console = Console()
errors = Console(stderr=True)

app = typer.Typer(
    name="edgeopt",
    help="Compile AI models for edge hardware: optimize an ONNX model with composable passes and "
         "emit it for a target's backend.\n\nStart with: edgeopt compile model.onnx --target host-cpu",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)

_state = {"debug": False}


def _version(value: bool) -> None:
    if value:
        console.print(f"edgeopt {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    _state["debug"] = debug


PluginOption = Annotated[
    list[Path] | None,
    typer.Option("--plugin", help="Python file registering extra passes, targets or emitters "
                                  "(repeatable). Only named plugin files run."),
]


def _key_values(items: list[str], flag: str) -> dict[str, str]:
    """``["a=1", "b=x"]`` -> ``{"a": "1", "b": "x"}``; a word without '=' is a one-line error."""
    from edgeopt.ir.errors import UserError

    pairs = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"{flag} '{item}': expected KEY=VALUE")
        pairs[key.strip()] = value.strip()
    return pairs


@app.command("compile")
def compile_command(
    model: Annotated[Path, typer.Argument(help="The ONNX model to compile.")],
    target: Annotated[str, typer.Option("--target", "-t", help="Hardware target name or a target "
                                        ".toml file; see `edgeopt targets`.")] = "host-cpu",
    passes: Annotated[str | None, typer.Option(
        "--passes", "-p",
        help="Pipeline text, e.g. \"cleanup,fuse-conv-bn,fold-constants{output_size_limit=4096}\". "
             "Default: cleanup,fuse-conv-bn,cleanup. See `edgeopt passes`.")] = None,
    config: Annotated[Path | None, typer.Option("--config", help="Pipeline from a .toml/.yaml file "
                                                "(instead of --passes).")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Output folder (default: "
                                             "<model>.<target>.edgeopt next to the model).")] = None,
    backend: Annotated[str | None, typer.Option("--backend", help="Override the target's default "
                                                "backend (onnxruntime, openvino, tvm, tensorrt; 'auto': "
                                                "TVM only where it measures faster than ONNX Runtime).")] = None,
    backend_option: Annotated[list[str] | None, typer.Option(
        "--backend-option", help="KEY=VALUE over the target's [backend_options.<backend>] (repeatable), "
                                 "e.g. trials=2000 for tvm, compress_to_fp16=true for openvino.")] = None,
    verify: Annotated[bool, typer.Option("--verify", help="After each pass, compare outputs with "
                                         "the input model; roll back a pass that breaks them.")] = False,
    plugin: PluginOption = None,
    print_after: Annotated[list[str] | None, typer.Option("--print-after", help="Print the IR after "
                                                          "this pass (repeatable; 'all' for every pass).")] = None,
    reproducers: Annotated[Path | None, typer.Option("--reproducers", help="Where a failing pass "
                                                     "writes its reproducer (default ./edgeopt-reproducers).")] = None,
    no_measure: Annotated[bool, typer.Option("--no-measure", help="Skip timing the artifact.")] = False,
) -> None:
    """Optimize MODEL for a target and write one folder: model, manifest.json, report.json."""
    from edgeopt.driver import CompileRequest, compile_model

    names = set(print_after or [])
    request = CompileRequest(
        model=model, target=target, passes=passes, config=config, out=out, backend=backend,
        backend_options=_key_values(backend_option or [], "--backend-option"),
        verify=verify, plugins=list(plugin or []), print_after=names - {"all"} or None,
        print_after_all="all" in names, reproducer_dir=reproducers, measure=not no_measure,
    )
    with console.status("compiling…") as status:
        result = compile_model(request, progress=lambda message: status.update(f"{message}…"))
    console.print(pass_table(result.pipeline.records, f"edgeopt compile {model.name} → {target}"))
    metrics = result.manifest["metrics"]
    summary = (f"nodes {metrics['nodes_before']} → {metrics['nodes_after']}, "
               f"max abs error {metrics['max_abs_error']:.2e}")
    if metrics.get("latency_ms") is not None:
        summary += f", {result.report['backend']} latency {metrics['latency_ms']:.2f} ms"
    console.print(f"{summary}, compile {result.seconds:.2f} s")
    # Warnings passes put in their notes (e.g. quantization calibrated on generated data) must
    # not hide in report.json.
    for record in result.pipeline.records:
        for note in record.notes:
            if note.upper().startswith("WARNING"):
                errors.print(f"[yellow]warning[/] ({escape(record.step)}): {escape(note.split(':', 1)[-1].strip())}")
    files = ", ".join([*sorted(result.manifest["files"]), "manifest.json"])
    console.print(f"wrote [bold]{escape(str(result.out))}[/] ({files})")


@app.command("inspect")
def inspect_command(model: Annotated[Path, typer.Argument(help="The ONNX model to describe.")]) -> None:
    """Describe MODEL: opset, inputs/outputs, op histogram, parameters and FLOPs."""
    from rich.table import Table

    from edgeopt.ir import AnalysisManager, load_model, parameter_count
    from edgeopt.ir.model_io import default_opset, model_bytes

    loaded = load_model(model)
    analyses = AnalysisManager()
    shapes = analyses.get(loaded, "shapes")
    costs = analyses.get(loaded, "costs")
    console.print(f"[bold]{escape(str(model))}[/]  opset {default_opset(loaded)}, IR v{loaded.ir_version}, "
                  f"producer {loaded.producer_name or '?'} {loaded.producer_version or ''}")
    io = Table("", "name", "dtype / shape", title="inputs and outputs")
    for value in loaded.graph.inputs:
        if not value.is_initializer():
            io.add_row("input", escape(value.name), escape(shapes[value.name].describe()))
    for value in loaded.graph.outputs:
        io.add_row("output", escape(value.name), escape(shapes[value.name].describe()))
    console.print(io)
    histogram = Counter(node.op_type for node in loaded.graph)
    flops_by_op: Counter[str] = Counter()
    for node, cost in costs.per_node.items():
        flops_by_op[node.op_type] += cost.flops
    ops = Table("op", "count", "GFLOPs", title=f"{len(loaded.graph)} nodes")
    for op, count in histogram.most_common():
        ops.add_row(op, str(count), f"{flops_by_op[op] / 1e9:.4f}")
    console.print(ops)
    console.print(f"parameters {parameter_count(loaded):,}  weights {model_bytes(loaded) / 2**20:.2f} MiB  "
                  f"FLOPs {costs.flops / 1e9:.3f} G (per sample, symbolic dims = 1)")


@app.command("passes")
def passes_command(plugin: PluginOption = None) -> None:
    """List registered passes (built-in and plugins) with their options."""
    from edgeopt.driver import load_plugins
    from edgeopt.passes import registered_passes

    load_plugins(list(plugin or []))
    console.print(passes_table(registered_passes()))


@app.command("targets")
def targets_command(plugin: PluginOption = None) -> None:
    """List hardware targets with their backends and peak figures."""
    from edgeopt.driver import load_plugins
    from edgeopt.targets import list_targets

    load_plugins(list(plugin or []))
    console.print(targets_table(list_targets()))


# Commands that live in their own modules (edgeopt/cli_<name>.py) register on `app` when
# imported; add a module here to add its commands.
COMMAND_MODULES: tuple[str, ...] = ("edgeopt.cli_cost",)
for _module in COMMAND_MODULES:
    importlib.import_module(_module)


def _fail(message: str, code: int) -> int:
    errors.print(f"[red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    return code


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app, mapping errors to one line and an exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    # Claim the root logger first: libraries that call logging.basicConfig(level=INFO) on import
    # (onnxruntime.quantization does) would otherwise print their INFO lines into our output.
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        # Standalone mode: typer reports its own usage errors (exit 2) and exits
        # via SystemExit; our errors and bugs propagate to the handlers below.
        app(args=args, prog_name="edgeopt")
        return 0
    except SystemExit as done:
        return done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    except EdgeoptError as error:
        if debug:
            traceback.print_exc()
            details = getattr(error, "details", None)
            if details:
                errors.print(details, highlight=False)
        code = _fail(str(error).splitlines()[0], error.exit_code)
        if isinstance(error, PassFailedError) and not debug:
            errors.print("run with --debug for the traceback", highlight=False)
        return code
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
    except Exception as error:
        if debug:
            traceback.print_exc()
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        return _fail(f"internal error: {type(error).__name__}: {first} (run with --debug for the "
                     "traceback and report it)", 70)


if __name__ == "__main__":
    sys.exit(main())
