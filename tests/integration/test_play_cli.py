"""`rtrl play` as a process against real checkpoints (published with CheckpointStore) on real games: CartPole
from its state, Pong from pixels; the JSON it prints, the videos it writes, the actions it takes, and every
bad input refused with a sentence and exit code 2."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import pytest
import torch
from PIL import Image

from rtrl.checkpoints import CheckpointStore
from rtrl.models import build_model, default_model_config

CARTPOLE = "gym:CartPole-v1"
# CartPole played from its state: 4 numbers, 4 stacked (the gateway's defaults), 2 actions.
CARTPOLE_SHAPE = (4, 4)
PONG_SHAPE = (4, 84, 84)


def publish(
    directory: Path,
    shape: tuple[int, ...] = CARTPOLE_SHAPE,
    actions: int = 2,
    *,
    head: str = "q",
    best_action: int | None = None,
    version: int = 1,
    epsilon: float | None = None,
) -> Path:
    """A checkpoint of the network rtrl trains for `shape`; with `best_action`, every weight is zero and the
    output layer's bias makes that action the best (highest Q-value or logit) whatever the observation."""
    config = default_model_config(shape, actions, head=head)
    torch.manual_seed(0)
    model = build_model(config)
    if best_action is not None:
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.zero_()
            output = model.policy_logits if head == "actor_critic" else model.head[-1]
            output.bias[best_action] = 3.0
    metadata: dict[str, Any] = {"model": config.to_json(), "algorithm": "test"}
    if epsilon is not None:
        metadata["epsilon"] = epsilon
    CheckpointStore(directory).publish(version, model.state_dict(), metadata)
    return directory


def rtrl_play(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rtrl.cli", "play", *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def played(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def play_fast(checkpoints: Path, *args: str, env: str = CARTPOLE) -> dict[str, Any]:
    """The JSON of `rtrl play --fast --json` with `args`."""
    return played(rtrl_play("--env", env, "--checkpoint-dir", str(checkpoints), "--fast", "--json", *args))


def test_cartpole_from_state_prints_three_episodes_and_their_mean_as_json(tmp_path):
    checkpoints = publish(tmp_path / "checkpoints", version=7)
    result = play_fast(checkpoints, "--episodes", "3", "--greedy")
    returns = [episode["return"] for episode in result["episodes"]]
    assert [episode["episode"] for episode in result["episodes"]] == [1, 2, 3]
    assert all(r > 0 for r in returns)
    assert result["mean_return"] == pytest.approx(sum(returns) / 3)
    assert result["checkpoint_version"] == 7
    # CartPole pays 1 a step; the reset frame is the only frame without a reward.
    assert all(e["return"] == e["frames"] - 1 for e in result["episodes"])
    assert result["observation_shape"] == [4, 4] and result["decision_interval_frames"] == 1


def test_without_json_each_episode_and_the_mean_are_printed(tmp_path):
    checkpoints = publish(tmp_path / "checkpoints")
    result = rtrl_play("--env", CARTPOLE, "--checkpoint-dir", str(checkpoints), "--fast", "--episodes", "2")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0].startswith("episode 1: return ") and lines[1].startswith("episode 2: return ")
    assert lines[-1].startswith("mean return over 2 episodes: ") and "(checkpoint v1, epsilon 0.05" in lines[-1]


@pytest.mark.parametrize("head", ["q", "actor_critic"])
def test_greedy_play_applies_the_best_action_on_every_decision_l_frames_after_its_observation(tmp_path, head):
    checkpoints = publish(tmp_path / "checkpoints", head=head, best_action=1)
    result = play_fast(checkpoints, "--episodes", "3", "--greedy")
    for episode in result["episodes"]:
        # Pushing right every step topples the pole within a few dozen steps; every decision was answered.
        assert episode["decisions"] > 0
        assert episode["fresh_decisions"] == episode["decisions"]
        assert episode["actions"] == [0, episode["decisions"]]
        # The first L frames (the reset frame with L = 1) apply the fallback and are not decisions.
        assert episode["decisions"] == episode["frames"] - result["lead_frames"]
    assert result["staleness_frames"] == [result["lead_frames"]] == [1]
    assert result["head"] == head and result["epsilon"] == 0.0


