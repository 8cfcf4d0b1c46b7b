"""How `rtrl up` keeps a run going when one of its processes dies: when to restart it, when to give up,
and the record of restarts that the status line, `rtrl status` and the dashboard show.

The policy (`on-failure`, the default): a process that exits unexpectedly is restarted at once the
first time, then after 1 s, 2 s, 4 s ... (capped at BACKOFF_CAP_S) while it keeps dying within
CRASH_WINDOW_S of its previous exit. One that exits MAX_FAILED_STARTS times in a row before it ever
became ready (a bad setting, a port taken, a corrupt checkpoint) would only fail again: the run stops
with its log, as it does when a service fails at the first start. `never` stops the run at the first
exit. This module decides; rtrl/launcher.py owns the processes.
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

RESTART_POLICIES = ("on-failure", "never")
DEFAULT_RESTART_POLICY = "on-failure"
MAX_FAILED_STARTS = 3
BACKOFF_CAP_S = 30.0
CRASH_WINDOW_S = 60.0
SUPERVISION_FILE = "supervision.json"


@dataclass
class ServiceRecord:
    """What happened to one supervised process; JSON-ready."""

    name: str
    state: str = "starting"
    """starting (not ready yet), running, waiting (to be restarted) or failed (given up)."""
    restarts: int = 0
    last_exit_code: int | None = None
    last_exit_unix: float | None = None
    last_down_s: float | None = None
    """Seconds from the last exit until the restarted process was ready again."""
    failed_starts: int = 0
    """Exits in a row before the process became ready."""
    _recent_exits: deque[float] = field(default_factory=deque, repr=False)
    _exited_at: float | None = field(default=None, repr=False)

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if not k.startswith("_")}


@dataclass(frozen=True)
class Decision:
    """What to do about one exit: restart after `delay_s`, or stop the run (`give_up`) for `reason`."""

    give_up: bool
    delay_s: float = 0.0
    reason: str = ""


class Supervisor:
    """The restart policy of a set of named processes; no processes of its own (the launcher has them)."""

    def __init__(self, policy: str = DEFAULT_RESTART_POLICY, clock: Callable[[], float] = time.monotonic) -> None:
        if policy not in RESTART_POLICIES:
            raise ValueError(f"restart policy {policy!r} is not one of {', '.join(RESTART_POLICIES)}")
        self.policy = policy
        self._clock = clock
        self.records: dict[str, ServiceRecord] = {}
        self.changes = 0
        """Counts every change of the records: the launcher writes them out when it moved."""

    def record(self, name: str) -> ServiceRecord:
        if name not in self.records:
            self.records[name] = ServiceRecord(name)
            self.changes += 1
        return self.records[name]

    def forget(self, name: str) -> None:
        """A process no longer supervised (an optional one that could not start)."""
        if self.records.pop(name, None) is not None:
            self.changes += 1

    def ready(self, name: str) -> None:
        """The process answers (health SERVING, or its page)."""
        self.changes += 1
        record = self.record(name)
        if record._exited_at is not None:
            record.last_down_s = self._clock() - record._exited_at
            record._exited_at = None
        record.failed_starts = 0
        record.state = "running"

    def restarted(self, name: str) -> None:
        self.changes += 1
        record = self.record(name)
        record.restarts += 1
        record.state = "starting"

    def exited(self, name: str, code: int | None, was_ready: bool) -> Decision:
        """Decides about a process that exited with `code` (None: an exit not seen as a code, such as a
        Redis that stopped answering) after having been ready (`was_ready`) or not."""
        now = self._clock()
        self.changes += 1
        record = self.record(name)
        record.last_exit_code = code
        record.last_exit_unix = time.time()
        record._exited_at = now
        if self.policy == "never":
            record.state = "failed"
            return Decision(give_up=True, reason="--restart never")
        record.failed_starts = 0 if was_ready else record.failed_starts + 1
        if record.failed_starts >= MAX_FAILED_STARTS:
            record.state = "failed"
            return Decision(
                give_up=True, reason=f"it exited {record.failed_starts} times in a row before it became ready"
            )
        recent = record._recent_exits
        while recent and now - recent[0] > CRASH_WINDOW_S:
            recent.popleft()
        recent.append(now)
        record.state = "waiting"
        return Decision(give_up=False, delay_s=backoff_s(len(recent)))

    def to_json(self) -> dict[str, Any]:
        return {"policy": self.policy, "services": {name: r.to_json() for name, r in self.records.items()}}

    def write(self, path: Path) -> None:
        """Writes the records atomically to `path` (the run's supervision.json, which `rtrl status` and the
        dashboard read)."""
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(self.to_json(), indent=1))
        temporary.replace(path)


def backoff_s(exits_in_window: int) -> float:
    """0 s for the first exit in the window, then 1, 2, 4 ... seconds, capped."""
    if exits_in_window <= 1:
        return 0.0
    return min(BACKOFF_CAP_S, 2.0 ** (exits_in_window - 2))


def read_supervision(path: Path) -> dict[str, Any] | None:
    """The records written by `Supervisor.write`, or None when there are none (yet) or they cannot be read."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def supervision_text(data: dict[str, Any] | None) -> str:
    """One line about restarts for a table or a page; "" when nothing was restarted."""
    if not data:
        return ""
    parts = []
    for name, r in data.get("services", {}).items():
        if not r.get("restarts") and r.get("state") not in ("waiting", "failed"):
            continue
        text = f"{name} {r['restarts']}x (last exit code {r['last_exit_code']}"
        if r.get("last_down_s") is not None and r.get("state") == "running":
            text += f", back in {r['last_down_s']:.1f} s"
        parts.append(text + ")" + ("" if r.get("state") == "running" else f" {r['state']}"))
    return "restarts: " + ", ".join(parts) if parts else ""
