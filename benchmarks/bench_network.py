"""Benchmark: ways to run the nnU-Net network on a CPU, at equal output, in one run.

The network is the field-sized one of ``bench_inference.py`` (6 stages, 32
to 320 features, patch 160x224x64 in nnU-Net's array order), one patch of
random input, as nnU-Net's sliding window feeds it. Each variant is compared
with nnU-Net's own call (``torch.inference_mode``, contiguous tensors, the
threads PyTorch chose): median seconds of ``--repeats`` runs, interleaved so
that a change of machine load hits every variant alike, and the largest
difference of the softmax outputs (a variant counts only below 1e-3).

Variants: ``no_grad`` instead of ``inference_mode``; channels-last 3D memory
format; one thread instead of all; ``torch.compile`` when it builds here.
(onnxruntime and OpenVINO are not installed in the project's environment.)

    .venv/bin/python benchmarks/bench_network.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_inference import make_field_size_model  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="also try torch.compile (slow to build)")
    args = parser.parse_args()

    import torch

    from SpinalCordSegLib.inference.engine import InferenceOptions, SegmentationEngine

    with tempfile.TemporaryDirectory() as root:
        engine = SegmentationEngine(make_field_size_model(Path(root)), InferenceOptions(device="cpu", crop=False))
    network = engine._predictor.network.eval()
    patch = engine._predictor.configuration_manager.patch_size
    generator = torch.Generator().manual_seed(0)
    x = torch.randn((1, 1, *patch), generator=generator)
    threads = torch.get_num_threads()
    channels_last = copy.deepcopy(network).to(memory_format=torch.channels_last_3d)
    x_last = x.to(memory_format=torch.channels_last_3d)

    def run(model, tensor, mode=torch.inference_mode, n_threads=threads):
        torch.set_num_threads(n_threads)
        with mode():
            return torch.softmax(model(tensor), 1)

    variants = {
        "nnU-Net (inference_mode)": lambda: run(network, x),
        "no_grad": lambda: run(network, x, torch.no_grad),
        "channels_last_3d": lambda: run(channels_last, x_last),
        "1 thread": lambda: run(network, x, n_threads=1),
    }
    if args.compile:
        compiled = torch.compile(network)
        variants["torch.compile"] = lambda: run(compiled, x)
    print(f"patch {list(patch)}, {threads} threads, load average {os.getloadavg()[0]:.1f} "
          f"({os.cpu_count()} CPUs)", flush=True)
    reference = variants["nnU-Net (inference_mode)"]().clone()
    times = {name: [] for name in variants}
    differences = {}
    for _ in range(args.repeats):
        for name, variant in variants.items():
            start = time.perf_counter()
            output = variant()
            times[name].append(time.perf_counter() - start)
            differences[name] = float((output.to(memory_format=torch.contiguous_format) - reference).abs().max())
    base = statistics.median(times["nnU-Net (inference_mode)"])
    for name in variants:
        median = statistics.median(times[name])
        print(f"{name:>26}: {median:7.2f} s  x{base / median:5.2f}  max|diff| {differences[name]:.1e}", flush=True)
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