def test_without_greedy_a_q_network_explores_with_the_checkpoints_epsilon_seeded_by_rtrl_seed(tmp_path):
    checkpoints = publish(tmp_path / "checkpoints", best_action=1, epsilon=1.0)
    first = play_fast(checkpoints, "--episodes", "3", "--set", "RTRL_SEED=5")
    again = play_fast(checkpoints, "--episodes", "3", "--set", "RTRL_SEED=5")
    assert first["epsilon"] == 1.0
    # Epsilon 1: every action is a uniform draw, so action 0, which the network never prefers, is taken too.
    assert sum(e["actions"][0] for e in first["episodes"]) > 0
    assert sum(e["actions"][1] for e in first["episodes"]) > 0
    assert first["episodes"] == again["episodes"]


def test_without_fast_the_game_runs_at_its_frame_rate(tmp_path):
    checkpoints = publish(tmp_path / "checkpoints", best_action=1)
    result = played(rtrl_play("--env", CARTPOLE, "--checkpoint-dir", str(checkpoints), "--episodes", "2", "--json"))
    assert result["fast"] is False and result["frame_rate_hz"] == 50.0
    # Frame f is due f / 50 s after the first: the last one of N frames (N - 1) / 50 s after it.
    assert result["seconds"] >= (result["frames"] - 1) / 50.0 * 0.98
    assert all(e["fresh_decisions"] == e["decisions"] for e in result["episodes"])


def test_record_mp4_holds_every_frame_played(tmp_path):
    checkpoints = publish(tmp_path / "checkpoints")
    video = tmp_path / "videos" / "out.mp4"
    result = play_fast(checkpoints, "--episodes", "2", "--record", str(video))
    assert result["record"] == str(video)
    capture = cv2.VideoCapture(str(video))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    assert len(frames) >= result["frames"] > 2
    assert frames[0].shape == (400, 600, 3)  # CartPole's rendering, made for each frame played from its state
    assert float(frames[0].std()) > 0  # a picture, not a blank frame
    assert sorted(p.name for p in video.parent.iterdir()) == ["out.mp4"], "no partial file is left beside it"


def test_record_gif_is_a_downscaled_animation(tmp_path):
    checkpoints = publish(tmp_path / "checkpoints")
    video = tmp_path / "out.gif"
    result = play_fast(checkpoints, "--episodes", "2", "--record", str(video))
    with Image.open(video) as image:
        assert image.format == "GIF"
        assert image.n_frames > 5
        assert image.width == 320 and image.height == 213  # 600x400 scaled to 320 wide
        # 50 fps CartPole: every 2nd frame is kept, shown 40 ms each.
        assert image.info["duration"] >= 40
    assert result["frames"] > 10


def test_record_names_the_file_after_the_version_it_plays(tmp_path):
    checkpoints = publish(tmp_path / "checkpoints", version=12)
    result = play_fast(checkpoints, "--episodes", "1", "--record", str(tmp_path / "v{version}.mp4"))
    assert result["record"] == str(tmp_path / "v12.mp4") and (tmp_path / "v12.mp4").stat().st_size > 0


def test_pong_from_pixels_plays_and_records_a_truncated_episode(tmp_path):
    checkpoints = publish(tmp_path / "checkpoints", PONG_SHAPE, 6)
    video = tmp_path / "pong.mp4"
    # One Pong episode lasts thousands of frames: truncated at 200.
    truncated = ("--set", "RTRL_MAX_EPISODE_FRAMES=200")
    result = play_fast(checkpoints, "--episodes", "1", "--greedy", *truncated, "--record", str(video), env="ale:Pong")
    [episode] = result["episodes"]
    assert episode["frames"] == 200
    assert result["observation_shape"] == [4, 84, 84]
    # k = 4, L = 2: decisions start at frames 2, 6, ..., 198, every one answered 2 frames after its observation.
    assert episode["decisions"] == episode["fresh_decisions"] == 50
    assert result["staleness_frames"] == [2]
    capture = cv2.VideoCapture(str(video))
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) >= 200
    assert (int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))) == (160, 210)
    capture.release()


