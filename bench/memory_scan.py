"""Measures what `rtrl scan` costs on a process holding a game-shaped heap of about 500 MB (issue 18).

    python bench/memory_scan.py              # a 500 MiB heap, 3 interleaved rounds
    python bench/memory_scan.py --mb 100     # a quick run
    python bench/memory_scan.py --mb 100 --static-table 4096   # a game with a static table of entity pointers

The process is bench/memory_scan_target.c, built with gcc into a temporary folder: many allocations of
mixed sizes and kinds (entities full of pointers, floats and small ints, entity lists, vertex and curve
arrays, index buffers, strings, textures, audio, mostly-empty pools), deterministic for a seed, and a
player whose f32 x is reached as a game's is, base(scan_target) + g_world -> + world.player -> + player.x;
it changes x on command. Each row is one thing `rtrl scan` does, run through the same engine
(rtrl/services/env_gateway/memory_scan.py) and the same reader (ProcMemory, /proc/<pid>/mem):

- raw read: ProcMemory.read over every writable region in the scan's blocks, no numpy: the baseline;
- the first f32 scan with a value, and the first `--unknown` f32 scan (which keeps a snapshot);
- `--increased` after x changed, from that snapshot, then `--value` rounds until few addresses are left;
- the first exact i32 scan; `pointer_map` alone; `pointer_scan` from the addresses left, with `rtrl scan`'s
  defaults (depth 4, offsets up to 0x1000, 20 chains).

All rows are measured in interleaved rounds of one run, so a busy machine slows them alike; seconds are
the median over the rounds, MB/s is the process's writable memory over that, and "x raw" is the time over
the raw read's. peak MB is the most this benchmark's own resident memory rose during the step (VmHWM reset
before it), kept MB what the scan holds afterwards for its next round. MB are MiB. It exits 1 when the scan
misses the player's x or the pointer scan misses the true chain (after printing the table), never because
of a time. The figures are copied into docs/memory-scan.md.
"""

from __future__ import annotations

import argparse
import gc
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from rtrl.scan import POINTER_TARGETS, ScanOptions  # noqa: E402
from rtrl.services.env_gateway.backends.desktop import MemoryReadError, MemoryRegion  # noqa: E402
from rtrl.services.env_gateway.backends.desktop_linux import ProcMemory  # noqa: E402
from rtrl.services.env_gateway.memory_scan import (  # noqa: E402
    BLOCK_BYTES,
    Chain,
    PointerMap,
    PointerScanResult,
    ValueScan,
    pointer_map,
    pointer_scan,
    scannable,
)

SOURCE = Path(__file__).with_name("memory_scan_target.c")
PROCESS_NAME = "scan_target"
X_STEP = 2.0  # how far x moves between rounds, as a game's position moves in a few frames
NARROWING_ROUNDS = 4
MIB = 1 << 20


