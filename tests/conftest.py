"""Test-suite-wide plumbing: the resilience ledger the fault and fuzz suites fill, printed as a summary.

Fault tests (tests/faults) record each fault they inject and whether the system survived it, and the
transitions they counted (published, consumed, dropped-and-counted, lost); fuzz tests (tests/fuzz)
record how many inputs they tried per RPC. `pytest_terminal_summary` prints the table at the end of
the run when anything was recorded, so a CI log shows what was tried and what held.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import pytest


@dataclass
class ResilienceLedger:
    """What the fault and fuzz suites injected, tried and counted during one pytest session."""

    faults: list[tuple[str, bool, str]] = field(default_factory=list)
    inputs: Counter[str] = field(default_factory=Counter)
    transitions: Counter[str] = field(default_factory=Counter)

    @contextmanager
    def fault(self, name: str) -> Iterator[list[str]]:
        """Records `name` as injected; as survived only when the block (its assertions) completes.

        The block may append a short note (a measured figure) to the yielded list."""
        notes: list[str] = []
        try:
            yield notes
        except BaseException:
            self.faults.append((name, False, "; ".join(notes)))
            raise
        self.faults.append((name, True, "; ".join(notes)))

    def count_transitions(self, *, published: int, consumed: int, dropped: int, lost: int) -> None:
        self.transitions.update(published=published, consumed=consumed, dropped=dropped, lost=lost)

    def lines(self) -> list[str]:
        lines: list[str] = []
        if self.faults:
            survived = sum(1 for _, ok, _ in self.faults if ok)
            lines.append(f"faults injected {len(self.faults)}, survived {survived}")
            for name, ok, note in self.faults:
                lines.append(f"  {'survived' if ok else 'FAILED  '}  {name}" + (f"  ({note})" if note else ""))
        if self.inputs:
            lines.append(f"hostile inputs tried {sum(self.inputs.values())}")
            for rpc, count in sorted(self.inputs.items()):
                lines.append(f"  {count:6d}  {rpc}")
        if self.transitions:
            t = self.transitions
            lines.append(
                f"transitions published {t['published']}  consumed {t['consumed']}  "
                f"dropped-and-counted {t['dropped']}  lost {t['lost']}"
            )
        return lines


_LEDGER_KEY = pytest.StashKey[ResilienceLedger]()


@pytest.fixture(scope="session")
def resilience_ledger(pytestconfig: pytest.Config) -> ResilienceLedger:
    return pytestconfig.stash.setdefault(_LEDGER_KEY, ResilienceLedger())


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    ledger = config.stash.get(_LEDGER_KEY, None)
    if ledger is None:
        return
    lines = ledger.lines()
    if lines:
        terminalreporter.section("resilience summary (tests/faults, tests/fuzz)")
        for line in lines:
            terminalreporter.write_line(line)