def test_sigterm_stops_play_and_leaves_no_partial_video(tmp_path):
    checkpoints = publish(tmp_path / "checkpoints")
    videos = tmp_path / "videos"
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "rtrl.cli", "play", "--env", CARTPOLE, "--checkpoint-dir", str(checkpoints)),
            *("--episodes", "1000", "--record", str(videos / "out.mp4")),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not (videos.exists() and any(videos.iterdir())):
            assert process.poll() is None and time.monotonic() < deadline, "no partial video appeared"
            time.sleep(0.1)
        [partial] = videos.iterdir()
        assert partial.name.startswith(".out.") and partial.name.endswith(".partial.mp4")
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 130
    assert "stopped before the last episode ended; no video was written." in stderr
    assert list(videos.iterdir()) == []


def test_no_checkpoint_says_where_the_learner_publishes(tmp_path):
    result = rtrl_play("--env", CARTPOLE, "--checkpoint-dir", str(tmp_path / "empty"), "--fast")
    assert result.returncode == 2
    assert f"no checkpoint in {tmp_path / 'empty'}: the learner publishes its checkpoints there" in result.stderr
    assert "rtrl up uses checkpoints/<env>, for gym:CartPole-v1 checkpoints/gym-CartPole-v1" in result.stderr


# (--env, more arguments, the sentence on stderr); each is played against a CartPole checkpoint with --fast.
BAD_INPUTS = {
    "observation shape": (
        CARTPOLE,
        ["--set", "RTRL_FRAME_STACK=2"],
        "checkpoint 1 takes observations shaped [4, 4], but gym:CartPole-v1 as configured gives [2, 4]; "
        "set RTRL_FRAME_STACK=4 (with --set NAME=VALUE, as it was trained).",
    ),
    "pixels against state": (
        CARTPOLE,
        ["--set", "RTRL_OBSERVATION=pixels"],
        "gives [4, 84, 84]; it was trained from state: set RTRL_OBSERVATION=state",
    ),
    "record extension": (CARTPOLE, ["--record", "out.avi"], "--record out.avi: cannot write a .avi file; name a .mp4"),
    "unknown gym game": ("gym:NoSuchGame-v0", [], "gymnasium cannot make 'NoSuchGame-v0'"),
    "unknown atari game": ("ale:NoSuchGame", [], "gymnasium cannot make 'ALE/NoSuchGame-v5'"),
    "not a game": ("nosuchgame", [], "--env 'nosuchgame' is not an environment spec"),
    "fast desktop game": (
        "desktop:supertux",
        [],
        "--fast cannot play desktop:supertux: a desktop game runs in its own window at its own speed",
    ),
    "zero episodes": (CARTPOLE, ["--episodes", "0"], "argument --episodes: play at least 1 episode"),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_exits_2_with_a_sentence(tmp_path, case):
    checkpoints = publish(tmp_path / "checkpoints")
    env, extra, sentence = BAD_INPUTS[case]
    result = rtrl_play("--env", env, "--checkpoint-dir", str(checkpoints), "--fast", *extra)
    assert result.returncode == 2
    assert sentence in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_a_checkpoint_for_another_action_count_is_refused(tmp_path):
    checkpoints = publish(tmp_path / "checkpoints", CARTPOLE_SHAPE, 3)
    result = rtrl_play("--env", CARTPOLE, "--checkpoint-dir", str(checkpoints), "--fast")
    assert result.returncode == 2
    assert (
        "checkpoint 1 has 3 actions, but gym:CartPole-v1 has 2; it was trained on another game: pass the --env it "
        "was trained on." in result.stderr
    )
