"""scripts/compose-smoke as a test: the compose file really runs, answers grpcurl and scales.

Deselected by default (pyproject addopts `-m "not compose"`): it builds images and runs containers
for minutes, as root. Run it with `pytest -m compose`; CI runs it when compose-related files change.
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from deploy_settings import ROOT

pytestmark = pytest.mark.compose


@pytest.mark.timeout(1800)
def test_compose_stack_builds_answers_grpcurl_and_scales(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("scripts/compose-smoke runs rootful podman and debootstrap: run the tests as root")
    report_path = tmp_path / "report.json"
    result = subprocess.run([str(ROOT / "scripts" / "compose-smoke"), "--report", str(report_path)], timeout=1700)
    report = json.loads(report_path.read_text())
    assert result.returncode == 0, report.get("failure")
    assert report["passed"]
    assert report["first_call_bound_s"] == 2.0
    assert max(report["first_call_after_register_s"].values()) <= report["first_call_bound_s"]
    assert report["coverage_window"] >= 0.99
    assert not any(report["calls_to_stopped_replicas"].values())
