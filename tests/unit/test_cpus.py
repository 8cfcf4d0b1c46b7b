"""RTRL_CPUS and `rtrl up --learner-cpus`: CPU lists read like taskset's, checked against this machine."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from rtrl.config import SettingsError
from rtrl.cpus import checked_cpus, format_cpu_list, parse_cpu_list, usable_cpus


@pytest.mark.parametrize(
    ("text", "cpus", "shortest"),
    [
        ("1", {1}, "1"),
        ("0,2", {0, 2}, "0,2"),
        ("2-3", {2, 3}, "2-3"),
        ("0-2, 5", {0, 1, 2, 5}, "0-2,5"),
        ("3,1,2", {1, 2, 3}, "1-3"),
    ],
)
def test_cpu_lists_read_like_tasksets_and_print_shortest(text, cpus, shortest):
    assert parse_cpu_list(text) == cpus
    assert format_cpu_list(cpus) == shortest
    assert parse_cpu_list(shortest) == cpus


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "'' is not a CPU number"),
        ("one", "'one' is not"),
        ("3-1", "runs backwards"),
        ("0-99999999", "goes past CPU 65535"),
        ("1,,2", "'' is not"),
    ],
)
def test_malformed_cpu_lists_say_what_is_wrong(text, message):
    with pytest.raises(ValueError, match=message):
        parse_cpu_list(text)


def test_cpus_that_are_not_allowed_are_refused_with_the_ones_that_are():
    with pytest.raises(SettingsError, match=r"RTRL_CPUS='2' names CPUs that are not here; set it to some of 0-1\."):
        checked_cpus("2", {0, 1})
    with pytest.raises(SettingsError, match="RTRL_CPUS='x' is not valid"):
        checked_cpus("x", {0, 1})


def test_a_service_process_runs_on_the_cpus_it_is_given():
    cpu = min(usable_cpus())
    code = (
        "import os; from rtrl.cpus import apply_cpus_from_env; apply_cpus_from_env(); "
        "print(sorted(os.sched_getaffinity(0)))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "RTRL_CPUS": str(cpu)},
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.strip() == f"[{cpu}]"


def test_a_service_refuses_cpus_it_cannot_have_and_says_what_to_set():
    result = subprocess.run(
        [sys.executable, "-m", "rtrl.services.learner"],
        env={**os.environ, "RTRL_CPUS": "4096"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "learner: RTRL_CPUS='4096' names CPUs that are not here" in result.stderr
