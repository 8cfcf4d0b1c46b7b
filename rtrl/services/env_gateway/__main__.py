"""Runs the env gateway: `python -m rtrl.services.env_gateway`, configured by RTRL_* environment variables."""

from __future__ import annotations

import logging
import sys

import cv2

from rtrl.config import SettingsError
from rtrl.cpus import apply_cpus_from_env
from rtrl.services.env_gateway.backends import BackendError
from rtrl.services.env_gateway.server import serve
from rtrl.services.env_gateway.settings import GatewaySettings


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # OpenCV's worker threads make none of the gateway's small images faster, and a call that waits for
    # one the OS has not scheduled yet stalls the game clock (docs/profiles.md, screen signals' costs).
    cv2.setNumThreads(1)
    try:
        apply_cpus_from_env()
        serve(GatewaySettings.from_env())
    except SettingsError as error:
        print(f"env_gateway: {error}", file=sys.stderr)
        return 2
    except BackendError as error:
        print(f"env_gateway: the game failed: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