class Target:
    """The scanned process: `set_x` changes the player's x (and moves other entities a frame's worth)."""

    def __init__(self, binary: Path, mib: int, seed: int, static_table: int) -> None:
        self.process = subprocess.Popen(
            [str(binary), str(mib), str(seed), str(static_table)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line.startswith("ready "):
            self.close()
            raise RuntimeError(f"the scan target did not start: {line!r}")
        fields = dict(pair.split("=") for pair in line.split()[1:])
        self.ready = {key: int(value, 0) for key, value in fields.items() if key not in ("module", "x")}
        self.x = float(fields["x"])

    @property
    def pid(self) -> int:
        return self.process.pid

    def set_x(self, x: float) -> None:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(f"x {x}\n")
        self.process.stdin.flush()
        if self.process.stdout.readline().strip() != "ok":
            raise RuntimeError("the scan target did not answer a change of x")
        self.x = x

    def close(self) -> None:
        try:
            assert self.process.stdin is not None
            self.process.stdin.write("quit\n")
            self.process.stdin.close()
            self.process.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            self.process.kill()
            self.process.wait()
        assert self.process.stdout is not None
        self.process.stdout.close()


def build(directory: Path) -> Path:
    binary = directory / PROCESS_NAME
    result = subprocess.run(
        ["gcc", "-O2", "-Wall", "-Werror", "-o", str(binary), str(SOURCE), "-lm"], capture_output=True, text=True
    )
    if result.returncode != 0:
        raise RuntimeError(f"building the scan target failed (gcc is needed):\n{result.stderr}")
    return binary


def read_everything(memory: ProcMemory, regions: list[MemoryRegion]) -> int:
    """The baseline: every writable byte through ProcMemory.read, in the blocks the scan reads, no numpy."""
    total = 0
    for region in regions:
        for start in range(region.start, region.end, BLOCK_BYTES):
            try:
                total += len(memory.read(start, min(BLOCK_BYTES, region.end - start)))
            except MemoryReadError:
                continue
    return total


def _status_kib(field: str) -> int:
    match = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.MULTILINE)
    return int(match.group(1)) if match else 0


def _describe(result: Any) -> tuple[int, int]:
    """A step's count (candidates, pointers, chains) and the bytes it holds for the next round."""
    if isinstance(result, ValueScan):
        arrays = (array for block in result.blocks for array in (block.values, block.mask, block.indices))
        return result.count, sum(array.nbytes for array in arrays if array is not None)
    if isinstance(result, PointerMap):
        return len(result.slots), result.slots.nbytes + result.targets.nbytes
    if isinstance(result, PointerScanResult):
        return len(result.chains), 0
    return 0, 0


def holds(scan: ValueScan, address: int) -> bool:
    return any(bool(np.any(block.addresses(scan.dtype.itemsize) == address)) for block in scan.blocks)


class Rows:
    """Timed steps by row label: seconds, this process's peak memory rise, what the step kept, its count."""

    def __init__(self) -> None:
        self.samples: dict[str, list[dict[str, float]]] = {}

    def measure(self, label: str, step: Callable[..., Any], *args: Any) -> Any:
        """Runs `step(*args)` once as a sample of row `label`; returns what it returned."""
        gc.collect()
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the resident size now
        before_kib = _status_kib("VmRSS")
        started = time.perf_counter()
        result = step(*args)
        seconds = time.perf_counter() - started
        peak_kib = _status_kib("VmHWM") - before_kib
        count, kept = _describe(result)
        sample = {"seconds": seconds, "peak": peak_kib * 1024, "kept": kept, "count": count}
        self.samples.setdefault(label, []).append(sample)
        return result

    def median(self, label: str, key: str) -> float:
        return statistics.median(sample[key] for sample in self.samples[label])

    def worst(self, label: str, key: str) -> float:
        return max(sample[key] for sample in self.samples[label])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=int, default=500, help="the target's heap in MiB (default 500)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; seconds are their median")
    parser.add_argument("--seed", type=int, default=0, help="the target's content (default 0)")
    parser.add_argument(
        "--static-table",
        type=int,
        default=0,
        metavar="N",
        help="give the target a static table of N (up to 4096) pointers to entities, below g_world (default 0)",
    )
    args = parser.parse_args()
    defaults = ScanOptions(target=PROCESS_NAME)

    with tempfile.TemporaryDirectory(prefix="rtrl-bench-") as directory:
        binary = build(Path(directory))
        started = time.perf_counter()
        target = Target(binary, args.mb, args.seed, args.static_table)
        start_s = time.perf_counter() - started
        try:
            memory = ProcMemory(target.pid)
            rows, outcome = run_rounds(target, memory, args.rounds, defaults)
            memory.close()
        finally:
            target.close()
    report(args, target, rows, outcome, start_s)
    for failure in dict.fromkeys(outcome["failures"]):  # each once, though a round may repeat it
        print(f"FAILED: {failure}", file=sys.stderr)
    if outcome["failures"]:
        raise SystemExit(1)


