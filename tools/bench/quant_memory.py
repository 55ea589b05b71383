"""Peak memory of calibration (edgeopt's streaming histograms, and ORT's calibrater) in fresh child processes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tools.bench.quant_peers import prepare_fp32

_PEAK = """
def reset_peak():
    # Linux: writing 5 to clear_refs resets VmHWM, so the peak seen next is the calibration's own.
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
def status_mib(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
"""

_MEMORY_CHILD = _PEAK + """
import sys, time
from edgeopt.ir import load_model
from edgeopt.passes.quant.placement import RULE_SETS, candidate_layers, plan_qdq
from edgeopt.passes.quant.statistics import collect_statistics
from edgeopt.ir.reference import ReferenceExecutor
model = load_model(sys.argv[1])
rules = RULE_SETS["onnxruntime"]
plan = plan_qdq(model, rules, [n.name for n in candidate_layers(model, rules)])
reset_peak()
before = status_mib("VmRSS")
executor = ReferenceExecutor()  # no torch in this process: ids within the vocabulary, random masks
began = time.perf_counter()
samples = (executor.generate_inputs(model, seed=i) for i in range(int(sys.argv[3])))
stats = collect_statistics(model, plan.activations, samples)
peak = status_mib("VmHWM")
print(f"{peak:.1f} {before:.1f} {stats.samples} {len(stats.histograms)} {stats.nbytes}"
      f" {time.perf_counter() - began:.1f}")
"""


_ORT_MEMORY_CHILD = _PEAK + """
import sys
from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator
from edgeopt.ir import load_model
from edgeopt.ir.reference import ReferenceExecutor
model = load_model(sys.argv[1])
executor = ReferenceExecutor()
class Reader:
    def __init__(self): self.it = (executor.generate_inputs(model, seed=i) for i in range(int(sys.argv[3])))
    def get_next(self): return next(self.it, None)
reset_peak()
before = status_mib("VmRSS")
calibrator = create_calibrator(sys.argv[1], calibrate_method=CalibrationMethod.Percentile,
                               augmented_model_path=sys.argv[4])
calibrator.collect_data(Reader())
calibrator.compute_data()
print(f"{status_mib('VmHWM'):.1f} {before:.1f}")
"""


def ort_calibration_memory(size: str, work: Path, samples: int) -> dict[str, float]:
    """Peak RSS (MiB) of ORT's own percentile calibrater on the same model (it keeps every activation)."""
    fp32 = work / "bert-fp32.onnx"
    out = subprocess.run([sys.executable, "-c", _ORT_MEMORY_CHILD, str(fp32), size, str(samples),
                          str(work / "bert-augmented.onnx")], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2])
    peak, before = out.stdout.split()[-2:]
    return {"ort_percentile_samples": samples, "ort_percentile_peak_rss_mib": float(peak),
            "ort_rss_before_mib": float(before)}


def calibration_memory(size: str, work: Path, samples: int = 256) -> dict[str, float]:
    """Peak RSS (MiB) of a fresh process that loads BERT and calibrates every candidate tensor."""
    from tools.zoo import build

    fp32 = prepare_fp32(build("bert", work / "zoo", size=size), work / "bert-fp32.onnx")
    out = subprocess.run([sys.executable, "-c", _MEMORY_CHILD, str(fp32), size, str(samples)], capture_output=True,
                         text=True, check=True, cwd=Path(__file__).resolve().parents[2])
    peak, before, seen, tensors, nbytes, seconds = out.stdout.split()[-6:]
    return {"peak_rss_mib": float(peak), "rss_before_mib": float(before), "samples": int(seen),
            "tensors": int(tensors), "histogram_mib": int(nbytes) / 2**20, "seconds": float(seconds)}
