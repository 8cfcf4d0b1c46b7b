"""A benchmark inference replica: the real server (`rtrl.services.inference`) serving a slower or a free model.

    python bench/replica.py --occupy-ms 33     # every forward pass holds the replica at least 33 ms
    python bench/replica.py --zero-cost        # no forward pass at all: zeros for every action, at once

Everything but the forward pass is the production replica's: settings read from the same RTRL_*
environment variables, the gRPC server, the batcher, ActStream, the act socket, checkpoint loading,
health, registration, the same "listening on HOST:PORT" log line. Only `Policy._forward_batch` is
replaced:
- `--occupy-ms X` runs the real forward pass, then sleeps for what is left of X ms: the replica is as
  busy as an accelerator running a bigger model, without spending a CPU core while it waits (the
  emulators keep the cores);
- `--zero-cost` answers zeros shaped [N, action_count] without touching the network, so that what is
  measured is the serving path itself (the fresh network is still built once, for the first call).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from rtrl.services.inference.__main__ import main as inference_main  # noqa: E402
from rtrl.services.inference.policy import Policy, ServedModel  # noqa: E402
from rtrl.services.inference.server import PolicyFactory  # noqa: E402
from rtrl.services.inference.settings import InferenceSettings  # noqa: E402


class BenchPolicy(Policy):
    """The production policy with a forward pass that takes at least `occupy_s`, or costs nothing."""

    occupy_s = 0.0
    zero_cost = False

    def _forward_batch(self, served: ServedModel, observations: np.ndarray) -> np.ndarray:
        if self.zero_cost:
            return np.zeros((len(observations), served.config.action_count), dtype=np.float32)
        started = time.perf_counter()
        result = super()._forward_batch(served, observations)
        occupied_s = time.perf_counter() - started
        if occupied_s < self.occupy_s:
            time.sleep(self.occupy_s - occupied_s)
        return result


def bench_policy_factory(occupy_ms: float, zero_cost: bool) -> PolicyFactory:
    """What `serve` builds the replica's policy with: a BenchPolicy from the replica's own settings."""

    def build(settings: InferenceSettings, replica_id: str) -> Policy:
        policy = BenchPolicy.from_settings(settings, replica_id)
        assert isinstance(policy, BenchPolicy)
        # Set before the first call: only calls run the forward pass.
        policy.occupy_s = occupy_ms / 1000.0
        policy.zero_cost = zero_cost
        cost = "zero-cost policy" if zero_cost else f"forward passes hold it at least {occupy_ms:.1f} ms"
        logging.getLogger(__name__).info("benchmark replica: %s", cost)
        return policy

    return build


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cost = parser.add_mutually_exclusive_group()
    cost.add_argument(
        "--occupy-ms",
        type=float,
        default=0.0,
        help="every forward pass holds the replica at least this long (a sleep after the real pass); 0: off",
    )
    cost.add_argument("--zero-cost", action="store_true", help="answer zeros at once, without a forward pass")
    args = parser.parse_args()
    if args.occupy_ms < 0:
        parser.error(f"--occupy-ms is {args.occupy_ms}; give 0 or more milliseconds")
    # The production entry point (logging, CPUs, settings, errors), with this policy.
    return inference_main(bench_policy_factory(args.occupy_ms, args.zero_cost), "bench replica")


if __name__ == "__main__":
    sys.exit(main())
