"""Measures the realtime loop end to end: `rtrl up` on ALE Pong at 60 fps for a fixed time, then a table.

    python bench/realtime_loop.py --duration 60 --replicas 1 2

Each row is one full run of the real stack (embedded Redis, learner training beside it, N replicas,
the gateway). Rows run one after the other in the same invocation so that they share the machine's
conditions; compare them with each other, not with numbers from another day.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from rtrl.local_redis import free_port


def run_stack(duration_s: float, replicas: int, workdir: Path) -> dict:
    summary = workdir / f"summary-{replicas}.json"
    base = free_port()
    command = [
        sys.executable, "-m", "rtrl.cli", "up",
        "--duration", str(duration_s),
        "--inference-replicas", str(replicas),
        "--gateway-port", str(free_port()),
        "--learner-port", str(free_port()),
        "--inference-base-port", str(base),
        "--checkpoint-dir", str(workdir / f"checkpoints-{replicas}"),
        "--run-dir", str(workdir / "runs"),
        "--summary-json", str(summary),
    ]  # fmt: skip
    print(
        f"running the stack with {replicas} replica(s) for {duration_s:.0f} s ...",
        file=sys.stderr,
        flush=True,
    )
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return json.loads(summary.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds each run lasts (default 60)")
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 2], help="replica counts to run")
    args = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory(prefix="rtrl-bench-") as tmp:
        for replicas in args.replicas:
            s = run_stack(args.duration, replicas, Path(tmp))
            g, lr = s["gateway"], s["learner"]
            rows.append(
                {
                    "replicas": replicas,
                    "fps": g["measured_frame_rate_hz"],
                    "frames_late": int(g["frames_late"]),
                    "decisions": int(g["decisions"]),
                    "coverage_%": 100 * g["coverage"],
                    "stale_p50_fr": g["staleness_frames"]["p50"],
                    "stale_p99_fr": g["staleness_frames"]["p99"],
                    "overhead_p50_ms": g["decision_overhead_ms"]["p50"],
                    "overhead_p99_ms": g["decision_overhead_ms"]["p99"],
                    "late": int(g["replies_late"]),
                    "superseded": int(g["replies_superseded"]),
                    "published": int(g["transitions_published"]),
                    "dropped": int(g["transitions_dropped"]),
                    "consumed": int(lr["transitions_consumed"]),
                    "updates": int(lr["updates"]),
                    "upd_per_s": lr["updates"] and lr["updates_per_s"],
                    "ckpt_v": int(lr["checkpoint_version"]),
                }
            )
    columns = list(rows[0])
    widths = {c: max(len(c), *(len(fmt(r[c])) for r in rows)) for c in columns}
    print(" | ".join(c.rjust(widths[c]) for c in columns))
    print("-+-".join("-" * widths[c] for c in columns))
    for r in rows:
        print(" | ".join(fmt(r[c]).rjust(widths[c]) for c in columns))


def fmt(value: object) -> str:
    return f"{value:.2f}" if isinstance(value, float) else str(value)


if __name__ == "__main__":
    main()
