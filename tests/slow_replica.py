"""A real inference replica whose every forward pass lasts at least FORWARD_MS, as a process, for tests:

python tests/slow_replica.py FORWARD_MS     # configured by RTRL_* like `python -m rtrl.services.inference`
"""

from __future__ import annotations

import logging
import sys

from inference_doubles import SlowPolicy

from rtrl.services.inference.server import serve
from rtrl.services.inference.settings import InferenceSettings


def main() -> None:
    # The same log format as the real replica's: tests read its "listening on HOST:PORT" line.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    serve(InferenceSettings.from_env(), SlowPolicy.factory(float(sys.argv[1])))


if __name__ == "__main__":
    main()
