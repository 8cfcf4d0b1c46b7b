"""`python -m rtrl.services.learner`: read RTRL_* settings, configure logging, serve until SIGTERM/SIGINT."""

from __future__ import annotations

import logging
import os
import sys

from rtrl.config import SettingsError
from rtrl.cpus import apply_cpus_from_env
from rtrl.services.learner.loop import LearnerError
from rtrl.services.learner.server import serve
from rtrl.services.learner.settings import LearnerSettings


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        apply_cpus_from_env()
        settings = LearnerSettings.from_env()
    except SettingsError as e:
        print(f"learner: {e}", file=sys.stderr)
        return 2
    if settings.nice:
        # The whole process at lower priority: the gateway and replicas must win a contended CPU.
        os.nice(min(settings.nice, 19))
    try:
        serve(settings)
    except LearnerError as e:
        print(f"learner: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
