"""What watching costs the clock: decision overhead and coverage with and without the dashboard, in one run.

    python bench/dashboard_overhead.py --phases 6 --phase-seconds 20

The gateway runs in this process on ALE Pong at 60 fps (its gRPC server included, as in production),
with real inference replicas and the learner as processes and an embedded Redis. Phases alternate:
without the dashboard, then with it (the dashboard process subscribed to the frame stream and
polling every service at its refresh rate, and the page open in headless Chromium, or with
`--viewer sse` a process reading its event stream). Each phase's numbers come from exactly the
decisions and frames of that phase (the gateway's measurement windows, cut at the phase's counters).
The first seconds after starting or stopping the dashboard are not measured.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from rtrl.grpc_util import health_status
from rtrl.local_redis import LocalRedis, free_port
from rtrl.services.env_gateway.server import Gateway, create_server
from rtrl.services.env_gateway.settings import GatewaySettings

SETTLE_S = 3.0
SSE_READER = """
import sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=30) as stream:
    while stream.readline():
        pass
"""


@dataclass
class PhaseResult:
    dashboard: bool
    overhead_ms: np.ndarray
    tick_cpu_us: np.ndarray
    decisions: int
    fresh: int
    frames: int
    frames_late: int
    seconds: float
    viewer_cpu_s: float = 0.0


@dataclass
class Children:
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def spawn(self, module: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
        with open(log, "ab") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", module],
                env={**os.environ, **env, "PYTHONUNBUFFERED": "1"},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.processes.append(process)
        return process

    def stop_all(self) -> None:
        for process in self.processes:
            stop(process)


def stop(process: subprocess.Popen[Any]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its reaped children so far (Linux /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(value) for value in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(root: int) -> float:
    """CPU of `root` and every live descendant (Chromium runs many processes)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parts = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(parts[1]), []).append(int(stat.parent.name))
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        total += cpu_seconds(pid)
        todo.extend(children.get(pid, []))
    return total


