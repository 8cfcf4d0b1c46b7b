"""What Prometheus metrics cost: a Window add now and as it was, and the game clock with and without
/metrics being scraped, measured side by side in one run.

    python bench/metrics_overhead.py --phases 6 --phase-seconds 15 --scrape-hz 10

Part 1 times `Window.add` (what the clock thread and an answering replica pay per measurement) against
the locked add that counted its bucket at once, interleaved in rounds, back to back and paced at 60 Hz.
Part 2 runs a gateway on ALE Pong at 60 fps in this process with a real inference replica (the fresh
policy) and an embedded Redis, and alternates phases without and with a thread scraping the gateway's
and the replica's /metrics at `--scrape-hz` (Prometheus scrapes every 5-15 s; 10 Hz is a stress). Each
phase's numbers come from the measurements of that phase only (the windows' histogram counts cut them).
"""

from __future__ import annotations

import argparse
import bisect
import threading
import time
import timeit
import urllib.request
from collections import deque
from dataclasses import replace
from pathlib import Path
from tempfile import TemporaryDirectory

import numpy as np
import torch

from rtrl.local_redis import LocalRedis
from rtrl.metrics import DEFAULT_BUCKETS, Window
from rtrl.services.env_gateway import metrics as gateway_metrics
from rtrl.services.env_gateway.server import Gateway, create_server
from rtrl.services.env_gateway.settings import GatewaySettings
from rtrl.services.inference import metrics as inference_metrics
from rtrl.services.inference.server import create_server as create_inference_server
from rtrl.services.inference.settings import InferenceSettings

SETTLE_S = 2.0


class LockedWindow:
    """The Window before adds went lock-free: each add took the lock and counted its bucket at once."""

    def __init__(self, size: int = 2048, buckets: tuple[float, ...] = DEFAULT_BUCKETS) -> None:
        self._values: deque[float] = deque(maxlen=size)
        self._lock = threading.Lock()
        self._bounds = buckets
        self._bucket_counts = [0] * (len(buckets) + 1)
        self._count = 0
        self._sum = 0.0

    def add(self, value: float) -> None:
        with self._lock:
            self._values.append(value)
            self._bucket_counts[bisect.bisect_left(self._bounds, value)] += 1
            self._count += 1
            self._sum += value


def time_adds(rounds: int = 7, adds: int = 200_000) -> tuple[list[float], list[float]]:
    """Nanoseconds per add, back to back, rounds alternating."""
    locked, window = LockedWindow(), Window()
    locked_ns, window_ns = [], []
    for _ in range(rounds):
        locked_ns.append(timeit.timeit(lambda: locked.add(3.7), number=adds) / adds * 1e9)
        window_ns.append(timeit.timeit(lambda: window.add(3.7), number=adds) / adds * 1e9)
    return locked_ns, window_ns


def time_paced_adds(rounds: int = 4, adds: int = 100) -> tuple[list[float], list[float]]:
    """Microseconds per add when each comes 1/60 s after the last, as a replica's answers do (a cold add)."""
    locked, window = LockedWindow(), Window()
    locked_us: list[float] = []
    window_us: list[float] = []
    for _ in range(rounds):
        for add, into in ((locked.add, locked_us), (window.add, window_us)):
            for _ in range(adds):
                time.sleep(1 / 60)
                started = time.perf_counter()
                add(3.7)
                into.append((time.perf_counter() - started) * 1e6)
    return locked_us, window_us


def newest(window: Window, since_count: int) -> np.ndarray:
    """The values added since the histogram counted `since_count` (all of them if the window still holds them)."""
    added = window.histogram().count - since_count
    values = window.values()
    return values[-added:] if added > 0 else values[:0]


