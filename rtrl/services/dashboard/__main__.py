"""`python -m rtrl.services.dashboard`: read RTRL_* settings, configure logging, serve until SIGTERM/SIGINT."""

from __future__ import annotations

import logging
import sys

from rtrl.config import SettingsError
from rtrl.cpus import apply_cpus_from_env
from rtrl.services.dashboard.server import serve
from rtrl.services.dashboard.settings import DashboardSettings


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        apply_cpus_from_env()
        settings = DashboardSettings.from_env()
    except SettingsError as e:
        print(f"dashboard: {e}", file=sys.stderr)
        return 2
    try:
        serve(settings)
    except OSError as e:
        print(
            f"dashboard: cannot serve on {settings.host}:{settings.port} ({e}); "
            "set RTRL_DASHBOARD_PORT to a free port.",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
