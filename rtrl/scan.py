"""`rtrl scan`: find a game variable in a running game's memory and print the profile block that reads it.

A scan is a list of steps run in order, given on the command line or typed one per line:

    rtrl scan supertux2 --type f32 --unknown --hold Right 1s --increased --hold Left 0.5s --decreased \\
        --wait 1s --unchanged --pointers

`--value N` or `--unknown` starts a scan over every writable region; `--changed`, `--unchanged`,
`--increased`, `--decreased` and `--value N` keep the candidates that did so since the step before.
Between them the person moves in the game (interactive: press the keys, then type the next step) or
`--hold KEYS DURATION` makes rtrl press them itself (`Right`, `Right+space`; `1s`, `500ms`).
`--pointers` turns the surviving addresses into static pointer chains; from then on the same steps
narrow the chains, and `--verify-after-restart` waits for the game to be restarted and keeps the
chains that still lead somewhere in the new process. The result is the `[variables.NAME]` block for
the profile, or with `--json` one JSON object for scripts.

The engine (value and pointer scans over any `ProcessMemory`) is rtrl/services/env_gateway/memory_scan.py.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TextIO

from rtrl.services.env_gateway.profiles import NUMBER_TYPES

if TYPE_CHECKING:  # the scan itself pulls numpy and the desktop backend: imported when a scan runs
    from rtrl.services.env_gateway.backends.desktop import Platform
    from rtrl.services.env_gateway.memory_scan import Scan

# The step kinds in the order `--help` lists them; each is also a command of the interactive prompt.
STEP_HELP = {
    "value": ("N", "keep the addresses holding N now (the first one starts the scan)"),
    "unknown": (None, "start with every address of the type (the value is not known yet)"),
    "changed": (None, "keep those whose value changed since the step before"),
    "unchanged": (None, "keep those whose value did not change"),
    "increased": (None, "keep those whose value went up"),
    "decreased": (None, "keep those whose value went down"),
    "hold": ("KEYS DURATION", "press KEYS (Right, Right+space) in the game for DURATION (1s, 500ms)"),
    "wait": ("DURATION", "wait, e.g. for the game to settle before --unchanged"),
    "pointers": (None, "find static pointer chains to the addresses left; later steps narrow the chains"),
    "verify-after-restart": (None, "wait for the game to restart and keep the chains that still resolve"),
}
POINTER_TARGETS = 64
"""Addresses a pointer scan starts from at most (the variable, its copies, and what narrowing left)."""
RESTART_POLL_S = 0.2
RESTART_SETTLE_S = 2.0
SHOWN = 20


@dataclass(frozen=True)
class Step:
    kind: str
    value: float | None = None
    keys: tuple[str, ...] = ()
    seconds: float = 0.0

    def __str__(self) -> str:
        if self.kind == "value":
            return f"value {self.value:g}"
        if self.kind == "hold":
            return f"hold {'+'.join(self.keys)} {self.seconds:g}s"
        if self.kind == "wait":
            return f"wait {self.seconds:g}s"
        return self.kind


@dataclass
class ScanOptions:
    target: str
    """A pid, or the process's executable name."""
    type_name: str = "i32"
    steps: list[Step] = field(default_factory=list)
    tolerance: float | None = None
    name: str = "value"
    json_output: bool = False
    show: int = SHOWN
    max_depth: int = 4
    max_offset: int = 0x1000
    max_chains: int = 20
    modules: tuple[str, ...] = ()
    restart_timeout_s: float = 120.0


def parse_duration(text: str) -> float:
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s)?\s*", text)
    if not match:
        raise ValueError(f"{text!r} is not a duration; write it like 1s, 0.5s or 500ms")
    seconds = float(match.group(1)) / (1000 if match.group(2) == "ms" else 1)
    if seconds > 600:
        raise ValueError(f"{text} is longer than 10 minutes; hold or wait for less")
    return seconds


def parse_step(words: list[str]) -> Step:
    """One step from its words: `value 12`, `hold Right+space 1s`, `increased`, ..."""
    if not words:
        raise ValueError("an empty step")
    kind, args = words[0].lstrip("-").lower(), words[1:]
    aliases = {"+": "increased", "-": "decreased", "=": "value", "restart": "verify-after-restart"}
    kind = aliases.get(kind, kind)
    if kind not in STEP_HELP:
        raise ValueError(f"{words[0]!r} is not a step; the steps are {', '.join(STEP_HELP)}")
    wanted = STEP_HELP[kind][0]
    count = 0 if wanted is None else len(wanted.split())
    if len(args) != count:
        raise ValueError(f"{kind} takes {wanted or 'nothing'}, not {' '.join(args) or 'nothing'}")
    if kind == "value":
        try:
            return Step(
                kind, value=float(int(args[0], 0)) if re.fullmatch(r"-?0x[0-9a-f]+", args[0], re.I) else float(args[0])
            )
        except ValueError:
            raise ValueError(f"{args[0]!r} is not a number") from None
    if kind == "hold":
        keys = tuple(key for key in args[0].split("+") if key)
        if not keys:
            raise ValueError(f"{args[0]!r} names no key; write keys like Right or Right+space")
        return Step(kind, keys=keys, seconds=parse_duration(args[1]))
    if kind == "wait":
        return Step(kind, seconds=parse_duration(args[0]))
    return Step(kind)