def wait_http(url: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {timeout_s:.0f} s")


class Counters:
    def __init__(self, gateway: Gateway) -> None:
        clock, mailbox = gateway.clock, gateway.mailbox
        self.accepted = mailbox.replies_accepted
        self.decisions = clock.decisions
        self.fresh = clock.decisions_fresh
        self.frames = clock.frame
        self.frames_late = clock.frames_late
        self.time_s = time.monotonic()


def measure(gateway: Gateway, seconds: float, dashboard: bool) -> PhaseResult:
    start = Counters(gateway)
    time.sleep(seconds)
    end = Counters(gateway)
    accepted, frames = end.accepted - start.accepted, end.frames - start.frames
    overhead = gateway.mailbox.decision_overhead_ms.values()
    tick_cpu = gateway.clock.tick_cpu_us.values()
    if accepted > len(overhead) or frames > len(tick_cpu):
        raise RuntimeError("a phase outgrew the gateway's measurement windows; use shorter phases")
    return PhaseResult(
        dashboard=dashboard,
        overhead_ms=overhead[len(overhead) - accepted :],
        tick_cpu_us=tick_cpu[len(tick_cpu) - frames :],
        decisions=end.decisions - start.decisions,
        fresh=end.fresh - start.fresh,
        frames=frames,
        frames_late=end.frames_late - start.frames_late,
        seconds=end.time_s - start.time_s,
    )


def summarize(phases: list[PhaseResult]) -> dict[str, float]:
    overhead = np.concatenate([p.overhead_ms for p in phases])
    tick = np.concatenate([p.tick_cpu_us for p in phases])
    decisions = sum(p.decisions for p in phases)
    seconds = sum(p.seconds for p in phases)
    return {
        "decisions": decisions,
        "coverage": sum(p.fresh for p in phases) / decisions,
        "overhead p50 (ms)": float(np.percentile(overhead, 50)),
        "overhead p90 (ms)": float(np.percentile(overhead, 90)),
        "overhead p99 (ms)": float(np.percentile(overhead, 99)),
        "frame rate (fps)": sum(p.frames for p in phases) / seconds,
        "frames late (%)": 100.0 * sum(p.frames_late for p in phases) / sum(p.frames for p in phases),
        "clock tick CPU p50 (us)": float(np.percentile(tick, 50)),
        "clock tick CPU p99 (us)": float(np.percentile(tick, 99)),
        "viewer CPU (cores)": sum(p.viewer_cpu_s for p in phases) / seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--phases", type=int, default=6, help="phases, alternating without/with (default 6)")
    parser.add_argument("--phase-seconds", type=float, default=20.0, help="measured seconds per phase (default 20)")
    parser.add_argument("--replicas", type=int, default=2, help="inference replica processes (default 2)")
    parser.add_argument("--no-learner", action="store_true", help="run without the learner process")
    parser.add_argument(
        "--viewer", choices=("chromium", "sse", "none"), default="chromium", help="what watches the dashboard"
    )
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="rtrl-dashboard-bench-"))
    redis_server = LocalRedis().start()
    children = Children()
    common = {"RTRL_REDIS_URL": redis_server.url, "RTRL_CHECKPOINT_DIR": str(workdir / "checkpoints")}
    learner_address = f"127.0.0.1:{free_port()}"
    gateway: Gateway | None = None
    server = None
    try:
        addresses = []
        if not args.no_learner:
            env = {
                **common,
                "RTRL_LEARNER_PORT": learner_address.rsplit(":", 1)[1],
                "RTRL_CHECKPOINT_EVERY_UPDATES": "50",
            }
            children.spawn("rtrl.services.learner", env, workdir / "learner.log")
            addresses.append(learner_address)
        for i in range(args.replicas):
            port = free_port()
            env = {**common, "RTRL_INFERENCE_PORT": str(port), "RTRL_REPLICA_ID": f"replica-{i}"}
            children.spawn("rtrl.services.inference", env, workdir / f"inference-{i}.log")
            addresses.append(f"127.0.0.1:{port}")
        deadline = time.monotonic() + 120
        while any(health_status(a, timeout_s=0.5) != "SERVING" for a in addresses):
            if time.monotonic() > deadline:
                raise RuntimeError(f"services did not become healthy; see {workdir}")
            time.sleep(0.2)

        settings = replace(
            GatewaySettings.from_env({**common, "RTRL_ENV": "ale:Pong", "RTRL_GATEWAY_ID": "bench"}), port=0
        )
        gateway = Gateway(settings)
        server, gateway_port = create_server(settings, gateway)
        server.start()
        gateway.start()
        print(f"gateway on 127.0.0.1:{gateway_port}, {args.replicas} replicas; logs in {workdir}", file=sys.stderr)
        time.sleep(SETTLE_S * 2)  # first calls load the replicas' models

        dashboard_port = free_port()
        dashboard_url = f"http://127.0.0.1:{dashboard_port}/"
        dashboard_env = {
            **common,
            "RTRL_DASHBOARD_PORT": str(dashboard_port),
            "RTRL_DASHBOARD_GATEWAYS": f"127.0.0.1:{gateway_port}",
            "RTRL_LEARNER_ADDRESS": learner_address,
        }
        results: list[PhaseResult] = []
        load_before = os.getloadavg()
        for phase in range(args.phases):
            with_dashboard = phase % 2 == 1
            dashboard = viewer = driver = None
            if with_dashboard:
                dashboard = children.spawn("rtrl.services.dashboard", dashboard_env, workdir / "dashboard.log")
                wait_http(dashboard_url + "healthz")
                if args.viewer == "chromium":
                    from rtrl.services.dashboard.headless import open_chromium

                    driver = open_chromium()
                    driver.get(dashboard_url)
                elif args.viewer == "sse":
                    viewer = subprocess.Popen([sys.executable, "-c", SSE_READER, dashboard_url + "api/events"])
            time.sleep(SETTLE_S)
            watched = [p.pid for p in (dashboard, viewer) if p is not None]
            if driver is not None:
                watched.append(driver.service.process.pid)
            cpu_before = sum(tree_cpu_seconds(pid) for pid in watched)
            result = measure(gateway, args.phase_seconds, with_dashboard)
            result.viewer_cpu_s = sum(tree_cpu_seconds(pid) for pid in watched) - cpu_before
            results.append(result)
            print(
                f"phase {phase + 1}/{args.phases} {'with' if with_dashboard else 'without'} dashboard: "
                f"coverage {result.fresh / max(result.decisions, 1):.4f}, overhead p50 "
                f"{np.percentile(result.overhead_ms, 50):.2f} p99 {np.percentile(result.overhead_ms, 99):.2f} ms",
                file=sys.stderr,
                flush=True,
            )
            if driver is not None:
                driver.quit()
            for process in (viewer, dashboard):
                if process is not None:
                    stop(process)
            if with_dashboard:
                time.sleep(SETTLE_S)
        load_after = os.getloadavg()
    finally:
        if gateway is not None:
            gateway.stop()
        if server is not None:
            server.stop(None)
        children.stop_all()
        redis_server.stop()

    without = summarize([r for r in results if not r.dashboard])
    with_ = summarize([r for r in results if r.dashboard])
    viewer_name = {"chromium": "dashboard + page open in headless Chromium", "sse": "dashboard + SSE reader"}
    print(
        f"\n{args.phases} alternating phases of {args.phase_seconds:.0f} s, ALE Pong at 60 fps, "
        f"{args.replicas} replicas"
        f"{'' if args.no_learner else ', learner training'}; load average {load_before[0]:.1f} before, "
        f"{load_after[0]:.1f} after; 'with' = {viewer_name.get(args.viewer, 'dashboard only')}\n"
    )
    print(f"| {'measure':<26} | {'without':>10} | {'with':>10} | {'with / without':>14} |")
    print(f"|{'-' * 28}|{'-' * 12}|{'-' * 12}|{'-' * 16}|")
    for key in without:
        a, b = without[key], with_[key]
        ratio = f"{b / a:.3f}" if a else "-"
        digits = 0 if key == "decisions" else 4 if key == "coverage" else 2
        print(f"| {key:<26} | {a:>10.{digits}f} | {b:>10.{digits}f} | {ratio:>14} |")


if __name__ == "__main__":
    main()
