"""Load and save models, with the checks that make an untrusted file safe to open.

Loading goes through onnx-ir so external tensors stay memory-mapped and a model
over 2 GB never has to be read whole; the checks here turn every way a file can
be wrong into a one-line ``ModelLoadError`` that names the file.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import onnx
import onnx_ir as ir
from google.protobuf.message import DecodeError

from edgeopt.ir.errors import ModelLoadError

# The oldest default-domain opset we accept: below 7 the operator semantics
# (broadcasting, BatchNormalization's spatial attr) differ enough that passes
# written against the current spec would be wrong.
MIN_OPSET = 7
# The newest opset we test with both onnx (checker, shape inference) and ONNX
# Runtime (the reference executor); a newer file is refused rather than half-run.
MAX_OPSET = min(onnx.defs.onnx_opset_version(), 25)

# Protobuf cannot serialize a message over 2 GiB; above this the weights go
# to an external data file next to the model.
PROTOBUF_LIMIT = 2**31 - 1


def _tensors_of_graph(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        yield from _tensors_of_attributes(node.attribute)


def _tensors_of_attributes(
    attributes: list[onnx.AttributeProto],
) -> Iterator[onnx.TensorProto]:
    for attr in attributes:
        if attr.HasField("t"):
            yield attr.t
        yield from attr.tensors
        if attr.HasField("g"):
            yield from _tensors_of_graph(attr.g)
        for sub in attr.graphs:
            yield from _tensors_of_graph(sub)


def _all_tensors(proto: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    yield from _tensors_of_graph(proto.graph)
    for function in proto.functions:
        for node in function.node:
            yield from _tensors_of_attributes(node.attribute)


def check_external_data(proto: onnx.ModelProto, model_dir: Path, path: Path) -> None:
    """Refuse external-data locations that escape the model's folder or do not exist."""
    root = model_dir.resolve()
    for tensor in _all_tensors(proto):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {entry.key: entry.value for entry in tensor.external_data}
        location = info.get("location", "")
        if not location or os.path.isabs(location):
            raise ModelLoadError(
                f"{path}: tensor '{tensor.name}' has external data at '{location}',"
                " which is not a path relative to the model's folder"
            )
        target = (root / location).resolve()
        if not target.is_relative_to(root):
            raise ModelLoadError(
                f"{path}: tensor '{tensor.name}' points its external data outside the"
                f" model's folder ('{location}'); refusing to read it"
            )
        if not target.is_file():
            raise ModelLoadError(
                f"{path}: external data file '{location}' of tensor '{tensor.name}' is missing"
            )


def default_opset(model: ir.Model) -> int:
    """The model's default-domain (ai.onnx) opset version."""
    version = model.opset_imports.get("", model.opset_imports.get("ai.onnx"))
    if version is None:
        raise ModelLoadError(f"model '{model.graph.name}' imports no ai.onnx opset")
    return version


def _read_proto(path: Path) -> onnx.ModelProto:
    if not path.exists():
        raise ModelLoadError(f"{path}: no such file")
    if path.is_dir():
        raise ModelLoadError(f"{path}: is a folder, not an ONNX file")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except DecodeError as error:
        raise ModelLoadError(
            f"{path}: not a valid ONNX protobuf (truncated or corrupt: {error})"
        ) from error
    except Exception as error:  # onnx raises plain Exceptions for unreadable files
        raise ModelLoadError(f"{path}: cannot be read as ONNX ({error})") from error
    # Arbitrary bytes can decode as an empty or nonsense message without error.
    if proto.ir_version <= 0 or not proto.HasField("graph") or not proto.graph.output:
        raise ModelLoadError(f"{path}: not an ONNX model (no IR version or no graph outputs)")
    return proto


def _check_opset(proto: onnx.ModelProto, path: Path) -> None:
    versions = {entry.domain: entry.version for entry in proto.opset_import}
    version = versions.get("", versions.get("ai.onnx"))
    if version is None:
        raise ModelLoadError(f"{path}: imports no ai.onnx opset")
    if not MIN_OPSET <= version <= MAX_OPSET:
        raise ModelLoadError(
            f"{path}: opset {version} is not supported (edgeopt handles opsets"
            f" {MIN_OPSET}..{MAX_OPSET})"
        )


def _check_graph(proto: onnx.ModelProto, path: Path) -> None:
    has_external = any(t.data_location == onnx.TensorProto.EXTERNAL for t in _all_tensors(proto))
    try:
        # Given a path, the checker resolves external data against the model's
        # folder (already vetted above) instead of the working directory.
        onnx.checker.check_model(str(path) if has_external else proto)
    except onnx.checker.ValidationError as error:
        first_line = str(error).strip().splitlines()[0]
        raise ModelLoadError(f"{path}: invalid ONNX graph: {first_line}") from error


def load_model(path: str | os.PathLike[str], *, check: bool = True) -> ir.Model:
    """Load an ONNX file into the IR; external tensors stay lazy (memory-mapped)."""
    path = Path(path)
    proto = _read_proto(path)
    _check_opset(proto, path)
    check_external_data(proto, path.parent, path)
    if check:
        _check_graph(proto, path)
    model = ir.serde.deserialize_model(proto)
    ir.external_data.set_base_dir(model.graph, path.parent)
    return model


def model_bytes(model: ir.Model) -> int:
    """Bytes of every initializer, without loading external tensors."""
    return sum(
        value.const_value.nbytes
        for graph in model.graphs()
        for value in graph.initializers.values()
        if value.const_value is not None
    )


def save_model(
    model: ir.Model,
    path: str | os.PathLike[str],
    *,
    external_data: bool | None = None,
    size_threshold_bytes: int = 1024,
) -> list[Path]:
    """Save the model; weights go to ``<name>.data`` when the protobuf would pass 2 GB.

    ``external_data=None`` decides by size. Returns every file written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if external_data is None:
        # Leave headroom for the graph itself next to the weights.
        external_data = model_bytes(model) > PROTOBUF_LIMIT - 64 * 2**20
    if not external_data:
        # Weights that were external on load would keep pointing at the source
        # folder; read them in so the saved file stands alone.
        if any(_external_tensors(model)):
            ir.external_data.load_to_model(model)
        ir.save(model, path, external_data=None)
        return [path]
    data_name = f"{path.name}.data"
    ir.save(model, path, external_data=data_name, size_threshold_bytes=size_threshold_bytes)
    return [path, path.parent / data_name]


def _external_tensors(model: ir.Model) -> Iterator[ir.ExternalTensor]:
    for graph in model.graphs():
        for value in graph.initializers.values():
            if isinstance(value.const_value, ir.ExternalTensor):
                yield value.const_value
