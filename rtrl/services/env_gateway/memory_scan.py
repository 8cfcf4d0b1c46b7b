"""Finding a game variable in a running process: value scans, then a pointer scan back to a static chain.

This is what `rtrl scan` runs (rtrl/scan.py holds the command); it works on any `ProcessMemory`
(desktop_linux's /proc reader, desktop_windows' pymem one), so the same scan runs on both systems.

`ValueScan` keeps the candidate addresses of one type. The first round reads every writable region
(`--value 300`, or `--unknown` to keep them all); each later round re-reads the candidates and keeps
those whose value is the given one, or changed, unchanged, increased or decreased since the round
before. Regions are read in blocks of up to `BLOCK_BYTES` and compared with numpy, so a round costs
about one copy of the process's writable memory; candidates are kept as a mask over a block while
many remain and as an index array once few do.

`pointer_scan` goes from the addresses left back to static memory, the way Cheat Engine's pointer
scan does: it collects every aligned pointer-sized value in writable memory that points into writable
memory, then walks backwards, level by level, from the addresses to the slots that point at most
`max_offset` bytes before them, until a slot lies in a module's image (a global variable). Each path
is a chain in the profile's terms: `module + p0`, then read a pointer and add each further offset.
`ChainScan` narrows chains with the same rounds, following each chain anew every time (also in a
restarted game), and `Scan` runs a whole scan of one game step by step, keys included.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from rtrl.scan import POINTER_TARGETS, RESTART_POLL_S, RESTART_SETTLE_S, ScanOptions, Step
from rtrl.services.env_gateway.backends.desktop import (
    GameWindow,
    MemoryAccessError,
    MemoryReadError,
    MemoryRegion,
    Platform,
    ProcessMemory,
)
from rtrl.services.env_gateway.backends.keyguard import KeyInjector
from rtrl.services.env_gateway.profiles import NUMBER_TYPES, VariableSpec

SCAN_TYPES: dict[str, np.dtype] = {name: np.dtype("<" + code) for name, code in NUMBER_TYPES.items()}
COMPARISONS = ("changed", "unchanged", "increased", "decreased")
BLOCK_BYTES = 64 << 20
MAX_COLLECTED_CHAINS = 100_000
# Below this share of a block's slots, candidates are kept as indices (8 bytes each) instead of a mask.
SPARSE_SHARE = 1 / 16
DEFAULT_FLOAT_TOLERANCE = 0.5
# Float candidates are 0 or between these magnitudes: integers and pointers read as floats are mostly
# tiny (1e-39) or huge, and a game's positions, speeds and timers are not.
PLAUSIBLE_FLOAT = (1e-10, 1e10)


class ScanError(Exception):
    """A scan that cannot go on: the message says what to do (the CLI prints it and exits 2)."""


@dataclass(frozen=True)
class Candidate:
    address: int
    value: float
    where: str
    """The region, for people: `boxgame+0x4010`, `[heap]+0x2a0`, or `anonymous 0x7f...+0x10`."""


class _Block:
    """Candidates in one block of a region: a mask over every slot, or the indices of the slots left."""

    def __init__(self, region: MemoryRegion, start: int, values: np.ndarray) -> None:
        self.region = region
        self.start = start
        self.values = values
        self.mask: np.ndarray | None = None  # None with indices None: every slot is a candidate
        self.indices: np.ndarray | None = None

    @property
    def count(self) -> int:
        if self.indices is not None:
            return len(self.indices)
        return len(self.values) if self.mask is None else int(np.count_nonzero(self.mask))

    def keep(self, mask: np.ndarray, values: np.ndarray) -> None:
        """Keeps the candidates where `mask` holds; `values` are the ones just read (as many as the candidates)."""
        if self.indices is not None:
            self.indices, self.values = self.indices[mask], values[mask]
            return
        self.mask = mask if self.mask is None else self.mask & mask
        self.values = values
        kept = int(np.count_nonzero(self.mask))
        if kept < SPARSE_SHARE * len(self.mask):
            self.indices = np.flatnonzero(self.mask)
            self.values = values[self.indices]
            self.mask = None

    def addresses(self, itemsize: int) -> np.ndarray:
        if self.indices is not None:
            slots = self.indices
        elif self.mask is not None:
            slots = np.flatnonzero(self.mask)
        else:
            slots = np.arange(len(self.values))
        return self.start + slots.astype(np.int64) * itemsize


def scannable(regions: Iterable[MemoryRegion]) -> list[MemoryRegion]:
    """The regions a value or pointer scan reads: writable memory (a game's state is never read-only)."""
    return [region for region in regions if region.writable]


def describe_address(address: int, regions: Sequence[MemoryRegion], bases: dict[str, int]) -> str:
    for region in regions:
        if region.start <= address < region.end:
            if region.module is not None:
                return f"{region.module}+0x{address - bases.get(region.module, region.start):x}"
            if region.name:
                return f"{region.name}+0x{address - region.start:x}"
            return f"anonymous 0x{region.start:x}+0x{address - region.start:x}"
    return "unmapped"


def module_bases(memory: ProcessMemory, regions: Iterable[MemoryRegion]) -> dict[str, int]:
    """The load address of each module in `regions`, as the gateway finds it when it follows a chain."""
    bases: dict[str, int] = {}
    for region in regions:
        if region.module is not None and region.module not in bases:
            try:
                bases[region.module] = memory.module_base(region.module)
            except MemoryAccessError:
                continue  # unloaded since the regions were listed: its memory is no chain's start
    return bases


class ValueScan:
    """The candidate addresses of one value type, narrowed round by round."""

    def __init__(self, memory: ProcessMemory, type_name: str, tolerance: float | None = None) -> None:
        if type_name not in SCAN_TYPES:
            raise ScanError(f"type {type_name!r} is not one of {', '.join(SCAN_TYPES)}; pick the variable's type.")
        self.memory = memory
        self.type_name = type_name
        self.dtype = SCAN_TYPES[type_name]
        self.is_float = self.dtype.kind == "f"
        self.tolerance = (DEFAULT_FLOAT_TOLERANCE if self.is_float else 0.0) if tolerance is None else tolerance
        self.blocks: list[_Block] = []
        self.started = False
        self.regions: list[MemoryRegion] = []
        self.bytes_read = 0

    @property
    def count(self) -> int:
        return sum(block.count for block in self.blocks)

    # -- rounds ---------------------------------------------------------------------------------------

    def first(self, value: float | None) -> int:
        """A new scan over every writable region: slots equal to `value`, or all of them when None."""
        self.regions = self.memory.regions()
        self.blocks = []
        self.bytes_read = 0
        self.started = True
        check = None if value is None else self._equals(value)
        for region in scannable(self.regions):
            for start, values in self._read_region(region):
                block = _Block(region, start, values)
                if check is not None:
                    block.keep(check(values), values)
                elif self.is_float:
                    block.keep(plausible(values), values)
                if block.count:
                    self.blocks.append(block)
        return self.count

    def next(self, how: str, value: float | None = None) -> int:
        """A round that keeps the candidates whose value is `value` (how="value") or `how` (COMPARISONS)."""
        if not self.started:
            raise ScanError("the first scan needs a value (--value N) or --unknown; comparisons come after it.")
        if how == "value":
            assert value is not None
            equals = self._equals(value)
            compare: Callable[[np.ndarray, np.ndarray], np.ndarray] = lambda new, old: equals(new)  # noqa: E731
        else:
            compare = _comparison(how)
        kept: list[_Block] = []
        for block in self.blocks:
            values = self._reread(block)
            if values is None:
                continue  # the region was unmapped since: nothing in it can be the variable
            with np.errstate(invalid="ignore"):
                mask = compare(values, block.values)
            if self.is_float:
                mask &= plausible(values)
            block.keep(mask, values)
            if block.count:
                kept.append(block)
        self.blocks = kept
        return self.count

    def candidates(self, limit: int | None = None) -> list[Candidate]:
        bases = module_bases(self.memory, self.regions)
        found: list[Candidate] = []
        for block in self.blocks:
            addresses = block.addresses(self.dtype.itemsize)
            values = block.values if block.indices is not None or block.mask is None else block.values[block.mask]
            for address, value in zip(addresses.tolist(), values.tolist(), strict=True):
                found.append(Candidate(address, float(value), describe_address(address, self.regions, bases)))
                if limit is not None and len(found) >= limit:
                    return found
        return found

    # -- reading --------------------------------------------------------------------------------------

    def _read_region(self, region: MemoryRegion) -> Iterable[tuple[int, np.ndarray]]:
        """A region's naturally aligned slots, in blocks; unreadable parts (rare: a mapping that went) are skipped."""
        size = self.dtype.itemsize
        first = -(-region.start // size) * size
        for start in range(first, region.end - size + 1, BLOCK_BYTES):
            length = min(BLOCK_BYTES, region.end - start) // size * size
            try:
                data = self.memory.read(start, length)
            except MemoryReadError:
                continue
            self.bytes_read += length
            yield start, np.frombuffer(data, self.dtype)

    def _reread(self, block: _Block) -> np.ndarray | None:
        """The block's candidates' values now: the whole block while dense, the span of the indices once sparse."""
        size = self.dtype.itemsize
        try:
            if block.indices is None:
                data = self.memory.read(block.start, len(block.values if block.mask is None else block.mask) * size)
                self.bytes_read += len(data)
                return np.frombuffer(data, self.dtype)
            low, high = int(block.indices[0]), int(block.indices[-1]) + 1
            data = self.memory.read(block.start + low * size, (high - low) * size)
            self.bytes_read += len(data)
            return np.frombuffer(data, self.dtype)[block.indices - low]
        except MemoryReadError:
            return None

    def _equals(self, value: float) -> Callable[[np.ndarray], np.ndarray]:
        if self.is_float:
            if not math.isfinite(value):
                raise ScanError(f"{value} is not a finite number; scan for a number the game shows.")
            target, tolerance = self.dtype.type(value), self.dtype.type(self.tolerance)

            def near(values: np.ndarray) -> np.ndarray:
                with np.errstate(invalid="ignore", over="ignore"):  # NaN and infinities are simply not near
                    return np.abs(values - target) <= tolerance

            return near
        info = np.iinfo(self.dtype)
        if value != int(value) or not info.min <= value <= info.max:
            raise ScanError(
                f"{value:g} is not a {self.type_name} ({info.min}..{info.max}); pick another --type, "
                "such as f32 for a number with a fraction."
            )
        target = self.dtype.type(int(value))
        return lambda values: values == target


def plausible(values: np.ndarray) -> np.ndarray:
    """Which floats could be a game's variable: 0, or finite with a magnitude within PLAUSIBLE_FLOAT."""
    with np.errstate(invalid="ignore"):
        magnitude = np.abs(values)
        return (magnitude == 0) | ((magnitude >= PLAUSIBLE_FLOAT[0]) & (magnitude <= PLAUSIBLE_FLOAT[1]))


def _comparison(how: str) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    if how == "changed":
        return np.not_equal
    if how == "unchanged":
        return np.equal
    if how == "increased":
        return np.greater
    if how == "decreased":
        return np.less
    raise ScanError(f"{how!r} is not a comparison; use one of {', '.join(COMPARISONS)}.")


# -- pointer chains -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Chain:
    """A static pointer chain: base(module) + offsets[0], then read a pointer and add each further offset."""

    module: str
    offsets: tuple[int, ...]

    def spec(self, name: str, type_name: str) -> VariableSpec:
        return VariableSpec(name=name, module=self.module, pointers=self.offsets, type=type_name)

    def __str__(self) -> str:
        return f"{self.module}+0x{self.offsets[0]:x}" + "".join(f" -> +0x{offset:x}" for offset in self.offsets[1:])

    def toml(self, name: str, type_name: str) -> str:
        pointers = ", ".join(f"0x{offset:x}" for offset in self.offsets)
        return (
            f"[variables.{name}]    # found by rtrl scan: {self}\n"
            f'module = "{self.module}"\npointers = [{pointers}]\ntype = "{type_name}"\n'
        )


@dataclass
class PointerMap:
    """Every aligned pointer-sized value in writable memory that points into writable memory, sorted by value."""

    slots: np.ndarray
    targets: np.ndarray
    bytes_read: int


def pointer_map(memory: ProcessMemory, regions: Sequence[MemoryRegion], pointer_size: int) -> PointerMap:
    writable = sorted(scannable(regions), key=lambda region: region.start)
    if not writable:
        raise ScanError(f"process {memory.pid} has no writable memory to scan.")
    starts = np.array([region.start for region in writable], dtype=np.uint64)
    ends = np.array([region.end for region in writable], dtype=np.uint64)
    dtype = np.dtype("<u8" if pointer_size == 8 else "<u4")
    low, high = starts[0], ends[-1]
    slots: list[np.ndarray] = []
    targets: list[np.ndarray] = []
    read = 0
    for region in writable:
        first = -(-region.start // pointer_size) * pointer_size
        for start in range(first, region.end - pointer_size + 1, BLOCK_BYTES):
            length = min(BLOCK_BYTES, region.end - start) // pointer_size * pointer_size
            try:
                values = np.frombuffer(memory.read(start, length), dtype).astype(np.uint64)
            except MemoryReadError:
                continue
            read += length
            hits = np.flatnonzero((values >= low) & (values < high))
            if not len(hits):
                continue
            found = values[hits]
            inside = np.searchsorted(starts, found, side="right") - 1
            hits = hits[found < ends[inside]]
            slots.append(np.uint64(start) + hits.astype(np.uint64) * np.uint64(pointer_size))
            targets.append(values[hits])
    if not slots:
        return PointerMap(np.empty(0, np.uint64), np.empty(0, np.uint64), read)
    all_slots, all_targets = np.concatenate(slots), np.concatenate(targets)
    order = np.argsort(all_targets)
    return PointerMap(all_slots[order], all_targets[order], read)


@dataclass
class PointerScanResult:
    chains: list[Chain]
    levels: list[int]
    """How many addresses each level of the backward walk reached."""
    truncated: bool
    """Whether a level was cut at `max_nodes` or the chains at MAX_COLLECTED_CHAINS (some were not followed)."""
    bytes_read: int


def pointer_scan(
    memory: ProcessMemory,
    targets: Sequence[int],
    *,
    max_depth: int = 4,
    max_offset: int = 0x1000,
    max_chains: int = 50,
    max_nodes: int = 100_000,
    modules: Sequence[str] | None = None,
    prefer: str | None = None,
    regions: Sequence[MemoryRegion] | None = None,
) -> PointerScanResult:
    """Static chains that lead to any of `targets`, best first (`chain_order`, `prefer` the game's executable).

    `modules` limits where chains may start (default: any module). Each level of the backward walk is
    computed with numpy over all of its addresses at once; `max_nodes` caps how many addresses one level
    follows (those reached with the smallest offsets are kept), so a large process is scanned in seconds.
    """
    regions = list(memory.regions()) if regions is None else list(regions)
    bases = module_bases(memory, regions)
    statics = sorted(
        (region for region in scannable(regions) if region.module and (not modules or region.module in modules)),
        key=lambda region: region.start,
    )
    static_starts = np.array([region.start for region in statics], dtype=np.uint64)
    static_ends = np.array([region.end for region in statics], dtype=np.uint64)

    def static(addresses: np.ndarray) -> np.ndarray:
        inside = np.searchsorted(static_starts, addresses, side="right") - 1
        return (inside >= 0) & (addresses < static_ends[np.maximum(inside, 0)])

    seen = np.unique(np.array(targets, dtype=np.uint64))
    # A target in static memory is a global variable: its chain is its offset in the module.
    chains = [_chain(target, (), statics, bases) for target in seen[static(seen)].tolist()]
    pointers = pointer_map(memory, regions, memory.pointer_size())
    # edges[d] = (slot, node, offset), sorted by slot: the pointer in `slot` plus `offset` is `node`, an
    # address of depth d - 1 (depth 0: a target).
    edges: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    ends: list[np.ndarray] = []  # per depth, the static slots reached
    level = seen
    levels: list[int] = []
    truncated = False
    for depth in range(1, max_depth + 1):
        low = np.searchsorted(pointers.targets, level - np.minimum(level, np.uint64(max_offset)), side="left")
        high = np.searchsorted(pointers.targets, level, side="right")
        counts = high - low
        total = int(counts.sum())
        if total == 0:
            break
        first = np.repeat(low - (np.cumsum(counts) - counts), counts)
        index = first + np.arange(total)
        slot, node = pointers.slots[index], np.repeat(level, counts)
        offset = node - pointers.targets[index]
        is_static = static(slot)
        last = depth == max_depth
        if last:  # nothing goes deeper: only the pointers in static memory, which end chains, matter
            slot, node, offset = slot[is_static], node[is_static], offset[is_static]
            is_static = np.ones(len(slot), dtype=bool)
        order = np.argsort(slot)
        slot, node, offset, is_static = slot[order], node[order], offset[order], is_static[order]
        edges.append((slot, node, offset))
        ends.append(np.unique(slot[is_static]))
        if last:
            break
        # The next level: each new non-static slot once, with the smallest offset it was reached by.
        candidates, at = np.unique(slot[~is_static], return_index=True)
        smallest = np.minimum.reduceat(offset[~is_static], at) if len(at) else at
        fresh = ~np.isin(candidates, seen)
        candidates, smallest = candidates[fresh], smallest[fresh]
        levels.append(len(candidates))
        if len(candidates) > max_nodes:
            truncated = True
            candidates = np.sort(candidates[np.argpartition(smallest, max_nodes)[:max_nodes]])
        seen = np.union1d(seen, candidates)
        level = candidates
    # Every chain is collected before the best are chosen (up to a bound that keeps a huge scan finite).
    for depth, reached in enumerate(ends, start=1):
        for start in reached.tolist():
            chains.extend(_chain(start, tail, statics, bases) for tail in _paths(start, depth, edges))
            if len(chains) >= MAX_COLLECTED_CHAINS:
                truncated = True
                break
    chains = sorted(set(chains), key=lambda chain: chain_order(chain, prefer))
    return PointerScanResult(chains[:max_chains], levels, truncated, pointers.bytes_read)


def _chain(start: int, tail: tuple[int, ...], statics: Sequence[MemoryRegion], bases: dict[str, int]) -> Chain:
    module = next(region.module for region in statics if region.start <= start < region.end)
    assert module is not None
    return Chain(module, (start - bases[module], *tail))


def _paths(
    slot: int, depth: int, edges: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]], limit: int = 16
) -> list[tuple[int, ...]]:
    """The offsets from the pointer in `slot` (reached at `depth`) down to the target, at most `limit` ways."""
    slots, nodes, offsets = edges[depth - 1]
    low, high = np.searchsorted(slots, np.uint64(slot), side="left"), np.searchsorted(slots, np.uint64(slot), "right")
    paths: list[tuple[int, ...]] = []
    for node, offset in zip(nodes[low:high].tolist(), offsets[low:high].tolist(), strict=True):
        if depth == 1:
            paths.append((offset,))
        else:
            paths.extend((offset, *tail) for tail in _paths(node, depth - 1, edges, limit - len(paths)))
        if len(paths) >= limit:
            break
    return paths[:limit]


def chain_order(chain: Chain, prefer: str | None) -> tuple[bool, int, int, int]:
    """Best first: from the game's own executable, then by the largest step after the first (a pointer to a small
    object plus a large offset usually lands in a neighbouring object), then fewest pointers."""
    return (chain.module != prefer, max(chain.offsets[1:], default=0), len(chain.offsets), sum(chain.offsets[1:]))


def resolve(memory: ProcessMemory, chain: Chain, bases: dict[str, int]) -> int | None:
    """The address `chain` leads to in this process, or None where it breaks (a null or unmapped pointer)."""
    if chain.module not in bases:
        return None
    pointer_size = memory.pointer_size()
    address = bases[chain.module] + chain.offsets[0]
    try:
        for offset in chain.offsets[1:]:
            pointer = int.from_bytes(memory.read(address, pointer_size), "little")
            if pointer == 0:
                return None
            address = pointer + offset
    except MemoryReadError:
        return None
    return address


class ChainScan:
    """Chains from a pointer scan, narrowed like addresses: each round follows every chain anew."""

    def __init__(self, memory: ProcessMemory, type_name: str, chains: Sequence[Chain], tolerance: float) -> None:
        self.memory = memory
        self.type_name = type_name
        self.dtype = SCAN_TYPES[type_name]
        self.tolerance = tolerance
        self.chains = list(chains)
        self.bases = module_bases(memory, memory.regions())
        """Where each module is loaded: fixed for the life of the process, so found once per process."""
        self.values = self._read(self.chains)
        self._drop_broken()

    @property
    def count(self) -> int:
        return len(self.chains)

    def resolving(self, memory: ProcessMemory) -> int:
        """How many chains lead to a readable value in `memory` (another process: the game restarted)."""
        previous, self.memory = self.memory, memory
        try:
            values = self._read(self.chains, module_bases(memory, memory.regions()))
            return int(np.count_nonzero(plausible(values) if self.dtype.kind == "f" else np.isfinite(values)))
        finally:
            self.memory = previous

    def attach(self, memory: ProcessMemory) -> int:
        """Follows the chains in another process (the game restarted) and keeps those that still resolve."""
        self.memory = memory
        self.bases = module_bases(memory, memory.regions())
        self.values = self._read(self.chains)
        return self._drop_broken()

    def next(self, how: str, value: float | None = None) -> int:
        values = self._read(self.chains)
        if how == "value":
            assert value is not None
            mask = np.abs(values - value) <= self.tolerance
        else:
            mask = _comparison(how)(values, self.values)
        self.chains = [chain for chain, keep in zip(self.chains, mask.tolist(), strict=True) if keep]
        self.values = values[mask]
        return self._drop_broken()

    def _read(self, chains: Sequence[Chain], bases: dict[str, int] | None = None) -> np.ndarray:
        bases = self.bases if bases is None else bases
        values = np.full(len(chains), np.nan)
        for i, chain in enumerate(chains):
            address = resolve(self.memory, chain, bases)
            if address is None:
                continue
            try:
                raw = self.memory.read(address, self.dtype.itemsize)
            except MemoryReadError:
                continue
            values[i] = float(np.frombuffer(raw, self.dtype)[0])
        return values

    def _drop_broken(self) -> int:
        keep = plausible(self.values) if self.dtype.kind == "f" else np.isfinite(self.values)
        self.chains = [chain for chain, kept in zip(self.chains, keep.tolist(), strict=True) if kept]
        self.values = self.values[keep]
        return self.count


# -- a scan of one game, step by step (what `rtrl scan` runs) ---------------------------------------


class Scan:
    """One scan of one game: the steps run so far and the candidates (addresses, then chains) they left."""

    def __init__(self, options: ScanOptions, platform: Platform, say: Callable[[str], None]) -> None:
        if not options.name.isidentifier():
            raise ScanError(f"--name {options.name!r} is not a variable name; use letters, digits and _.")
        self.options = options
        self.platform = platform
        self.say = say
        self.pid, self.process = self._find(options.target)
        self.memory: ProcessMemory = platform.open_memory(self.pid)
        self.values = ValueScan(self.memory, options.type_name, options.tolerance)
        self.chains: ChainScan | None = None
        self.records: list[dict[str, Any]] = []
        self._keys: tuple[GameWindow, KeyInjector] | None = None

    def _find(self, target: str) -> tuple[int, str]:
        if target.isdigit():
            pid = int(target)
            name = self.platform.process_name(pid)
            if name is None:
                raise ScanError(f"no process has pid {pid}; start the game, or give its executable's name.")
            return pid, name
        pids = self.platform.find_processes(target)
        if not pids:
            raise ScanError(f"no running process is named {target!r}; start the game first (or give its pid).")
        if len(pids) > 1:
            raise ScanError(
                f"{len(pids)} processes are named {target!r} (pids {', '.join(map(str, pids))}); "
                "give the pid of the game."
            )
        return pids[0], target

    @property
    def count(self) -> int:
        return self.chains.count if self.chains is not None else self.values.count

    def run(self, step: Step) -> dict[str, Any]:
        started = time.perf_counter()
        if step.kind == "hold":
            self.hold(step.keys, step.seconds)
        elif step.kind == "wait":
            time.sleep(step.seconds)
        elif step.kind == "pointers":
            self.find_pointers()
        elif step.kind == "verify-after-restart":
            self.verify_after_restart()
        elif step.kind == "unknown":
            if self.chains is not None:
                raise ScanError("--unknown starts a scan of addresses; after --pointers, narrow the chains instead.")
            self.values.first(None)
        elif step.kind == "value" and self.chains is None and not self.values.started:
            self.values.first(step.value)
        else:
            self._narrow(step)
        seconds = time.perf_counter() - started
        record = {"step": str(step), "candidates": self.count, "seconds": round(seconds, 3)}
        if step.kind in ("value", "unknown") and self.chains is None:
            record["bytes_read"] = self.values.bytes_read
        self.records.append(record)
        if step.kind not in ("hold", "wait"):
            kind = "chains" if self.chains is not None else "candidates"
            self.say(f"{step}: {self.count} {kind} ({seconds:.2f} s)")
            if self.count == 0:
                raise ScanError(self._nothing_left(step))
        return record

    def _narrow(self, step: Step) -> None:
        how = "value" if step.kind == "value" else step.kind
        assert how == "value" or how in COMPARISONS
        if self.chains is not None:
            self.chains.next(how, step.value)
        else:
            self.values.next(how, step.value)

    def _nothing_left(self, step: Step) -> str:
        if self.chains is not None:
            return (
                f"no chain is left after {step}: the value moved elsewhere or the steps did not match what happened "
                "in the game; scan again with more addresses left before --pointers (or a larger --max-depth or "
                "--max-offset)."
            )
        return (
            f"no candidates are left after {step}: the variable is not a {self.options.type_name}, or the game did "
            "not do what the steps say (the keys did not reach it, it was paused); start again with --unknown and "
            "another --type."
        )

    def hold(self, keys: Iterable[str], seconds: float) -> None:
        # One window and one injector for the whole scan, as the gateway keeps them.
        if self._keys is None:
            window = self.platform.find_window(None, self.process)
            self._keys = (window, self.platform.open_keys(window))
        window, injector = self._keys
        native = [injector.native_key(key) for key in keys]
        window.focus()
        try:
            for key in native:
                injector.press(key)
            time.sleep(seconds)
        finally:
            for key in native:
                injector.release(key)

    def _close_keys(self) -> None:
        if self._keys is not None:
            window, injector = self._keys
            self._keys = None
            injector.close()
            window.close()

    def find_pointers(self) -> None:
        if self.chains is not None:
            raise ScanError("the chains are found already; narrow them with comparisons or --verify-after-restart.")
        if not self.values.started:
            raise ScanError("--pointers needs addresses first: start with --value N or --unknown.")
        targets = self.values.candidates(limit=POINTER_TARGETS + 1)
        if len(targets) > POINTER_TARGETS:
            raise ScanError(
                f"{self.values.count} addresses are left; narrow them to {POINTER_TARGETS} or fewer before --pointers "
                "(move in the game and scan again)."
            )
        result = pointer_scan(
            self.memory,
            [target.address for target in targets],
            max_depth=self.options.max_depth,
            max_offset=self.options.max_offset,
            max_chains=self.options.max_chains,
            modules=self.options.modules or None,
            prefer=self.process,
        )
        if result.truncated:
            self.say(f"pointer scan: a level was cut at its limit (addresses per level: {result.levels})")
        if not result.chains:
            raise ScanError(
                f"no static chain leads to {', '.join(hex(t.address) for t in targets)} within "
                f"{self.options.max_depth} pointers and offsets up to 0x{self.options.max_offset:x}; "
                "try a larger --max-depth or --max-offset."
            )
        self.chains = ChainScan(self.memory, self.options.type_name, result.chains, self.values.tolerance)

    def verify_after_restart(self) -> None:
        if self.chains is None:
            raise ScanError("--verify-after-restart checks chains: run --pointers before it.")
        old = self.pid
        running = set(self.platform.find_processes(self.process)) | {old}
        self.say(f"restart the game now (process {self.process}, pid {old}); waiting for it to come back")
        deadline = time.monotonic() + self.options.restart_timeout_s
        while True:
            # The game that came back is the process of that name that was not running before.
            started = sorted(set(self.platform.find_processes(self.process)) - running)
            if len(started) > 1:
                raise ScanError(
                    f"{len(started)} new processes are named {self.process} (pids {', '.join(map(str, started))}); "
                    "start one game only while rtrl scan waits."
                )
            if started:
                break
            if time.monotonic() > deadline:
                raise ScanError(
                    f"the game ({self.process}) was not restarted within {self.options.restart_timeout_s:g} s; "
                    "restart it while rtrl scan waits, or give a longer --restart-timeout."
                )
            time.sleep(RESTART_POLL_S)
        self.memory.close()
        self._close_keys()  # the old window went with the old process
        self.pid = started[0]
        self.memory = self.platform.open_memory(self.pid)
        # The new process needs a while to build its objects (load a level): the chains are followed once
        # as many resolve as will, i.e. when the number that does has not changed for RESTART_SETTLE_S.
        resolving, since = -1, time.monotonic()
        while time.monotonic() < deadline:
            now = self.chains.resolving(self.memory)
            if now != resolving:
                resolving, since = now, time.monotonic()
            elif resolving > 0 and time.monotonic() - since >= RESTART_SETTLE_S:
                break
            time.sleep(RESTART_POLL_S)
        if not self.chains.attach(self.memory):
            raise ScanError(
                f"none of the {self.chains.count} chains leads anywhere in the restarted game (pid {self.pid}): they "
                "went through memory that moves between runs. Scan again with a larger --max-depth, or get the game "
                "to where the variable exists (in a level) before the chains are checked."
            )

    def result(self) -> dict[str, Any]:
        found: dict[str, Any] = {
            "pid": self.pid,
            "process": self.process,
            "type": self.options.type_name,
            "steps": self.records,
            "candidates": [],
            "chains": [],
            "toml": None,
        }
        if self.chains is not None:
            bases = module_bases(self.memory, self.memory.regions())
            found["chains"] = [
                {
                    "module": chain.module,
                    "pointers": list(chain.offsets),
                    "chain": str(chain),
                    "value": value,
                    "module_base": bases.get(chain.module),
                }
                for chain, value in zip(self.chains.chains, self.chains.values.tolist(), strict=True)
            ]
            if self.chains.chains:
                found["toml"] = self.chains.chains[0].toml(self.options.name, self.options.type_name)
        elif self.values.started:
            found["candidates"] = [
                {"address": c.address, "where": c.where, "value": c.value}
                for c in self.values.candidates(limit=self.options.show)
            ]
        return found

    def close(self) -> None:
        self._close_keys()
        self.memory.close()
