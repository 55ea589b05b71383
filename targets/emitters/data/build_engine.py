#!/usr/bin/env python3
"""Build a TensorRT engine from this bundle's model.onnx on the device that will run it.

Engines are specific to the GPU, TensorRT version and driver, so edgeopt ships the
ONNX plus these settings and the engine is built on the target (a Jetson, an L4...).

    python3 build_engine.py                      # settings from build_config.json
    python3 build_engine.py --no-fp16 --workspace-mb 512 --engine out.plan
    python3 build_engine.py --check inputs.npz   # also run the engine and save outputs

Nothing imports tensorrt before the arguments are parsed, so --help and --dry-run work
on any machine.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    config_path = HERE / "build_config.json"
    config = json.loads(config_path.read_text()) if config_path.exists() else {}
    parser = argparse.ArgumentParser(description="Build a TensorRT engine from model.onnx.")
    parser.add_argument("--onnx", default=str(HERE / config.get("onnx", "model.onnx")), help="ONNX model")
    parser.add_argument("--engine", default=str(HERE / config.get("engine", "model.engine")), help="engine file")
    parser.add_argument("--fp16", action=argparse.BooleanOptionalAction, default=config.get("fp16", False),
                        help="allow FP16 kernels")
    parser.add_argument("--int8", action=argparse.BooleanOptionalAction, default=config.get("int8", False),
                        help="INT8 from the model's explicit Q/DQ nodes (no calibrator)")
    parser.add_argument("--sparsity", action=argparse.BooleanOptionalAction,
                        default=config.get("sparsity", False), help="allow 2:4 structured-sparse kernels")
    parser.add_argument("--workspace-mb", type=int, default=config.get("workspace_mb", 1024),
                        help="workspace memory pool limit in MiB")
    parser.add_argument("--dla-core", type=int, default=config.get("dla_core", -1),
                        help="run on this DLA core (-1: GPU only)")
    parser.add_argument("--gpu-fallback", action=argparse.BooleanOptionalAction,
                        default=config.get("gpu_fallback", True), help="layers the DLA lacks run on the GPU")
    parser.add_argument("--profile", action="append", default=None, metavar="INPUT=MIN:OPT:MAX",
                        help="shape range of an input, dims joined by x: images=1x3x224x224:4x3x224x224:8x3x224x224")
    parser.add_argument("--check", default=None, metavar="NPZ",
                        help="after building, run the engine on these inputs and save outputs to NPZ.out.npz")
    parser.add_argument("--dry-run", action="store_true", help="print the settings as JSON and stop")
    args = parser.parse_args(argv)
    profiles = config.get("profile", {})
    for item in args.profile or []:
        name, _, ranges = item.partition("=")
        parts = ranges.split(":")
        if not name or len(parts) != 3:
            parser.error(f"--profile {item!r}: expected INPUT=MIN:OPT:MAX")
        profiles[name] = [[int(d) for d in part.split("x")] for part in parts]
    args.profiles = profiles
    return args


def build(args: argparse.Namespace) -> None:
    import tensorrt as trt  # imported only now: --help and --dry-run need no TensorRT

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(args.onnx):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        sys.exit("ONNX parse failed:\n" + "\n".join(errors))
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, args.workspace_mb << 20)
    if args.fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    if args.int8:
        config.set_flag(trt.BuilderFlag.INT8)  # scales come from the Q/DQ nodes in the graph
    if args.sparsity:
        config.set_flag(trt.BuilderFlag.SPARSE_WEIGHTS)
    if args.dla_core >= 0:
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = args.dla_core
        if args.gpu_fallback:
            config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    if args.profiles:
        profile = builder.create_optimization_profile()
        for name, (low, opt, high) in args.profiles.items():
            profile.set_shape(name, low, opt, high)
        config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        sys.exit("engine build failed (see the TensorRT log above)")
    Path(args.engine).write_bytes(bytes(serialized))
    print(f"wrote {args.engine}")


def check(args: argparse.Namespace) -> None:
    """Run the engine once on the inputs in ``args.check`` (torch CUDA tensors as buffers)."""
    import numpy as np
    import tensorrt as trt
    import torch

    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engine = runtime.deserialize_cuda_engine(Path(args.engine).read_bytes())
    context = engine.create_execution_context()
    feeds = dict(np.load(args.check))
    buffers = {}
    for index in range(engine.num_io_tensors):
        name = engine.get_tensor_name(index)
        if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
            buffers[name] = torch.from_numpy(np.ascontiguousarray(feeds[name])).cuda()
            context.set_input_shape(name, tuple(feeds[name].shape))
    for index in range(engine.num_io_tensors):
        name = engine.get_tensor_name(index)
        if engine.get_tensor_mode(name) == trt.TensorIOMode.OUTPUT:
            dtype = torch.from_numpy(np.zeros(1, dtype=trt.nptype(engine.get_tensor_dtype(name)))).dtype
            buffers[name] = torch.empty(tuple(context.get_tensor_shape(name)), dtype=dtype, device="cuda")
    for name, tensor in buffers.items():
        context.set_tensor_address(name, tensor.data_ptr())
    stream = torch.cuda.Stream()
    context.execute_async_v3(stream.cuda_stream)
    stream.synchronize()
    outputs = {name: t.cpu().numpy() for name, t in buffers.items() if name not in feeds}
    np.savez(args.check + ".out.npz", **outputs)
    print(f"wrote {args.check}.out.npz")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.dry_run:
        settings = {k: v for k, v in vars(args).items() if k not in ("profile", "dry_run")}
        print(json.dumps(settings, indent=2))
        return
    build(args)
    if args.check:
        check(args)


if __name__ == "__main__":
    main()
