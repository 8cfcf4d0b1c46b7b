"""Runs one inference replica: `python -m rtrl.services.inference`, configured by RTRL_* environment variables."""

from __future__ import annotations

import logging
import sys

from rtrl.config import SettingsError
from rtrl.cpus import apply_cpus_from_env
from rtrl.services.inference.server import serve
from rtrl.services.inference.settings import InferenceSettings


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        apply_cpus_from_env()
        settings = InferenceSettings.from_env()
    except SettingsError as e:
        print(f"inference: {e}", file=sys.stderr)
        return 2
    try:
        serve(settings)
    except OSError as e:
        # Typically the port is taken; the message says what to do.
        print(f"inference: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
