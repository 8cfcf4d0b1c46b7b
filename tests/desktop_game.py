"""The box game of tests/fixtures/desktop_game (a real X11 game that boxgame.py builds with gcc), as one
module any test can import: pytest puts tests/ on sys.path for tests/conftest.py."""

from __future__ import annotations

from pathlib import Path

from file_modules import load_file

boxgame = load_file("boxgame", Path(__file__).resolve().parent / "fixtures" / "desktop_game" / "boxgame.py")
