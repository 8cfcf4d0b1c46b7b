"""Keys held in a live game are released on every way out of the gateway, so no key stays stuck.

A key injected into a desktop game stays down until someone sends its release: if the gateway
stopped with Right held, Tux would run on forever. `KeyGuard` holds the keys of the current action
and releases them

- when an action no longer holds them (every step), and all of them on a fallback step (the
  backend calls `release_all()` when the clock applies the profile's fallback action);
- on `close()` (the gateway's graceful shutdown, which its SIGTERM/SIGINT handlers start) and at
  interpreter exit (`atexit`, for scripts that forget `close()`);
- when the process dies any other way (SIGKILL, a crash, a signal without a handler): a guardian
  subprocess holds the read end of a pipe whose write end only this process has. The OS closes that
  end when the process dies however it dies, the guardian reads end-of-file and releases every key
  of the profile's action set through its own connection to the input system (its own X display
  connection, or SendInput on Windows). On POSIX it also polls the gateway's pid, in case a forked
  child keeps a copy of the pipe open. It runs in its own session (POSIX) or process group and hidden
  console (Windows), so the Ctrl-C, hang-up or console close that ends the gateway does not take it
  down before it has released the keys.

The guardian is this file run as a script (`python keyguard.py`): it imports only the standard
library and the one input module it needs, not the gateway package, so it starts in a few tens of
milliseconds. Releasing a key that is not down is harmless on both platforms (the X server drops the
event, Windows ignores an unmatched key-up), which is why the guardian releases them all.

Only the thread that steps the backend calls `hold`; `release_all` and `close` may come from any
thread (atexit, a shutdown handler), so the key state is guarded by a lock.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import subprocess
import sys
import threading
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any, Protocol

# The guardian prints this once it can release keys; keys are never pressed before.
ARMED = "armed"
# How long the guardian may take to start and connect to the input system.
GUARDIAN_START_TIMEOUT_S = 10.0
# How long a closing guardian may take to release the keys and exit before it is killed.
GUARDIAN_STOP_TIMEOUT_S = 5.0
# How often the guardian checks that the gateway's pid still exists (POSIX only).
PID_POLL_INTERVAL_S = 0.2


class KeyInjector(Protocol):
    """Presses and releases keys in the game through the platform's input system.

    Keys are named in the platform's own words (`native_key`): X keysym names on Linux, pydirectinput
    names on Windows. `guardian_options` is what a guardian process needs to open its own injector.
    """

    platform: str

    def native_key(self, key: str) -> str:
        """The platform's name of a profile key; raises DesktopError naming an unknown key."""
        ...

    def press(self, key: str) -> None: ...

    def release(self, key: str) -> None: ...

    def guardian_options(self) -> dict[str, Any]: ...

    def close(self) -> None: ...


class GuardianError(RuntimeError):
    """The guardian process could not be started; keys would not be released if the gateway died."""


class KeyGuard:
    """The keys this process holds down, and the guarantees that they are let go.

    `keys` is every key the profile's actions and procedures may press, in the injector's native names;
    the guardian releases them all when this process dies.
    """

    def __init__(self, injector: KeyInjector, keys: Collection[str], *, guardian: bool = True) -> None:
        self._injector = injector
        self._keys = tuple(sorted(set(keys)))
        self._held: set[str] = set()
        self._lock = threading.Lock()
        self._closed = False
        self._guardian = Guardian(injector.platform, self._keys, injector.guardian_options()) if guardian else None
        atexit.register(self.release_all)

    @property
    def held(self) -> frozenset[str]:
        with self._lock:
            return frozenset(self._held)

    @property
    def guardian_pid(self) -> int | None:
        return self._guardian.pid if self._guardian is not None else None

    def hold(self, keys: Collection[str]) -> None:
        """Makes exactly `keys` the held keys: releases those no longer wanted, then presses new ones."""
        with self._lock:
            if self._closed:
                return
            wanted = set(keys)
            # Releases first so that, e.g., Left -> Right never has both down at once.
            for key in sorted(self._held - wanted):
                self._injector.release(key)
                self._held.discard(key)
            for key in sorted(wanted - self._held):
                self._injector.press(key)
                self._held.add(key)

    def release_all(self) -> None:
        """Releases every key this process holds (fallback steps, shutdown, atexit)."""
        with self._lock:
            self._release_held()

    def _release_held(self) -> None:
        for key in sorted(self._held):
            try:
                self._injector.release(key)
            finally:
                self._held.discard(key)

    def close(self) -> None:
        """Releases everything, stops the guardian (which releases once more) and the injector."""
        atexit.unregister(self.release_all)
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                self._release_held()
            finally:
                if self._guardian is not None:
                    self._guardian.stop()
                self._injector.close()


