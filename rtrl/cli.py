"""The `rtrl` command: `rtrl up` runs the whole stack; `rtrl gateway|inference|learner` runs one service;
`rtrl play` plays a checkpoint on its game (rtrl/play.py); `rtrl scan` finds a game variable in memory
(rtrl/scan.py); `rtrl profile check` shows a game profile's variables and rewards live (rtrl/profile_check.py).

The single-service commands are the entry points docker compose uses; they read only RTRL_*
environment variables, so a service behaves the same under compose, under `rtrl up` and by hand. `rtrl up`
also reads a run file (`--config run.toml`: rtrl/settings.py). Every `--help` of a service, and `rtrl up
--help`, ends with the settings it reads, made from the same tables as docs/settings.md.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import runpy
import sys
from pathlib import Path
from typing import Any

from rtrl import __version__
from rtrl.config import (
    DEFAULT_DASHBOARD_PORT,
    DEFAULT_GATEWAY_PORT,
    DEFAULT_HOST,
    DEFAULT_INFERENCE_PORT,
    DEFAULT_LEARNER_PORT,
    SettingsError,
)
from rtrl.cpus import parse_cpu_list
from rtrl.extras import missing_extra
from rtrl.services.env_gateway.scheduler import SCHEDULER_NAMES
from rtrl.settings import RunFile, check_variable, did_you_mean, load_run_file, settings_help
from rtrl.supervision import DEFAULT_RESTART_POLICY, RESTART_POLICIES

SERVICES = {
    "gateway": ("rtrl.services.env_gateway", "the env gateway: owns the game clock, asks inference for actions"),
    "inference": ("rtrl.services.inference", "an inference replica: answers Act with the newest checkpoint"),
    "learner": ("rtrl.services.learner", "the learner: trains on the transition stream, publishes checkpoints"),
    "dashboard": ("rtrl.services.dashboard", "the dashboard: a web page of the gateways, replicas and learner, live"),
}
# Commands whose module (rtrl/<module>.py) has options_from(args) and main(options).
TOOLS = {"play": "play", "scan": "scan", "profile": "profile_check"}


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number of seconds")
    return value


def _lines_per_second(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text} is not a number of lines a second; give one above 0 (such as 10)")
    return value


def _replica_count(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("at least 1 inference replica is needed for the gateway to act")
    return value


def _gateway_count(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("a run needs at least 1 gateway")
    return value


def _gateway_setting(text: str) -> tuple[int, str, str]:
    index, colon, setting = text.partition(":")
    name, equals, value = setting.partition("=")
    if not (colon and equals and index.isdigit() and name):
        raise argparse.ArgumentTypeError(f"{text!r} is not INDEX:NAME=VALUE (such as 1:DISPLAY=:2)")
    return int(index), name, value


def _cpu_list(text: str) -> str:
    if not text:
        return text  # the default: no pinning
    try:
        parse_cpu_list(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{e}; give CPUs like 1, 2-3 or 0,2") from None
    return text


def _episode_count(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("play at least 1 episode")
    return value


def _nice(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 19:
        raise argparse.ArgumentTypeError(f"{text} is not a niceness; give 0 (none) to 19 (lowest priority)")
    return value


def _key_value(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=VALUE")
    name, value = text.split("=", 1)
    if not name.startswith("RTRL_"):
        raise argparse.ArgumentTypeError(f"{name} is not an rtrl setting; settings start with RTRL_")
    try:
        check_variable(name)
    except SettingsError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return name, value


class _Parser(argparse.ArgumentParser):
    """argparse's parser, whose --help ends with the settings of the services in `settings_of`: made only when
    asked for, since the learner's hyperparameters import torch."""

    def __init__(self, *args: Any, settings_of: tuple[str, ...] = (), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.settings_of = settings_of

    def format_help(self) -> str:
        text = super().format_help()
        return f"{text}\n{settings_help(self.settings_of)}\n" if self.settings_of else text


def _long_options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    # argparse keeps a parser's options in _actions and has no public list of them.
    return {option: action for action in parser._actions for option in action.option_strings if option.startswith("--")}


def up_arguments(up: argparse.ArgumentParser, run_file: RunFile) -> list[str]:
    """A run file's [up] as `rtrl up` options (key inference_replicas is --inference-replicas), to go before the
    command line's own, which therefore win. Raises SettingsError for a key that is no option."""
    options = _long_options(up)
    arguments: list[str] = []
    for key, value in run_file.up.items():
        option = "--" + key.replace("_", "-")
        if key == "set":
            raise SettingsError(
                f"{run_file.path}: [up] set is not for a run file; give each setting under [all] or its service's "
                "section."
            )
        if option not in options or key == "config":
            keys = [o[2:].replace("-", "_") for o in options if o not in ("--config", "--set", "--help")]
            raise SettingsError(
                f"{run_file.path}: [up] {key} is not an option of rtrl up;{did_you_mean(key, keys)} "
                "`rtrl up --help` lists them."
            )
        action = options[option]
        if action.nargs == 0:  # a switch: --dashboard / --no-dashboard
            if not isinstance(value, bool):
                raise SettingsError(f"{run_file.path}: [up] {key} = {value!r}: give true or false.")
            negative = "--no-" + option[2:]
            arguments += [option] if value else ([negative] if negative in action.option_strings else [])
            continue
        for item in value if isinstance(value, list) else [value]:
            arguments += [option, str(item).lower() if isinstance(item, bool) else str(item)]
    return arguments


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="rtrl", description="Reinforcement learning on games that never pause.")
    parser.add_argument("--version", action="version", version=f"rtrl {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = sub.add_parser(
        "up",
        help="run Redis, the learner, inference replicas and the gateway on this machine",
        description="Runs the whole stack on this machine. Settings come, each overriding the next: from what rtrl "
        "up sets for each process (ports, ids, the run's files), --set, rtrl up's options (the command line's, "
        "then the run file's [up]), the environment, the run file's [all] and service sections, and the "
        "defaults (docs/settings.md).",
        settings_of=tuple(SERVICES),
    )
    up.add_argument(
        "--config",
        type=Path,
        metavar="RUN_FILE",
        help="a TOML run file: [up] holds these options (inference_replicas = 3), [all] settings for every "
        "service, and [gateway], [inference], [learner], [dashboard] each service's (frame_stack = 4 for "
        "RTRL_FRAME_STACK); an unknown name is an error (docs/settings.md)",
    )
    up.add_argument("--env", default="ale:Pong", help="game to run (default: ale:Pong)")
    up.add_argument("--inference-replicas", type=_replica_count, default=2, help="inference replicas (default: 2)")
    up.add_argument("--duration", type=_positive_float, help="stop cleanly after this many seconds")
    up.add_argument("--redis-url", help="use this Redis instead of an embedded one (redis://host:port/db)")
    up.add_argument("--checkpoint-dir", type=Path, help="checkpoint directory (default: checkpoints/<env>)")
    up.add_argument("--run-dir", type=Path, default=Path("runs"), help="where each run's logs go (default: runs/)")
    up.add_argument("--host", default=DEFAULT_HOST, help=f"address the services bind (default: {DEFAULT_HOST})")
    up.add_argument(
        "--gateways",
        type=_gateway_count,
        default=1,
        help="games played at once, each by its own gateway process (gateway 0 on --gateway-port, the others on free "
        "ports printed at start); they share the replicas, the stream and the learner (default: 1)",
    )
    up.add_argument(
        "--gateway-set",
        dest="gateway_settings",
        type=_gateway_setting,
        action="append",
        default=[],
        metavar="INDEX:NAME=VALUE",
        help="an environment variable for gateway INDEX alone (repeatable), such as 1:DISPLAY=:2 for a desktop game "
        "on a second X display, or 1:RTRL_PROFILE=second-window.toml (over every other setting of that gateway)",
    )
    up.add_argument("--gateway-port", type=int, default=DEFAULT_GATEWAY_PORT, help="port of gateway 0")
    up.add_argument("--learner-port", type=int, default=DEFAULT_LEARNER_PORT)
    up.add_argument(
        "--inference-base-port",
        type=int,
        default=DEFAULT_INFERENCE_PORT,
        help="replica i listens on this port + i",
    )
    up.add_argument(
        "--dashboard",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="serve the live dashboard web page (default: on; its URL is printed at start)",
    )
    up.add_argument("--dashboard-port", type=int, default=DEFAULT_DASHBOARD_PORT, help="port of the dashboard page")
    up.add_argument("--summary-json", type=Path, help="write the final status of every service here as JSON")
    up.add_argument(
        "--metrics-base-port",
        type=int,
        default=0,
        help="Prometheus /metrics ports: 0 (default) picks free ones, -1 turns them off, N gives gateway j N+j, the "
        "learner the next port and replica i the ones after (one gateway: N, N+1, N+2+i; printed at start and "
        "recorded in the run's addresses.json)",
    )
    up.add_argument(
        "--interaction",
        choices=("async", "sequential"),
        default="async",
        help="async: act, infer and learn at once (default); sequential: act -> learn -> act, the learner's "
        "update blocks acting (the baseline that freezes the game)",
    )
    up.add_argument(
        "--scheduler",
        choices=SCHEDULER_NAMES,
        help="when observations go to which replica (RTRL_SCHEDULER; default: the gateway's)",
    )
    up.add_argument(
        "--learner-cpus",
        type=_cpu_list,
        default="",
        metavar="LIST",
        help="run the learner on these CPUs only (like taskset: 1, 2-3, 0,2) and everything else on the others, "
        "so that training never shares a core with acting (RTRL_CPUS of each service; default: no pinning)",
    )
    up.add_argument(
        "--record-every",
        type=_positive_float,
        metavar="SECONDS",
        help="every SECONDS, when the learner has published a newer checkpoint, record one greedy episode of it with "
        "`rtrl play --fast` (nice 19, off the learner's CPUs, one at a time) to <run dir>/recordings/v<version>.gif "
        "and its return to recordings/index.jsonl; the dashboard links the newest (default: off)",
    )
    up.add_argument(
        "--restart",
        choices=RESTART_POLICIES,
        default=DEFAULT_RESTART_POLICY,
        help="on-failure (default): a service that exits unexpectedly is restarted (at once, then after 1 s, 2 s, "
        "... while it keeps dying) and the run goes on; one that fails 3 times in a row before it is ready stops "
        "the run. never: the first exit stops the run",
    )
    up.add_argument(
        "--set",
        dest="settings",
        type=_key_value,
        action="append",
        default=[],
        metavar="RTRL_NAME=VALUE",
        help="pass a setting to every service (repeatable), e.g. --set RTRL_DECISION_INTERVAL_FRAMES=2; it wins "
        "over the options above (--set RTRL_INTERACTION=sequential turns only the gateway sequential)",
    )

    play = sub.add_parser(
        "play",
        help="play the newest checkpoint of a directory on its game and print the returns (or record a video)",
        description="Plays the newest checkpoint in --checkpoint-dir on --env with the gateway's RTRL_* settings "
        "(decision interval, lead, frame stack, observation: give them as it was trained, with --set or the "
        "environment), each action computed as soon as its observation is sampled and applied L frames later. "
        "Prints each episode's return and length and the mean return.",
    )
    play.add_argument("--env", required=True, help="the game the checkpoint was trained on (RTRL_ENV), e.g. ale:Pong")
    play.add_argument(
        "--checkpoint-dir", required=True, type=Path, help="where the learner published it (rtrl up: checkpoints/<env>)"
    )
    play.add_argument("--episodes", type=_episode_count, default=10, help="episodes to play (default: 10)")
    play.add_argument(
        "--greedy",
        action="store_true",
        help="always the best action (argmax); default: act as a replica would (epsilon-greedy with the "
        "checkpoint's epsilon, or sampling an actor-critic's policy), seeded by RTRL_SEED",
    )
    play.add_argument(
        "--fast", action="store_true", help="as fast as possible instead of at the game's frame rate (not desktop:)"
    )
    play.add_argument(
        "--record",
        type=Path,
        metavar="PATH",
        help="write a video of every frame played: .mp4 (OpenCV, mp4v) or .gif (at most 320 px wide, 25 fps); "
        "{version} in PATH becomes the checkpoint version",
    )
    play.add_argument("--json", action="store_true", help="print one JSON object of the results instead")
    play.add_argument("--nice", type=_nice, default=0, help="lower this process's CPU priority by N (0-19)")
    play.add_argument(
        "--set",
        dest="settings",
        type=_key_value,
        action="append",
        default=[],
        metavar="RTRL_NAME=VALUE",
        help="a gateway setting the checkpoint was trained with (repeatable), e.g. --set RTRL_FRAME_STACK=4",
    )

    scan = sub.add_parser(
        "scan",
        help="find a game variable in a running game's memory and print the profile block that reads it",
        description="Find a game variable in a running game's memory: value scans narrow the addresses, a pointer "
        "scan finds static chains to them, and the result is the [variables.NAME] block for a profile "
        "(docs/your-game.md). Example: rtrl scan supertux2 --type f32 --unknown --hold Right 1s --increased "
        "--hold Left 0.5s --decreased --pointers",
    )
    from rtrl.scan import add_arguments as add_scan_arguments

    add_scan_arguments(scan)

    profile = sub.add_parser("profile", help="work on a game profile: `rtrl profile check PROFILE`")
    profile_sub = profile.add_subparsers(dest="profile_command", required=True, metavar="COMMAND")
    check = profile_sub.add_parser(
        "check",
        help="print a profile's variables, reward terms and episode ends live while a person (or --random) plays",
        description="Attaches to the game as the gateway would (its RTRL_* settings, DISPLAY, the profile's window "
        "or ROM), steps it at its frame rate with the profile's rules, and prints about --hz lines a second: every "
        "variable (? when unreadable), what each reward term paid since the last line and their sum, the "
        "episode's return, and each episode end with the rules that ended it (the next frame resets, as in the "
        "gateway). Without --random every frame applies the fallback action (no key on a desktop game), so a "
        "person plays in the game's window. Ctrl-C ends it with a one-line summary. Exit code 2: bad input (the "
        "profile, the game not running, memory that cannot be read), with a sentence saying what to do.",
    )
    check.add_argument("profile", metavar="PROFILE", help="a shipped profile's name or a path to a .toml file")
    check.add_argument(
        "--env",
        help="the game (RTRL_ENV): default desktop:PROFILE for a desktop profile; a pyboy profile needs "
        "pyboy:<ROM path> (or RTRL_ENV set to one)",
    )
    check.add_argument("--json", action="store_true", help="one JSON object per line (keys in docs/profiles.md)")
    check.add_argument(
        "--random",
        action="store_true",
        help="play random actions, each held for the decision interval (seeded by RTRL_SEED), instead of the fallback",
    )
    check.add_argument("--hz", type=_lines_per_second, default=10.0, help="lines a second (default: 10)")
    check.add_argument("--seconds", type=_positive_float, help="stop after this many seconds (default: at Ctrl-C)")
    check.add_argument(
        "--set",
        dest="settings",
        type=_key_value,
        action="append",
        default=[],
        metavar="RTRL_NAME=VALUE",
        help="a gateway setting (repeatable), e.g. --set RTRL_UNKNOWN_VARIABLE_TIMEOUT_S=5",
    )

    health = sub.add_parser("health", help="exit 0 when the gRPC server at ADDRESS reports SERVING (for probes)")
    health.add_argument("address", help="host:port of any rtrl service")
    health.add_argument("--timeout", type=_positive_float, default=2.0, help="seconds to wait for an answer")

    status = sub.add_parser(
        "status",
        help="a live table of every service of a running stack (from their gRPC status methods)",
        description="Asks each service for its status every second. Addresses come from the flags, or from the "
        "addresses.json the newest `rtrl up` wrote in --run-dir.",
    )
    status.add_argument("--once", action="store_true", help="print the table once and exit")
    status.add_argument("--json", action="store_true", help="print JSON (one object per poll; with --once, one)")
    status.add_argument("--gateway", action="append", default=[], metavar="HOST:PORT", help="a gateway (repeatable)")
    status.add_argument("--learner", default="", metavar="HOST:PORT", help="the learner")
    status.add_argument("--replica", action="append", default=[], metavar="HOST:PORT", help="a replica (repeatable)")
    status.add_argument("--redis-url", default="", help="also list the replicas registered in this Redis")
    status.add_argument("--addresses", type=Path, help="an addresses.json written by `rtrl up`")
    status.add_argument("--run-dir", type=Path, default=Path("runs"), help="where `rtrl up` keeps its runs")
    status.add_argument("--interval", type=_positive_float, default=1.0, help="seconds between refreshes")

    for name, (_module, help_text) in SERVICES.items():
        sub.add_parser(
            name,
            help=f"run {help_text} (settings from RTRL_* environment variables)",
            description=f"Runs {help_text}. Its settings come from RTRL_* environment variables, listed below; "
            "an RTRL_* variable that no service reads stops it at start.",
            settings_of=(name,),
        )
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args = parser.parse_args(argv)
    run_file: RunFile | None = None
    if args.command == "up" and args.config is not None:
        try:
            run_file = load_run_file(args.config)
            file_arguments = up_arguments(_subcommand(parser, "up"), run_file)
        except SettingsError as e:
            print(f"rtrl up: {e}", file=sys.stderr)
            return 2
        # The file's [up] goes first, so that an option also on the command line wins.
        up_at = argv.index("up") + 1
        args = parser.parse_args([*argv[:up_at], *file_arguments, *argv[up_at:]])
    if args.command in SERVICES:
        module, _ = SERVICES[args.command]
        sys.argv = [module]
        try:
            runpy.run_module(module, run_name="__main__", alter_sys=True)
        except ModuleNotFoundError as error:
            message = missing_extra(error, f"rtrl {args.command}")
            if message is None:
                raise
            print(f"rtrl {args.command}: {message}", file=sys.stderr)
            return 2
        return 0

    if args.command == "health":
        from rtrl.grpc_util import health_status

        try:
            # TLS and the token come from the same RTRL_* variables as the service's own.
            status = health_status(args.address, timeout_s=args.timeout)
        except SettingsError as e:
            print(f"rtrl health: {e}", file=sys.stderr)
            return 2
        print(status)
        return 0 if status == "SERVING" else 1

    if args.command in TOOLS:
        # Imported only when asked for: each brings its own dependencies (torch, numpy, X11).
        command = importlib.import_module(f"rtrl.{TOOLS[args.command]}")
        return int(command.main(command.options_from(args)))

    if args.command == "status":
        from rtrl.grpc_util import create_channel
        from rtrl.security import SecuritySettings
        from rtrl.status_table import StatusError, StatusPoller, resolve_addresses, run

        try:
            addresses = resolve_addresses(args.gateway, args.learner, args.replica, args.addresses, args.run_dir)
            # Read (and check) the TLS and token settings once, before any poll, so a bad one is a message.
            security = SecuritySettings.from_env()
            poller = StatusPoller(
                addresses, redis_url=args.redis_url, open_channel=lambda address: create_channel(address, security)
            )
        except (StatusError, ValueError) as e:  # ValueError: a bad --redis-url or RTRL_TLS_* setting
            print(f"rtrl status: {e}", file=sys.stderr)
            return 1
        return run(poller, args.once, args.json, args.interval)

    from rtrl.launcher import UpOptions, up

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    gateway_env: dict[int, dict[str, str]] = {}
    for index, name, value in args.gateway_settings:
        gateway_env.setdefault(index, {})[name] = value
    try:
        # Checked here too, before anything starts, though each service checks what it is given.
        for name in [*(n for env in gateway_env.values() for n in env), *os.environ]:
            if name.startswith("RTRL_"):
                check_variable(name)
    except SettingsError as e:
        print(f"rtrl up: {e}", file=sys.stderr)
        return 2
    options = UpOptions(
        env=args.env,
        inference_replicas=args.inference_replicas,
        duration_s=args.duration,
        redis_url=args.redis_url,
        checkpoint_dir=args.checkpoint_dir,
        run_dir=args.run_dir,
        host=args.host,
        gateway_port=args.gateway_port,
        learner_port=args.learner_port,
        inference_base_port=args.inference_base_port,
        summary_json=args.summary_json,
        metrics_base_port=args.metrics_base_port,
        dashboard=args.dashboard,
        dashboard_port=args.dashboard_port,
        interaction=args.interaction,
        scheduler=args.scheduler,
        learner_cpus=args.learner_cpus,
        record_every_s=args.record_every,
        restart=args.restart,
        gateways=args.gateways,
        gateway_env=gateway_env,
        extra_env=dict(args.settings),
        run_file=run_file,
    )
    return up(options)


def _subcommand(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    # argparse has no public way to reach a subcommand's parser.
    [commands] = [action for action in parser._actions if isinstance(action, argparse._SubParsersAction)]
    parser_of_command: argparse.ArgumentParser = commands.choices[name]
    return parser_of_command


if __name__ == "__main__":
    sys.exit(main())