def scraper(urls: list[str], hz: float, stop: threading.Event, scrape_ms: list[float]) -> None:
    while not stop.wait(1.0 / hz):
        for url in urls:
            started = time.perf_counter()
            with urllib.request.urlopen(url, timeout=5) as response:
                response.read()
            scrape_ms.append((time.perf_counter() - started) * 1000.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--phases", type=int, default=6, help="phases in all, alternating off/on (default 6)")
    parser.add_argument("--phase-seconds", type=float, default=15.0)
    parser.add_argument("--scrape-hz", type=float, default=10.0)
    args = parser.parse_args()
    torch.set_num_threads(1)

    locked_ns, window_ns = time_adds()
    print("Part 1: one Window.add, nanoseconds back to back (median of 7 rounds of 200,000)")
    print(f"  locked, counted at once (before):        {np.median(locked_ns):7.0f} ns")
    print(f"  lock-free, counted when read (now):      {np.median(window_ns):7.0f} ns")
    print(f"  ratio now / before:                      {np.median(window_ns) / np.median(locked_ns):7.2f}")
    locked_us, window_us = time_paced_adds()
    print("  the same adds paced at 60 Hz, microseconds (median of 400)")
    print(f"  locked, counted at once (before):        {np.median(locked_us):7.1f} us")
    print(f"  lock-free, counted when read (now):      {np.median(window_us):7.1f} us")
    print(f"  ratio now / before:                      {np.median(window_us) / np.median(locked_us):7.2f}")

    with LocalRedis() as redis_server, TemporaryDirectory() as tmp:
        replica, replica_port = create_inference_server(
            InferenceSettings(port=0, replica_id="bench", checkpoint_dir=str(Path(tmp) / "ckpt"), device="cpu")
        )
        replica_metrics = inference_metrics.start_metrics(replica, "127.0.0.1", 0)
        replica.start()
        settings = replace(
            GatewaySettings(),
            port=0,
            gateway_id="bench",
            inference_addresses=(f"127.0.0.1:{replica_port}",),
            redis_url=redis_server.url,
            stream="bench:metrics",
        )
        gateway = Gateway(settings)
        server, _ = create_server(settings, gateway)
        gateway_metrics_server = gateway_metrics.start_metrics(gateway, "127.0.0.1", 0)
        assert gateway_metrics_server is not None and replica_metrics is not None
        server.start()
        gateway.start()
        rows = []
        try:
            time.sleep(SETTLE_S * 2)
            for phase in range(args.phases):
                scraping = phase % 2 == 1
                stop, scrape_ms = threading.Event(), list[float]()
                thread = threading.Thread(
                    target=scraper,
                    args=([gateway_metrics_server.url, replica_metrics.url], args.scrape_hz, stop, scrape_ms),
                )
                if scraping:
                    thread.start()
                time.sleep(SETTLE_S)
                clock, mailbox = gateway.clock, gateway.mailbox
                ticks0 = clock.tick_cpu_us.histogram().count
                overhead0 = mailbox.decision_overhead_ms.histogram().count
                decisions0, fresh0, late0 = clock.decisions, clock.decisions_fresh, clock.frames_late
                time.sleep(args.phase_seconds)
                ticks, overhead = newest(clock.tick_cpu_us, ticks0), newest(mailbox.decision_overhead_ms, overhead0)
                decisions, fresh = clock.decisions - decisions0, clock.decisions_fresh - fresh0
                coverage = fresh / max(decisions, 1)
                rows.append((scraping, ticks, overhead, coverage, clock.frames_late - late0, scrape_ms))
                stop.set()
                if scraping:
                    thread.join()
        finally:
            gateway.stop()
            server.stop(None).wait()
            gateway_metrics_server.close()
            replica.stop(1.0).wait()
            replica_metrics.close()

    print(f"\nPart 2: the clock, {args.phase_seconds:.0f} s phases, /metrics scraped at {args.scrape_hz:g} Hz or not")
    print("  scraped  tick cpu p50/p99 us   overhead p50/p99 ms   coverage  frames late  scrape p50 ms")
    for scraping, ticks, overhead, coverage, late, scrape_ms in rows:
        scrape = f"{np.median(scrape_ms):.2f}" if scrape_ms else "-"
        print(
            f"  {'yes' if scraping else 'no ':7s}  {np.percentile(ticks, 50):7.0f} / {np.percentile(ticks, 99):7.0f}"
            f"     {np.percentile(overhead, 50):6.2f} / {np.percentile(overhead, 99):6.2f}"
            f"     {100 * coverage:6.2f}%  {late:11d}  {scrape:>13s}"
        )
    for label, index in (("tick cpu p50", 1), ("overhead p50", 2)):
        on = np.median([np.percentile(r[index], 50) for r in rows if r[0]])
        off = np.median([np.percentile(r[index], 50) for r in rows if not r[0]])
        print(f"  {label}: scraped / not scraped = {on / off:.2f}")


if __name__ == "__main__":
    main()
