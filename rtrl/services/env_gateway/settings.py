"""Settings of the env gateway, read once at start from `RTRL_*` environment variables.

`SETTINGS` declares every variable (type, default, one line of meaning; docs/settings.md lists them).
Every value is validated here so that a bad configuration stops the gateway before it opens a port,
with a sentence naming the variable to set. `FallbackPolicy` lives here too because it is a setting
whose values travel in transitions and in GetSpec (they are the rtrl.v1.FallbackPolicy numbers).
"""

from __future__ import annotations

import enum
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial

from rtrl.config import (
    DEFAULT_GATEWAY_PORT,
    DEFAULT_HOST,
    DEFAULT_LEARNER_PORT,
    DEFAULT_STREAM,
    METRICS_DISABLED,
    PREFIX,
    Setting,
    SettingsError,
    SettingsTable,
    checked_metrics_port,
    environ,
)
from rtrl.redis_client import checked_redis_url
from rtrl.registry import DEFAULT_REPLICA_REGISTRY
from rtrl.security import SecuritySettings
from rtrl.services.env_gateway.profiles import (
    GameProfile,
    Preprocess,
    ProfileError,
    load_profile,
    profile_for_rom_title,
    rom_header_title,
    shipped_profiles,
)
from rtrl.services.env_gateway.scheduler import SCHEDULER_NAMES
from rtrl.settings import check_environment
from rtrl.v1 import env_gateway_pb2

DEFAULT_ENV = "ale:Pong"
DEFAULT_DECISION_INTERVAL_FRAMES = 4
DEFAULT_LEAD_FRAMES = 2
DEFAULT_FALLBACK_POLICY = "noop"
DEFAULT_FALLBACK_ACTION = 0
DEFAULT_OBS_WIDTH = 84
DEFAULT_OBS_HEIGHT = 84
DEFAULT_FRAME_STACK = 4
# 30 minutes of play at 60 fps, the usual Atari evaluation cap.
DEFAULT_MAX_EPISODE_FRAMES = 108_000
# Replicas are found in the registry in Redis (RTRL_REPLICA_REGISTRY); a static list is optional.
DEFAULT_INFERENCE_ADDRESSES: tuple[str, ...] = ()
# Chosen from bench/staggering.py (docs/staggering-benchmark.md says why).
DEFAULT_SCHEDULER = "next_idle"
# One frame of staleness for a reply that comes back up to a frame late: coverage at N = ceil(t_infer/
# t_frame) + 1 went from 99.96 / 99.71 / 99.46% to 100.00% at 1 / 4 / 8-frame inference, side by side
# (docs/staggering-benchmark.md); 0 applies each reply as early as it can.
DEFAULT_JITTER_RESERVE_FRAMES = 1
# RTRL_OBSERVATION: "auto" (also when unset) plays a gym: env whose observation space is a 1-D Box from its
# state, and everything else from pixels.
OBSERVATION_AUTO = "auto"
OBSERVATION_NAMES = ("pixels", "state")
# State observations decide every env step with the shortest lead, as gym users expect, and without a jitter
# reserve: with k = 1 and S = L + k = 2, a reserve of 1 would hold every reply a frame, so every action would
# land a step late.
STATE_DECISION_INTERVAL_FRAMES = 1
STATE_LEAD_FRAMES = 1
STATE_JITTER_RESERVE_FRAMES = 0
INTERACTION_NAMES = ("async", "sequential")
# realtime: the game runs at its frame rate and never waits; simulated: as fast as possible, each action
# applied exactly RTRL_SIMULATED_DELAY_FRAMES frames after its observation (simulated_clock.py).
CLOCK_NAMES = ("realtime", "simulated")
DEFAULT_SIMULATED_DELAY_FRAMES = 1
DEFAULT_SIMULATED_REPLY_TIMEOUT_S = 30.0
DEFAULT_LEARNER_ADDRESS = f"127.0.0.1:{DEFAULT_LEARNER_PORT}"
DEFAULT_SEQUENTIAL_UPDATES = 1
DEFAULT_SEQUENTIAL_TRAIN_TIMEOUT_S = 30.0
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_STREAM_MAXLEN = 5000
DEFAULT_PUBLISH_QUEUE_SIZE = 1024