def run_rounds(target: Target, memory: ProcMemory, rounds: int, defaults: ScanOptions) -> tuple[Rows, dict[str, Any]]:
    ready = target.ready
    expected = Chain(PROCESS_NAME, (ready["world"], ready["world.player"], ready["player.x"]))
    regions = memory.regions()
    writable = scannable(regions)
    rows = Rows()
    outcome: dict[str, Any] = {
        "writable": sum(region.size for region in writable),
        "regions": len(writable),
        "expected": expected,
        "failures": [],
    }
    fail = outcome["failures"].append
    for _ in range(rounds):
        rows.measure("raw read (ProcMemory.read, no numpy)", read_everything, memory, writable)

        found = rows.measure("f32 first scan, --value x", _first, ValueScan(memory, "f32"), target.x)
        if not holds(found, ready["x_address"]):
            fail(f"the f32 scan for {target.x:g} did not find the player's x at 0x{ready['x_address']:x}.")
        del found  # the next scan's memory is measured without this one's

        snapshot = rows.measure("f32 first scan, --unknown", _first, ValueScan(memory, "f32"), None)
        target.set_x(target.x + X_STEP)
        rows.measure("  --increased after x changed", _next, snapshot, "increased")
        rows.measure("  --value x (the new x)", _next, snapshot, "value", target.x)
        for _ in range(NARROWING_ROUNDS):
            if snapshot.count <= POINTER_TARGETS:
                break
            target.set_x(target.x + X_STEP)
            snapshot.next("increased")
        addresses = [candidate.address for candidate in snapshot.candidates(limit=POINTER_TARGETS)]
        if not holds(snapshot, ready["x_address"]) or snapshot.count > POINTER_TARGETS:
            fail(
                f"--unknown, --increased and --value left {snapshot.count} addresses, which should be at most "
                f"{POINTER_TARGETS} with the player's x at 0x{ready['x_address']:x} among them; the pointer scan "
                "starts from x alone."
            )
            addresses = [ready["x_address"]]
        outcome["pointer targets"] = len(addresses)
        del snapshot

        integers = rows.measure(
            f"i32 first scan, --value {ready['score']}", _first, ValueScan(memory, "i32"), ready["score"]
        )
        if not holds(integers, ready["score_address"]):
            fail(f"the i32 scan for {ready['score']} did not find the player's score.")
        del integers

        rows.measure("pointer map alone", pointer_map, memory, regions, memory.pointer_size())
        result = rows.measure(
            f"pointer scan, depth {defaults.max_depth}, offset 0x{defaults.max_offset:x}",
            partial(
                pointer_scan,
                max_depth=defaults.max_depth,
                max_offset=defaults.max_offset,
                max_chains=defaults.max_chains,
                prefer=PROCESS_NAME,
            ),
            memory,
            addresses,
        )
        if expected not in result.chains:
            shown = "; ".join(str(chain) for chain in result.chains[:5]) or "none"
            fail(f"the pointer scan did not find the true chain {expected} (it found {shown}).")
        rank = result.chains.index(expected) + 1 if expected in result.chains else None
        outcome.update(levels=result.levels, truncated=result.truncated, rank=rank, chains=result.chains)
    return rows, outcome


def _first(scan: ValueScan, value: float | None) -> ValueScan:
    scan.first(value)
    return scan


def _next(scan: ValueScan, how: str, value: float | None = None) -> ValueScan:
    scan.next(how, value)
    return scan


def report(args: argparse.Namespace, target: Target, rows: Rows, outcome: dict[str, Any], start_s: float) -> None:
    writable_mib = outcome["writable"] / MIB
    raw_label = next(iter(rows.samples))
    raw_s = rows.median(raw_label, "seconds")
    print(
        f"scan_target --mb {args.mb} --seed {args.seed}: {target.ready['heap_bytes'] / MIB:.0f} MiB of heap in "
        f"{target.ready['allocations']} allocations (started in {start_s:.1f} s); {writable_mib:.0f} MiB writable in "
        f"{outcome['regions']} regions; {args.rounds} interleaved rounds on {os.cpu_count()} CPUs, numpy "
        f"{np.__version__}"
    )
    print(f"{'step':<42} {'seconds':>8} {'MB/s':>7} {'x raw':>6} {'candidates':>11} {'peak MB':>8} {'kept MB':>8}")
    for label in rows.samples:
        seconds = rows.median(label, "seconds")
        sparse = label.strip().startswith("--value")  # rereads only the candidates left: no MB/s
        rate = "-" if sparse else f"{writable_mib / seconds:.0f}"
        print(
            f"{label:<42} {seconds:>8.3f} {rate:>7} {seconds / raw_s:>6.1f} {rows.median(label, 'count'):>11.0f} "
            f"{rows.worst(label, 'peak') / MIB:>8.0f} {rows.median(label, 'kept') / MIB:>8.0f}"
        )
    print(
        f"pointer scan: from {outcome['pointer targets']} addresses, addresses per level {outcome['levels']}"
        f"{' (a level was cut at max_nodes)' if outcome['truncated'] else ''}; the true chain {outcome['expected']} "
        + (f"is number {outcome['rank']}" if outcome["rank"] else "is not")
        + f" among the {len(outcome['chains'])} found"
    )


if __name__ == "__main__":
    main()