class StepAction(argparse.Action):
    """Appends the option's step to `steps`, so the steps keep the order they were given in."""

    def __call__(self, parser: Any, namespace: Any, values: Any, option_string: str | None = None) -> None:
        words = [self.dest, *([values] if isinstance(values, str) else (values or []))]
        try:
            step = parse_step(words)
        except ValueError as error:
            parser.error(f"{option_string}: {error}")
        steps = getattr(namespace, "steps", None) or []
        namespace.steps = [*steps, step]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("target", metavar="PROCESS", help="the game's pid, or its executable's name (supertux2)")
    parser.add_argument(
        "--type",
        dest="type_name",
        choices=list(NUMBER_TYPES),
        default="i32",
        help="the variable's type (default: i32; positions are often f32)",
    )
    steps = parser.add_argument_group("steps (run in the order given; without any, steps are read from stdin)")
    for kind, (metavar, meaning) in STEP_HELP.items():
        words = metavar.split() if metavar else []
        shown: str | tuple[str, ...] | None = tuple(words) if len(words) > 1 else metavar
        steps.add_argument(f"--{kind}", dest=kind, action=StepAction, nargs=len(words), metavar=shown, help=meaning)
    parser.set_defaults(steps=[])
    parser.add_argument(
        "--tolerance",
        type=float,
        help="how far a float may be from --value N and still match (default: 0.5 for f32/f64, 0 for integers)",
    )
    parser.add_argument("--name", default="value", help="the variable's name in the printed profile block")
    parser.add_argument("--json", dest="json_output", action="store_true", help="print one JSON object at the end")
    parser.add_argument("--show", type=int, default=SHOWN, help=f"candidates printed (default: {SHOWN})")
    parser.add_argument("--max-depth", type=int, default=4, help="pointers in a chain at most (default: 4)")
    parser.add_argument(
        "--max-offset",
        type=lambda text: int(text, 0),
        default=0x1000,
        help="largest offset from a pointer to what it leads to (default: 0x1000)",
    )
    parser.add_argument("--max-chains", type=int, default=20, help="chains kept (default: 20)")
    parser.add_argument(
        "--module",
        dest="modules",
        action="append",
        default=[],
        help="start chains only in this module (repeatable; default: any, the game's executable first)",
    )
    parser.add_argument(
        "--restart-timeout",
        dest="restart_timeout_s",
        type=float,
        default=120.0,
        help="seconds --verify-after-restart waits for the game to come back (default: 120)",
    )


def options_from(args: argparse.Namespace) -> ScanOptions:
    return ScanOptions(
        target=args.target,
        type_name=args.type_name,
        steps=list(args.steps),
        tolerance=args.tolerance,
        name=args.name,
        json_output=args.json_output,
        show=args.show,
        max_depth=args.max_depth,
        max_offset=args.max_offset,
        max_chains=args.max_chains,
        modules=tuple(args.modules),
        restart_timeout_s=args.restart_timeout_s,
    )


def print_result(result: dict[str, Any], total: int, out: TextIO) -> None:
    if result["chains"]:
        print(f"{len(result['chains'])} chains, best first:", file=out)
        for chain in result["chains"]:
            print(f"  {chain['chain']:<60} = {chain['value']:g}", file=out)
        print("\nfor the profile:\n", file=out)
        print(result["toml"], file=out)
        return
    if result["candidates"]:
        shown = len(result["candidates"])
        more = f" (the first {shown})" if shown < total else ""
        print(f"{total} candidates{more}:", file=out)
        for candidate in result["candidates"]:
            print(f"  0x{candidate['address']:x}  {candidate['where']:<36} = {candidate['value']:g}", file=out)
        if total <= POINTER_TARGETS:
            print("narrowed enough: add --pointers to find a static chain to them.", file=out)


def interactive(scan: Scan, lines: TextIO, out: TextIO, prompt: bool) -> None:
    """Steps typed one per line (`increased`, `hold Right 1s`, ...), plus `list`, `help` and `quit`."""
    from rtrl.services.env_gateway.backends.desktop import DesktopError
    from rtrl.services.env_gateway.memory_scan import ScanError

    if prompt:
        print("steps: " + ", ".join(STEP_HELP) + "; also list, help, quit", file=out)
    while True:
        if prompt:
            print("rtrl scan> ", end="", file=out, flush=True)
        line = lines.readline()
        if not line:
            return
        words = line.split()
        if not words:
            continue
        if words[0] in ("quit", "exit", "q"):
            return
        if words[0] == "help":
            for kind, (metavar, meaning) in STEP_HELP.items():
                print(f"  {kind} {metavar or ''}".ljust(34) + meaning, file=out)
            continue
        if words[0] == "list":
            print_result(scan.result(), scan.count, out)
            continue
        try:
            scan.run(parse_step(words))
        except (ValueError, ScanError, DesktopError) as error:
            print(f"rtrl scan: {error}", file=out)


def main(options: ScanOptions, platform: Platform | None = None, stdin: TextIO | None = None) -> int:
    """Runs the scan; 0 with a result, 2 with one sentence on stderr when the scan cannot go on."""
    from rtrl.services.env_gateway.backends.desktop import DesktopError, current_platform
    from rtrl.services.env_gateway.memory_scan import Scan, ScanError

    stdin = sys.stdin if stdin is None else stdin

    def say(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    try:
        scan = Scan(options, platform or current_platform(), say)
    except (ScanError, DesktopError) as error:
        print(f"rtrl scan: {error}", file=sys.stderr)
        return 2
    try:
        if options.steps:
            for step in options.steps:
                scan.run(step)
        else:
            interactive(scan, stdin, sys.stderr, prompt=stdin.isatty())
        result = scan.result()
    except (ScanError, DesktopError) as error:
        print(f"rtrl scan: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("rtrl scan: stopped.", file=sys.stderr)
        return 130
    finally:
        scan.close()
    if options.json_output:
        print(json.dumps(result), flush=True)
    else:
        print_result(result, scan.count, sys.stdout)
    return 0