ENV_FORMS = (
    '"ale:<Game>" (e.g. ale:Pong, an Atari game from ale-py), "gym:<gymnasium id>" (e.g. gym:CartPole-v1), '
    '"pyboy:<ROM path>" (a Game Boy ROM you own, e.g. pyboy:/roms/tetris.gb) or "desktop:<profile>" '
    "(a game window, e.g. desktop:supertux)"
)
ENV_KINDS = ("ale", "gym", "pyboy", "desktop")


class FallbackPolicy(enum.IntEnum):
    """What the gateway applies on a step without a fresh action (values of rtrl.v1.FallbackPolicy)."""

    NOOP = env_gateway_pb2.FALLBACK_POLICY_NOOP
    REPEAT_LAST = env_gateway_pb2.FALLBACK_POLICY_REPEAT_LAST
    RANDOM = env_gateway_pb2.FALLBACK_POLICY_RANDOM

    @classmethod
    def parse(cls, name: str) -> FallbackPolicy:
        return cls[name.upper()]


FALLBACK_POLICY_NAMES = tuple(policy.name.lower() for policy in FallbackPolicy)


@dataclass(frozen=True)
class EnvSpec:
    """A parsed RTRL_ENV value: which backend runs which game."""

    spec: str
    """The value as given, e.g. "ale:Pong"; reported by GetSpec."""
    kind: str
    """"ale", "gym", "pyboy" or "desktop"."""
    name: str
    """The part after the colon: an ALE game name, a gymnasium id, a ROM path or a desktop profile."""

    @property
    def gymnasium_id(self) -> str:
        return f"ALE/{self.name}-v5" if self.kind == "ale" else self.name

    @classmethod
    def parse(cls, spec: str) -> EnvSpec:
        kind, sep, name = spec.partition(":")
        kind = kind.strip().lower()
        name = name.strip()
        if not sep or kind not in ENV_KINDS or not name:
            raise SettingsError(f"{PREFIX}ENV={spec!r} is not an environment spec; set it to {ENV_FORMS}.")
        return cls(spec=spec, kind=kind, name=name)


DEFAULT_ENV_SPEC = EnvSpec.parse(DEFAULT_ENV)

