"""CPU affinity: which CPUs a process may run on, from RTRL_CPUS ("1", "0,2", "2-3", "0-1,4").

Every service calls `apply_cpus_from_env` first thing in its main, before it starts a thread (threads
inherit the affinity of the thread that starts them). `rtrl up --learner-cpus` uses it to give the
learner CPUs of its own and everything else the rest, which keeps the learner's bursts off the decision
path (measured in docs/staggering-benchmark.md, "The learner on a CPU of its own"). Unset, the
scheduler places everything, and the learner's nice level is what keeps it out of the way.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping

from rtrl.config import PREFIX, Setting, SettingsError

log = logging.getLogger(__name__)

CPUS_VARIABLE = "CPUS"
# Read by every service (rtrl/settings.py lists it with the settings they share).
CPUS_SETTING = Setting(
    CPUS_VARIABLE,
    str,
    "",
    "CPUs the process may run on, like taskset: 1, 2-3, 0,2; empty: any; rtrl up --learner-cpus sets it on every "
    "service.",
)
_RANGE = re.compile(r"^(\d+)(?:-(\d+))?$")
# Far beyond any machine's CPU count (Linux builds allow 8192); a list past it is a typo, not a machine.
_MAX_CPU = 65535


def parse_cpu_list(text: str) -> set[int]:
    """CPU numbers from a list like taskset's: "1", "0,2", "2-3", "0-1,4". Raises ValueError."""
    cpus: set[int] = set()
    for part in text.split(","):
        match = _RANGE.match(part.strip())
        if not match:
            raise ValueError(f"{part.strip()!r} is not a CPU number or a range like 2-3")
        first = int(match.group(1))
        last = int(match.group(2)) if match.group(2) is not None else first
        if last < first:
            raise ValueError(f"the range {part.strip()!r} runs backwards")
        if last > _MAX_CPU:
            raise ValueError(f"{part.strip()!r} goes past CPU {_MAX_CPU}")
        cpus.update(range(first, last + 1))
    return cpus


def format_cpu_list(cpus: set[int]) -> str:
    """The shortest list `parse_cpu_list` reads back as `cpus`: {0, 1, 2, 5} -> "0-2,5"."""
    parts: list[str] = []
    for cpu in sorted(cpus):
        if parts and cpu == int(parts[-1].rsplit("-", 1)[-1]) + 1:
            parts[-1] = f"{parts[-1].split('-')[0]}-{cpu}"
        else:
            parts.append(str(cpu))
    return ",".join(parts)


def usable_cpus() -> set[int]:
    """The CPUs this process may run on now."""
    return set(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))


def checked_cpus(text: str, allowed: set[int], name: str = PREFIX + CPUS_VARIABLE) -> set[int]:
    """`text` parsed and checked to be among `allowed`; SettingsError with what to set otherwise."""
    try:
        cpus = parse_cpu_list(text)
    except ValueError as e:
        raise SettingsError(f"{name}={text!r} is not valid ({e}); set it like 1 or 0,2 or 2-3.") from None
    if not cpus <= allowed:
        raise SettingsError(
            f"{name}={text!r} names CPUs that are not here; set it to some of {format_cpu_list(allowed)}."
        )
    return cpus


def split_cpus(learner_cpus: str, flag: str = "--learner-cpus") -> tuple[set[int], set[int]]:
    """The learner's CPUs named by `learner_cpus` and the rest of this process's, for everything else;
    SettingsError when the list is bad or leaves nothing for the rest."""
    usable = usable_cpus()
    learner = checked_cpus(learner_cpus, usable, flag)
    others = usable - learner
    if not others:
        raise SettingsError(
            f"{flag} {learner_cpus} leaves no CPU for the gateway and the replicas; name fewer CPUs (this "
            f"machine lets rtrl use {format_cpu_list(usable)})."
        )
    return learner, others


def apply_cpus_from_env(env: Mapping[str, str] = os.environ) -> set[int] | None:
    """Restricts this process to RTRL_CPUS when it is set; returns the CPUs, or None when unset."""
    text = CPUS_SETTING.read(env)
    if not text:
        return None
    if not hasattr(os, "sched_setaffinity"):
        raise SettingsError(f"{PREFIX}{CPUS_VARIABLE} is not supported on this platform; unset it.")
    # Any CPU of the machine: `rtrl up` starts the learner from a process it has already moved off the
    # learner's CPUs. The kernel still refuses CPUs outside this process's cpuset (a container's limit).
    cpus = checked_cpus(text, set(range(os.cpu_count() or 1)))
    try:
        os.sched_setaffinity(0, cpus)
    except OSError as e:
        raise SettingsError(
            f"{PREFIX}{CPUS_VARIABLE}={text!r} names no CPU this process may run on ({e.strerror}); set it to "
            "CPUs of its container or cgroup, or unset it."
        ) from None
    if usable_cpus() != cpus:
        raise SettingsError(
            f"{PREFIX}{CPUS_VARIABLE}={text!r}: this process may run only on {format_cpu_list(usable_cpus())} of "
            "them (its container or cgroup allows no others); set it to those."
        )
    log.info("runs on CPUs %s (%s%s)", format_cpu_list(cpus), PREFIX, CPUS_VARIABLE)
    return cpus
