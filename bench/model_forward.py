"""Measures the forward time of rtrl's networks at the sizes the inference benchmark uses.

    python bench/model_forward.py                      # cpu, 1 torch thread, batch 1
    python bench/model_forward.py --device cuda --batch 1 8

Prints one row per network: parameter count and the median and 90th percentile of `--repeats`
forward passes (after warm-up passes) on a 4x84x84 uint8 stack, as an inference replica runs them
(inference mode, uint8 scaled inside the network). Use the numbers to pick bench/replica.py's --occupy-ms
or a deadline for a given model on a given machine; they are only comparable with rows of the same run.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from rtrl.models import QNetwork, default_model_config, parameter_count  # noqa: E402

OBSERVATION_SHAPE = (4, 84, 84)
ACTIONS = 6
# (arch, width): the default Nature CNN and ImpalaCNN at about 1M, 10M and 100M parameters.
NETWORKS = (("nature_cnn", 1), ("impala_cnn", 1), ("impala_cnn", 7), ("impala_cnn", 29))


def forward_times_ms(model: QNetwork, batch: torch.Tensor, warmup: int, repeats: int) -> np.ndarray:
    times = []
    with torch.inference_mode():
        for i in range(warmup + repeats):
            started = time.perf_counter()
            model(batch)
            if batch.device.type == "cuda":
                # Kernels are asynchronous; the answer is only there once the device is done.
                torch.cuda.synchronize()
            if i >= warmup:
                times.append((time.perf_counter() - started) * 1000.0)
    return np.array(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1, as a replica)")
    parser.add_argument("--batch", type=int, nargs="+", default=[1])
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--max-width", type=int, default=29, help="skip ImpalaCNN widths above this")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"device {device}, {args.threads} torch thread(s), observation {list(OBSERVATION_SHAPE)} uint8")
    print(f"{'network':<16} {'parameters':>12} {'batch':>5} {'p50 ms':>10} {'p90 ms':>10}")
    for arch, width in NETWORKS:
        if width > args.max_width:
            continue
        config = default_model_config(OBSERVATION_SHAPE, ACTIONS, arch, width)
        model = QNetwork(config).to(device).eval()
        name = f"{arch}" + (f" k={width}" if arch == "impala_cnn" else "")
        for batch_size in args.batch:
            batch = torch.randint(0, 256, (batch_size, *OBSERVATION_SHAPE), dtype=torch.uint8, device=device)
            times = forward_times_ms(model, batch, args.warmup, args.repeats)
            p50, p90 = np.percentile(times, [50, 90])
            print(f"{name:<16} {parameter_count(model):>12,} {batch_size:>5} {p50:>10.2f} {p90:>10.2f}", flush=True)


if __name__ == "__main__":
    main()