SETTINGS = SettingsTable(
    Setting(
        "ENV",
        str,
        DEFAULT_ENV,
        "The game: ale:<Game> (ALE/<Game>-v5, frameskip 1), gym:<gymnasium id>, pyboy:<ROM path> or desktop:<profile>.",
    ),
    Setting(
        "PROFILE",
        str,
        "",
        "Game profile of a pyboy: or desktop: game, a shipped name or a .toml path (docs/profiles.md); empty: the one "
        "the ROM's header title or the desktop: name picks.",
    ),
    Setting(
        "OBSERVATION",
        str,
        OBSERVATION_AUTO,
        "What the policy sees: pictures, or a gym: env's state vector; auto: state for a 1-D Box space, else pixels.",
        choices=(OBSERVATION_AUTO, *OBSERVATION_NAMES),
    ),
    Setting("GATEWAY_HOST", str, DEFAULT_HOST, "Interface the gRPC server listens on."),
    Setting("GATEWAY_PORT", int, DEFAULT_GATEWAY_PORT, "Port of the gRPC server; 0 picks a free one.", minimum=0),
    Setting(
        "GATEWAY_METRICS_PORT",
        int,
        METRICS_DISABLED,
        "Prometheus /metrics port on the gateway's host (docs/metrics.md); 0 picks a free one, -1 turns it off.",
    ),
    Setting(
        "GATEWAY_ID",
        str,
        "",
        "This game's name in transitions, Act calls and metrics.",
        default_text="gateway-<hostname>",
    ),
    Setting(
        "STICKY_ACTIONS",
        float,
        0.0,
        "ALE's repeat_action_probability, 0 to 1 (0: a deterministic emulator).",
        minimum=0.0,
    ),
    Setting(
        "UNKNOWN_VARIABLE_TIMEOUT_S",
        float,
        2.0,
        "Seconds a profile variable may stay unreadable or non-finite before the episode ends as truncated "
        "(docs/profiles.md).",
        minimum=0.0,
    ),
    Setting(
        "FRAME_RATE_HZ",
        float,
        0.0,
        "Clock rate in frames per second; 0: the game's native rate (60 for ALE).",
        minimum=0.0,
    ),
    Setting(
        "DECISION_INTERVAL_FRAMES",
        int,
        DEFAULT_DECISION_INTERVAL_FRAMES,
        "k: frames each decision's action is held.",
        minimum=1,
        default_text=f"{DEFAULT_DECISION_INTERVAL_FRAMES} (the profile's frame_skip; "
        f"state: {STATE_DECISION_INTERVAL_FRAMES})",
    ),
    Setting(
        "LEAD_FRAMES",
        int,
        DEFAULT_LEAD_FRAMES,
        "L: frames from a step's observation to the first frame its action is applied on (the round-trip budget).",
        minimum=0,
        default_text=f"{DEFAULT_LEAD_FRAMES} (state: {STATE_LEAD_FRAMES})",
    ),
    Setting(
        "MAX_STALENESS_FRAMES",
        int,
        0,
        "S: oldest an action may be when first applied, in frames from its observation; 0: L + k.",
        minimum=0,
    ),
    Setting(
        "JITTER_RESERVE_FRAMES",
        int,
        DEFAULT_JITTER_RESERVE_FRAMES,
        "Frames every fresh action waits beyond the usual staleness D (at most S), so a reply late by that much "
        "still lands on its step; async interaction only (docs/staggering-benchmark.md).",
        minimum=0,
        default_text=f"{DEFAULT_JITTER_RESERVE_FRAMES} (state: {STATE_JITTER_RESERVE_FRAMES})",
    ),
    Setting(
        "FALLBACK_POLICY",
        str,
        DEFAULT_FALLBACK_POLICY,
        "What a step without a fresh action applies.",
        choices=FALLBACK_POLICY_NAMES,
    ),
    Setting(
        "FALLBACK_ACTION",
        int,
        DEFAULT_FALLBACK_ACTION,
        "Action the noop policy applies (and repeat_last at an episode's start).",
        minimum=0,
        default_text=f"{DEFAULT_FALLBACK_ACTION} (the profile's fallback)",
    ),
    Setting(
        "OBS_WIDTH",
        int,
        DEFAULT_OBS_WIDTH,
        "Observation width in pixels after resizing (cv2 INTER_AREA).",
        minimum=1,
        default_text=f"{DEFAULT_OBS_WIDTH} (the profile's)",
    ),
    Setting(
        "OBS_HEIGHT",
        int,
        DEFAULT_OBS_HEIGHT,
        "Observation height in pixels after resizing (cv2 INTER_AREA).",
        minimum=1,
        default_text=f"{DEFAULT_OBS_HEIGHT} (the profile's)",
    ),
    Setting(
        "OBS_GRAYSCALE",
        bool,
        True,
        "One grey channel per frame (true) or three colour channels (false).",
        default_text="true (the profile's)",
    ),
    Setting(
        "FRAME_STACK",
        int,
        DEFAULT_FRAME_STACK,
        "Sampled decision frames (or states) stacked into one observation.",
        minimum=1,
        default_text=f"{DEFAULT_FRAME_STACK} (the profile's)",
    ),
    Setting(
        "MAX_EPISODE_FRAMES",
        int,
        DEFAULT_MAX_EPISODE_FRAMES,
        "Frames after which an episode is truncated; 0: never.",
        minimum=0,
    ),
    Setting(
        "INFERENCE_ADDRESSES",
        tuple,
        DEFAULT_INFERENCE_ADDRESSES,
        "host:port of replicas besides those in the registry, comma-separated; every address a host resolves to is "
        "a replica, re-resolved every second.",
    ),
    Setting(
        "REPLICA_REGISTRY",
        str,
        DEFAULT_REPLICA_REGISTRY,
        "Redis key (a sorted set in RTRL_REDIS_URL) where replicas register, read every 0.5 s (rtrl/registry.py).",
    ),
    Setting(
        "SCHEDULER",
        str,
        DEFAULT_SCHEDULER,
        "When observations go to which replica (scheduler.py; max_time is Algorithm 1 of Riemer et al. 2024).",
        choices=SCHEDULER_NAMES,
    ),
    Setting(
        "INTERACTION",
        str,
        "async",
        "async: act without pause; sequential: act -> learn -> act, the baseline that freezes the game.",
        choices=INTERACTION_NAMES,
    ),
    Setting(
        "CLOCK",
        str,
        "realtime",
        "realtime: the game runs at its frame rate and never waits; simulated: as fast as possible, each action "
        "applied exactly RTRL_SIMULATED_DELAY_FRAMES frames after its observation (simulated_clock.py).",
        choices=CLOCK_NAMES,
    ),
    Setting(
        "SIMULATED_DELAY_FRAMES",
        int,
        DEFAULT_SIMULATED_DELAY_FRAMES,
        "Simulated clock: d, frames from an observation to the frame its action is applied on.",
        minimum=1,
    ),
    Setting(
        "SIMULATED_REPLY_TIMEOUT_S",
        float,
        DEFAULT_SIMULATED_REPLY_TIMEOUT_S,
        "Simulated clock: seconds a step waits for its reply before the fallback acts (counted in GetStats).",
        minimum=0.001,
    ),
    Setting(
        "LEARNER_ADDRESS",
        str,
        DEFAULT_LEARNER_ADDRESS,
        "host:port of the learner, called (Train) in sequential interaction.",
    ),
    Setting(
        "SEQUENTIAL_UPDATES",
        int,
        DEFAULT_SEQUENTIAL_UPDATES,
        "Learner updates per act -> learn cycle in sequential interaction.",
        minimum=1,
    ),
    Setting(
        "SEQUENTIAL_TRAIN_TIMEOUT_S",
        float,
        DEFAULT_SEQUENTIAL_TRAIN_TIMEOUT_S,
        "Deadline of one Train call in sequential interaction.",
        minimum=0.001,
    ),
    Setting("REDIS_URL", str, DEFAULT_REDIS_URL, "Redis holding the transition stream and the replica registry."),
    Setting(
        "STREAM",
        str,
        DEFAULT_STREAM,
        "Redis stream transitions are appended to, each entry's field transition holding "
        "rtrl.transitions.encode bytes.",
    ),
    Setting("STREAM_MAXLEN", int, DEFAULT_STREAM_MAXLEN, "Approximate length the stream is trimmed to.", minimum=1),
    Setting(
        "PUBLISH_QUEUE_SIZE",
        int,
        DEFAULT_PUBLISH_QUEUE_SIZE,
        "Transitions buffered for the publisher before new ones are dropped.",
        minimum=1,
    ),
    Setting("SEED", int, 0, "Seed of the first reset and of the random fallback policy.", minimum=0),
    Setting(
        "GATEWAY_FINAL_STATS_PATH",
        str,
        "",
        "When set, GetStats is written here as JSON after a graceful stop (rtrl up sets it and reads it).",
    ),
    Setting(
        "GATEWAY_EPISODE_LOG",
        str,
        "",
        "When set, one JSON line per finished episode (return, frames, decisions, fresh ones, how it ended, when) is "
        "appended here; rtrl up writes runs/<time>/episodes.jsonl.",
    ),
)


