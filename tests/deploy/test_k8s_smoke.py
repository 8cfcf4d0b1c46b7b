"""scripts/k8s-smoke as a test: the Kubernetes manifests really run (under `podman kube play`), pass their
readiness probes, act, share checkpoints and scale.

Deselected by default like the compose smoke (marker `compose`: images and containers, minutes, root).
Run it with `pytest -m compose`; CI runs it when container-related files change.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from deploy_settings import ROOT

pytestmark = pytest.mark.compose


@pytest.mark.timeout(1800)
def test_k8s_manifests_run_under_podman_kube_play_and_scale(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("scripts/k8s-smoke runs rootful podman: run the tests as root")
    report_path = tmp_path / "report.json"
    script = str(ROOT / "scripts" / "k8s-smoke")
    result = subprocess.run([sys.executable, script, "--report", str(report_path)], timeout=1700)
    report = json.loads(report_path.read_text())
    assert result.returncode == 0, report.get("failure")
    assert report["passed"]
    assert report["checkpoints"]["published"] >= 1 and min(report["checkpoints"]["served"].values()) >= 1
    # compose's 2 s plus the lag of podman's DNS for a new pod's name (scripts/k8s-smoke, PODMAN_DNS_LAG_S)
    assert report["first_call_bound_s"] == 5.0
    assert max(report["first_call_after_register_s"].values()) <= report["first_call_bound_s"]
    assert report["coverage_window"] >= 0.99
    assert not any(report["calls_to_stopped_replicas"].values())