class Guardian:
    """The subprocess that releases `keys` when this process dies (see the module docstring)."""

    def __init__(self, platform: str, keys: Sequence[str], options: dict[str, Any]) -> None:
        config = {"platform": platform, "keys": list(keys), "watch_pid": os.getpid(), **options}
        popen_kwargs: dict[str, Any] = {}
        if sys.platform == "win32":
            # Its own hidden console: Ctrl-C or closing the gateway's console window does not reach it.
            popen_kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP | subprocess.CREATE_NO_WINDOW
        else:
            popen_kwargs["start_new_session"] = True
        try:
            self._process = subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve())],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                **popen_kwargs,
            )
        except OSError as error:
            raise GuardianError(f"the key guardian could not be started ({error})") from error
        assert self._process.stdin is not None and self._process.stdout is not None
        try:
            self._process.stdin.write(json.dumps(config) + "\n")
            self._process.stdin.flush()
            line = _readline_within(self._process.stdout, GUARDIAN_START_TIMEOUT_S)
        except (OSError, TimeoutError) as error:
            self.stop()
            raise GuardianError(
                f"the key guardian did not start ({error}); keys would stay stuck if the gateway died"
            ) from error
        if line.strip() != ARMED:
            self.stop()
            raise GuardianError(
                f"the key guardian could not reach the input system ({line.strip() or 'it exited at start'}); "
                "keys would stay stuck if the gateway died"
            )

    @property
    def pid(self) -> int:
        return self._process.pid

    def stop(self) -> None:
        """Closes the pipe (the guardian releases the keys and exits) and waits for it."""
        process = self._process
        if process.stdin is not None and not process.stdin.closed:
            with contextlib.suppress(OSError):  # it already exited and the pipe is broken
                process.stdin.close()
        try:
            process.wait(GUARDIAN_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


def _readline_within(stream: Any, timeout_s: float) -> str:
    # Pipes cannot be select()ed on Windows, so the blocking read runs on a helper thread.
    result: list[str] = []
    reader = threading.Thread(target=lambda: result.append(stream.readline()), daemon=True)
    reader.start()
    reader.join(timeout_s)
    if reader.is_alive():
        raise TimeoutError(f"no answer within {timeout_s:.0f} s")
    return result[0] if result else ""


# --- the guardian process -------------------------------------------------------------------------


def _x11_releaser(config: dict[str, Any]) -> Any:
    # Imported here: the guardian loads only the input module of its own platform.
    from Xlib import XK, X
    from Xlib import display as xdisplay
    from Xlib.ext import xtest

    display = xdisplay.Display(config.get("display") or None)
    keycodes = [display.keysym_to_keycode(XK.string_to_keysym(key)) for key in config["keys"]]

    def release() -> None:
        for keycode in keycodes:
            if keycode:
                xtest.fake_input(display, X.KeyRelease, keycode)
        display.sync()
        display.close()

    return release


def _windows_releaser(config: dict[str, Any]) -> Any:
    import pydirectinput

    def release() -> None:
        for key in config["keys"]:
            pydirectinput.keyUp(key, _pause=False)

    return release


def _watch_pid(pid: int, gone: threading.Event) -> None:
    while not gone.wait(PID_POLL_INTERVAL_S):
        # Reparenting (getppid changes) is the cheap sign; kill(pid, 0) covers a guardian whose parent
        # was not the gateway. A zombie gateway still "exists", but its pipe is already closed then.
        if os.getppid() != pid:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                gone.set()
            except PermissionError:
                pass  # it exists under another user


def guardian_main() -> int:
    """Runs in the guardian process: arm, wait for end-of-file or the gateway's death, release."""
    config = json.loads(sys.stdin.readline())
    try:
        release = _windows_releaser(config) if config["platform"] == "windows" else _x11_releaser(config)
    except Exception as error:
        print(f"cannot open the input system: {error}", flush=True)
        return 1
    gone = threading.Event()

    def wait_for_end_of_file() -> None:
        sys.stdin.read()
        gone.set()

    threading.Thread(target=wait_for_end_of_file, daemon=True).start()
    if os.name == "posix":
        threading.Thread(target=_watch_pid, args=(int(config["watch_pid"]), gone), daemon=True).start()
    print(ARMED, flush=True)
    gone.wait()
    release()
    return 0


if __name__ == "__main__":
    sys.exit(guardian_main())