@dataclass(frozen=True)
class GatewaySettings:
    """Everything the gateway is configured with; build it with `from_env`."""

    host: str = DEFAULT_HOST
    """Interface the gRPC server listens on."""
    port: int = DEFAULT_GATEWAY_PORT
    """Port of the gRPC server (0 picks a free one)."""
    metrics_port: int = METRICS_DISABLED
    """RTRL_GATEWAY_METRICS_PORT: Prometheus /metrics on `host` (0 picks a free port; unset or -1: off)."""
    gateway_id: str = "gateway"
    """Identifier of this game instance in transitions, Act requests and metrics."""
    env: EnvSpec = DEFAULT_ENV_SPEC
    """Which game runs."""
    profile: GameProfile | None = None
    """The game profile of a pyboy or desktop game (RTRL_PROFILE, see docs/profiles.md); None for ale/gym."""
    observation: str = OBSERVATION_AUTO
    """What the policy sees: "pixels" (pictures, resized and stacked) or "state" (a gym env's state vector, float32,
    stacked); "auto" lets the backend pick state for a 1-D Box observation space (from_env resolves it)."""
    sticky_actions: float = 0.0
    """ALE repeat_action_probability (0 = deterministic emulator)."""
    unknown_variable_timeout_s: float = 2.0
    """Seconds a profile variable may stay unreadable or non-finite before the episode ends as truncated
    (RTRL_UNKNOWN_VARIABLE_TIMEOUT_S; rtrl/services/env_gateway/game_rules.py)."""
    frame_rate_hz: float = 0.0
    """Clock rate in frames per second; 0 means the backend's native rate (60 for ALE)."""
    decision_interval_frames: int = DEFAULT_DECISION_INTERVAL_FRAMES
    """k: frames one decision's action is held."""
    lead_frames: int = DEFAULT_LEAD_FRAMES
    """L: frames between a step's observation and its first applied frame."""
    max_staleness_frames: int = DEFAULT_LEAD_FRAMES + DEFAULT_DECISION_INTERVAL_FRAMES
    """S: oldest an action may be when first applied, in frames from its observation."""
    jitter_reserve_frames: int = DEFAULT_JITTER_RESERVE_FRAMES
    """Frames added to the usual staleness D, for which early replies wait so a late one still lands."""
    fallback_policy: FallbackPolicy = FallbackPolicy.NOOP
    """What a step without a fresh action applies."""
    fallback_action: int = DEFAULT_FALLBACK_ACTION
    """Action applied by the noop policy (and at the start of an episode for repeat_last)."""
    obs_width: int = DEFAULT_OBS_WIDTH
    """Observation width in pixels after resizing."""
    obs_height: int = DEFAULT_OBS_HEIGHT
    """Observation height in pixels after resizing."""
    obs_grayscale: bool = True
    """One grey channel per frame (True) or three colour channels (False)."""
    frame_stack: int = DEFAULT_FRAME_STACK
    """Sampled decision frames stacked into one observation."""
    max_episode_frames: int = DEFAULT_MAX_EPISODE_FRAMES
    """Frames after which an episode is truncated (0 = never)."""
    inference_addresses: tuple[str, ...] = DEFAULT_INFERENCE_ADDRESSES
    """host:port of inference replicas besides those in the registry; each host may resolve to several."""
    replica_registry: str = DEFAULT_REPLICA_REGISTRY
    """Redis key (sorted set, in the Redis of `redis_url`) where replicas register (rtrl/registry.py)."""
    scheduler: str = DEFAULT_SCHEDULER
    interaction: str = "async"
    """async: act without pause; sequential: act -> learn -> act, one decision at a time (a baseline)."""
    clock: str = "realtime"
    """realtime: the game runs at its frame rate; simulated: as fast as the system allows, frame-accurate delays."""
    simulated_delay_frames: int = DEFAULT_SIMULATED_DELAY_FRAMES
    """Simulated clock only: d, frames from an observation to the frame its action is applied on."""
    simulated_reply_timeout_s: float = DEFAULT_SIMULATED_REPLY_TIMEOUT_S
    """Simulated clock only: how long a step waits for its reply before the fallback acts instead."""
    learner_address: str = DEFAULT_LEARNER_ADDRESS
    """host:port of the learner, called (Train) only in sequential interaction."""
    sequential_updates: int = DEFAULT_SEQUENTIAL_UPDATES
    """Learner updates per act -> learn cycle in sequential interaction."""
    sequential_train_timeout_s: float = DEFAULT_SEQUENTIAL_TRAIN_TIMEOUT_S
    """Deadline of one Train call in sequential interaction."""
    redis_url: str = DEFAULT_REDIS_URL
    """Redis that holds the transition stream."""
    stream: str = DEFAULT_STREAM
    """Redis stream key transitions are appended to."""
    stream_maxlen: int = DEFAULT_STREAM_MAXLEN
    """Approximate length the stream is trimmed to."""
    publish_queue_size: int = DEFAULT_PUBLISH_QUEUE_SIZE
    """Transitions buffered for the publisher before new ones are dropped."""
    seed: int = 0
    """Seed of the first reset and of the random fallback policy."""
    final_stats_path: str = ""
    """When set, GetStats is written here as JSON after a graceful stop (the publisher flushed first)."""
    episode_log_path: str = ""
    """When set, one JSON line per finished episode is appended here (rtrl/services/env_gateway/episodes.py)."""
    security: SecuritySettings = field(default_factory=SecuritySettings)
    """TLS, token and message size limit of the server and of the channels to replicas and learner (RTRL_TLS_*,
    RTRL_AUTH_TOKEN, RTRL_GRPC_MAX_MESSAGE_BYTES; rtrl/security.py)."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> GatewaySettings:
        env = environ() if env is None else env
        check_environment(env, hyperparameters=False)
        read = partial(SETTINGS.read, env)

        env_spec = EnvSpec.parse(read("ENV"))
        profile = resolve_profile(env_spec, read("PROFILE"))
        observation = resolve_observation(env_spec, read("OBSERVATION"))
        state = observation == "state"
        # A profile's preprocessing and fallback are the defaults; a variable set explicitly still wins.
        shape = (
            profile.preprocess
            if profile is not None
            else Preprocess(
                DEFAULT_OBS_WIDTH, DEFAULT_OBS_HEIGHT, True, DEFAULT_FRAME_STACK, DEFAULT_DECISION_INTERVAL_FRAMES
            )
        )
        default_fallback = profile.actions.fallback if profile is not None else DEFAULT_FALLBACK_ACTION
        decision_interval = read(
            "DECISION_INTERVAL_FRAMES", STATE_DECISION_INTERVAL_FRAMES if state else shape.frame_skip
        )
        lead = read("LEAD_FRAMES", STATE_LEAD_FRAMES if state else DEFAULT_LEAD_FRAMES)
        max_staleness = read("MAX_STALENESS_FRAMES") or lead + decision_interval
        if max_staleness < lead:
            raise SettingsError(
                f"{PREFIX}MAX_STALENESS_FRAMES={max_staleness} is below {PREFIX}LEAD_FRAMES={lead}, so no "
                f"action could ever be applied; set it to {lead} or more (0 means lead + decision interval)."
            )
        jitter_reserve = read(
            "JITTER_RESERVE_FRAMES", STATE_JITTER_RESERVE_FRAMES if state else DEFAULT_JITTER_RESERVE_FRAMES
        )
        if jitter_reserve > max_staleness:
            raise SettingsError(
                f"{PREFIX}JITTER_RESERVE_FRAMES={jitter_reserve} is above {PREFIX}MAX_STALENESS_FRAMES="
                f"{max_staleness}, so held replies would expire; set it to {max_staleness} or less (usually 0 or 1)."
            )
        sticky = read("STICKY_ACTIONS")
        if sticky > 1.0:
            raise SettingsError(f"{PREFIX}STICKY_ACTIONS={sticky} is a probability; set it between 0 and 1.")
        addresses = read("INFERENCE_ADDRESSES")
        for address in addresses:
            split_host_port(address)
        learner_address = read("LEARNER_ADDRESS")
        clock = read("CLOCK")
        # The simulated clock's settings are read only when it runs, so they never look like realtime ones.
        simulated = clock == "simulated"
        split_host_port(learner_address, "LEARNER_ADDRESS")
        return cls(
            host=read("GATEWAY_HOST"),
            port=read("GATEWAY_PORT"),
            metrics_port=checked_metrics_port(read("GATEWAY_METRICS_PORT"), "GATEWAY_METRICS_PORT"),
            gateway_id=read("GATEWAY_ID", "gateway-" + socket.gethostname()),
            env=env_spec,
            profile=profile,
            observation=observation,
            sticky_actions=sticky,
            unknown_variable_timeout_s=read("UNKNOWN_VARIABLE_TIMEOUT_S"),
            frame_rate_hz=read("FRAME_RATE_HZ"),
            decision_interval_frames=decision_interval,
            lead_frames=lead,
            max_staleness_frames=max_staleness,
            jitter_reserve_frames=jitter_reserve,
            fallback_policy=FallbackPolicy.parse(read("FALLBACK_POLICY")),
            fallback_action=read("FALLBACK_ACTION", default_fallback),
            obs_width=read("OBS_WIDTH", shape.width),
            obs_height=read("OBS_HEIGHT", shape.height),
            obs_grayscale=read("OBS_GRAYSCALE", shape.grayscale),
            frame_stack=read("FRAME_STACK", shape.frame_stack),
            max_episode_frames=read("MAX_EPISODE_FRAMES"),
            inference_addresses=addresses,
            replica_registry=read("REPLICA_REGISTRY"),
            scheduler=read("SCHEDULER"),
            interaction=read("INTERACTION"),
            clock=clock,
            simulated_delay_frames=read("SIMULATED_DELAY_FRAMES") if simulated else DEFAULT_SIMULATED_DELAY_FRAMES,
            simulated_reply_timeout_s=(
                read("SIMULATED_REPLY_TIMEOUT_S") if simulated else DEFAULT_SIMULATED_REPLY_TIMEOUT_S
            ),
            learner_address=learner_address,
            sequential_updates=read("SEQUENTIAL_UPDATES"),
            sequential_train_timeout_s=read("SEQUENTIAL_TRAIN_TIMEOUT_S"),
            redis_url=checked_redis_url(read("REDIS_URL")),
            stream=read("STREAM"),
            stream_maxlen=read("STREAM_MAXLEN"),
            publish_queue_size=read("PUBLISH_QUEUE_SIZE"),
            seed=read("SEED"),
            final_stats_path=read("GATEWAY_FINAL_STATS_PATH"),
            episode_log_path=read("GATEWAY_EPISODE_LOG"),
            security=SecuritySettings.from_env(env),
        )

    @property
    def observation_shape(self) -> tuple[int, int, int]:
        """[channels, height, width] of a pixels observation (a state one is [frame_stack, the env's state size])."""
        channels = self.frame_stack * (1 if self.obs_grayscale else 3)
        return (channels, self.obs_height, self.obs_width)


def resolve_observation(spec: EnvSpec, observation: str) -> str:
    """Resolves RTRL_OBSERVATION (`observation`, "auto" when unset) to "pixels" or "state" for the game `spec` names."""
    if spec.kind != "gym":
        if observation == "state":
            raise SettingsError(
                f"{PREFIX}OBSERVATION=state is set, but {PREFIX}ENV={spec.spec!r} has no state vector to play from "
                "(only gym: envs whose observation space is a 1-D Box have one, e.g. gym:CartPole-v1); set "
                f"{PREFIX}OBSERVATION to pixels or unset it."
            )
        return "pixels"
    if observation == "pixels":
        return observation
    # Only the env knows its observation space, and the defaults of k, L and the jitter reserve depend on it: the
    # simplest correct way is to make the env once here (without rendering) and close it; the backend makes it
    # again. Imported here because it loads gymnasium and ale-py, and imports this module.
    from rtrl.services.env_gateway.backends.gymnasium import gym_observation_kind

    return gym_observation_kind(spec.gymnasium_id, observation)


def resolve_profile(spec: EnvSpec, profile_ref: str) -> GameProfile | None:
    """The profile a pyboy or desktop game runs with: RTRL_PROFILE, else the ROM's or the spec's own."""
    if spec.kind in ("ale", "gym"):
        if profile_ref:
            raise SettingsError(
                f"{PREFIX}PROFILE={profile_ref!r} is set, but {PREFIX}ENV={spec.spec!r} is a gymnasium game, "
                "which takes no profile; unset it or run a pyboy: or desktop: game."
            )
        return None
    if profile_ref:
        profile = load_profile(profile_ref)
    elif spec.kind == "desktop":
        profile = load_profile(spec.name)
    else:
        title = rom_header_title(spec.name)
        name = profile_for_rom_title(title)
        if name is None:
            raise SettingsError(
                f"no shipped profile is for the ROM {spec.name} (header title {title!r}); set {PREFIX}PROFILE "
                f"to a profile ({', '.join(shipped_profiles())}) or a path to a .toml file (see docs/profiles.md)."
            )
        profile = load_profile(name)
    if profile.game.backend != spec.kind:
        raise ProfileError(
            f"profile {profile.label}: game.backend is {profile.game.backend!r}; expected {spec.kind!r} to run "
            f"{PREFIX}ENV={spec.spec!r} (or set {PREFIX}PROFILE to a {spec.kind} profile)."
        )
    return profile


def split_host_port(address: str, variable: str = "INFERENCE_ADDRESSES") -> tuple[str, int]:
    """Splits "host:port" (or "[v6]:port"); raises SettingsError naming RTRL_<variable>."""
    host, sep, port = address.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        if variable == "INFERENCE_ADDRESSES":
            raise SettingsError(
                f"{PREFIX}INFERENCE_ADDRESSES entry {address!r} is not host:port; "
                "set it to a comma-separated list such as 127.0.0.1:50061,inference:50061."
            )
        raise SettingsError(f"{PREFIX}{variable}={address!r} is not host:port; set it like 127.0.0.1:50052.")
    return host, int(port)
