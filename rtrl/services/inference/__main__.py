"""Runs one inference replica: `python -m rtrl.services.inference`, configured by RTRL_* environment variables."""

from __future__ import annotations

import logging
import sys

from rtrl.config import SettingsError
from rtrl.cpus import apply_cpus_from_env
from rtrl.services.inference.policy import Policy
from rtrl.services.inference.server import PolicyFactory, serve
from rtrl.services.inference.settings import InferenceSettings


def main(policy_factory: PolicyFactory = Policy.from_settings, name: str = "inference") -> int:
    """`policy_factory` and `name` (its messages' prefix): a benchmark replica serves its own policy through
    this same entry point (bench/replica.py)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        apply_cpus_from_env()
        settings = InferenceSettings.from_env()
    except SettingsError as e:
        print(f"{name}: {e}", file=sys.stderr)
        return 2
    try:
        serve(settings, policy_factory)
    except OSError as e:
        # Typically the port is taken; the message says what to do.
        print(f"{name}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
