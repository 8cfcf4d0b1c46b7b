"""What TLS, mutual TLS and the token cost on the decision path: Act round trips to a real replica.

    python bench/grpc_security.py --calls 400 --rounds 5

Starts one inference replica per mode in this process (plaintext; token; TLS; mutual TLS + token),
with a throwaway CA and certificates made by the security tests' PKI helper (needs the dev extra's
`cryptography`). Sends Act with an Atari-sized observation (4x84x84 uint8), one call at a time, the
modes interleaved round by round so that load from other work on the machine falls on all of them
alike. Channels are opened once, as the gateway keeps them: the handshake is not on the decision path.
Prints p50/p90/p99 round trips and each mode's ratio to plaintext, measured side by side in one run.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from rtrl.grpc_util import create_channel
from rtrl.security import SecuritySettings
from rtrl.services.inference.server import create_server
from rtrl.services.inference.settings import InferenceSettings
from rtrl.tensors import to_proto
from rtrl.v1 import inference_pb2, inference_pb2_grpc

# The PKI helper lives with the security tests; the benchmark reuses it rather than copying it.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "integration" / "security"))
from security_pki import TOKEN, make_pki, tls_env

OBSERVATION = np.zeros((4, 84, 84), dtype=np.uint8)
ACTIONS = 6
CALL_TIMEOUT_S = 5.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=400, help="Act calls per mode per round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory(prefix="rtrl-bench-security-") as tmp:
        pki = make_pki(Path(tmp) / "pki")
        modes = {
            "plaintext": {},
            "token": {"RTRL_AUTH_TOKEN": TOKEN},
            "TLS": tls_env(pki),
            "mutual TLS + token": tls_env(pki, mutual=True, token=TOKEN),
        }
        request = inference_pb2.ActRequest(observation=to_proto(OBSERVATION), gateway_id="bench", action_count=ACTIONS)
        servers, stubs, channels = [], {}, []
        for name, env in modes.items():
            security = SecuritySettings.from_env(env)
            settings = InferenceSettings(
                host="127.0.0.1",
                port=0,
                replica_id=name,
                checkpoint_dir=str(Path(tmp) / "checkpoints"),
                device="cpu",
                epsilon_start=0.0,
                security=security,
            )
            server, port = create_server(settings)
            server.start()
            servers.append(server)
            # The client side of each mode: a service's own settings (its certificate as client certificate).
            channel = create_channel(f"127.0.0.1:{port}", security)
            channels.append(channel)
            stubs[name] = inference_pb2_grpc.InferenceServiceStub(channel)
            for _ in range(20):  # connect, build the fresh policy, warm up
                stubs[name].Act(request, timeout=30.0)

        samples: dict[str, list[float]] = {name: [] for name in modes}
        for _round in range(args.rounds):
            for name, stub in stubs.items():
                for _ in range(args.calls):
                    started = time.perf_counter()
                    stub.Act(request, timeout=CALL_TIMEOUT_S)
                    samples[name].append((time.perf_counter() - started) * 1000.0)

        for channel in channels:
            channel.close()
        for server in servers:
            server.stop(0.5).wait()

    base_p50, base_p99 = np.percentile(samples["plaintext"], [50, 99])
    print(f"Act round trip, {OBSERVATION.nbytes} B observation, {args.rounds} x {args.calls} calls per mode")
    print(f"{'mode':<20} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'p50 ratio':>10} {'p99 ratio':>10}")
    for name, values in samples.items():
        p50, p90, p99 = np.percentile(values, [50, 90, 99])
        print(f"{name:<20} {p50:8.3f} {p90:8.3f} {p99:8.3f} {p50 / base_p50:10.2f} {p99 / base_p99:10.2f}")


if __name__ == "__main__":
    main()
