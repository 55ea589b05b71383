"""python -m tools.zoo --out DIR --size small|full [--only a,b] [--force]: build and tabulate."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .build import ZOO, build
from .export import summarize
from .spec import SIZES


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.zoo", description=__doc__)
    p.add_argument("--out", type=Path, required=True, help="directory for the .onnx files")
    p.add_argument("--size", choices=SIZES, default="small")
    p.add_argument("--only", default="", help="comma-separated model names (default: all)")
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="re-export even if the file exists")
    a = p.parse_args(argv)
    names = [n.strip() for n in a.only.split(",") if n.strip()] or list(ZOO)
    unknown = [n for n in names if n not in ZOO]
    if unknown:
        p.error(f"unknown model(s): {', '.join(unknown)}; known: {', '.join(ZOO)}")
    print(f"{'name':<16} {'family':<11} {'nodes':>6} {'params':>11} {'MB':>7} {'ops':>4} "
          f"{'sec':>6}  top op types", flush=True)
    for n in names:
        t0 = time.perf_counter()
        try:
            path = build(n, a.out, a.size, a.opset, a.seed, force=a.force)
        except (OSError, ValueError) as exc:  # unwritable --out, bad --opset: one line, exit 1
            print(f"error: {n}: {exc}", file=sys.stderr)
            return 1
        dt = time.perf_counter() - t0
        s = summarize(path)
        top = " ".join(f"{k}:{v}" for k, v in list(s.op_counts.items())[:6])
        print(f"{n:<16} {ZOO[n].family:<11} {s.nodes:>6} {s.params:>11,} "
              f"{s.file_bytes / 2**20:>7.2f} {len(s.op_counts):>4} {dt:>6.1f}  {top}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
