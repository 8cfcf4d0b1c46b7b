"""The settings tables (rtrl/settings.py): each service reads exactly what it declares, a name nothing reads
is an error with the closest one, the run file's sections and keys are checked, and docs/settings.md is
what the tables say."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from file_modules import github_anchor

from rtrl.cli import main
from rtrl.config import SettingsError
from rtrl.launcher import SET_BY_UP, Stack, UpOptions, check_run_file
from rtrl.services.dashboard.settings import DashboardSettings
from rtrl.services.env_gateway.settings import GatewaySettings
from rtrl.services.inference.settings import InferenceSettings
from rtrl.services.learner.algorithms import ALGORITHMS
from rtrl.services.learner.settings import ALGORITHM_NAMES, LearnerSettings
from rtrl.settings import (
    COMPOSE_SETTINGS,
    SHARED_SETTINGS,
    check_variable,
    hyperparameter_settings,
    load_run_file,
    service_settings,
)
from rtrl.settings_doc import settings_doc

ROOT = Path(__file__).resolve().parents[2]
FROM_ENV: dict[str, Callable[[Mapping[str, str]], Any]] = {
    "gateway": GatewaySettings.from_env,
    "inference": InferenceSettings.from_env,
    "learner": LearnerSettings.from_env,
    "dashboard": DashboardSettings.from_env,
}


class RecordingEnv(Mapping[str, str]):
    """An environment that remembers every name looked up in it."""

    def __init__(self, values: Mapping[str, str]) -> None:
        self._values = dict(values)
        self.looked_up: set[str] = set()

    def __getitem__(self, name: str) -> str:
        self.looked_up.add(name)
        return self._values[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)


def declared(service: str) -> set[str]:
    tables = [service_settings()[service], *(hyperparameter_settings().values() if service == "learner" else ())]
    return {setting.variable for table in tables for setting in table}


@pytest.mark.parametrize("service", FROM_ENV)
def test_each_service_reads_exactly_the_variables_its_table_declares(service: str) -> None:
    looked_up: set[str] = set()
    # The simulated clock's settings are read only when it runs.
    for values in ({}, {"RTRL_CLOCK": "simulated"} if service == "gateway" else {}):
        env = RecordingEnv(values)
        FROM_ENV[service](env)
        looked_up |= env.looked_up
    shared = {setting.variable for setting in SHARED_SETTINGS}
    assert looked_up - shared == declared(service)


def test_the_torch_free_algorithm_names_are_the_registry_of_algorithms() -> None:
    assert tuple(ALGORITHMS) == ALGORITHM_NAMES


def test_every_rtrl_name_in_the_code_and_deployments_is_declared() -> None:
    known = {s.variable for table in [*service_settings().values(), SHARED_SETTINGS, COMPOSE_SETTINGS] for s in table}
    known |= {s.variable for table in hyperparameter_settings().values() for s in table}
    paths = [*ROOT.glob("docker-compose*.yml")]
    for folder in ("rtrl", "deploy"):
        paths += [p for p in (ROOT / folder).rglob("*") if p.suffix in (".py", ".yml", ".yaml", ".toml", ".md")]
    # A metavar, and the typo the docs show.
    examples = {"RTRL_NAME", "RTRL_DQN_LEARNIN_RATE"}
    undeclared = set()
    for path in paths:
        for name in set(re.findall(r"RTRL_[A-Z0-9_]*[A-Z0-9]", path.read_text(errors="replace"))) - examples:
            # A prefix in prose ("RTRL_TLS_*", "RTRL_DQN_<FIELD>") names no variable of its own.
            if name not in known and not any(variable.startswith(name + "_") for variable in known):
                undeclared.add(f"{path.relative_to(ROOT)}: {name}")
    assert not undeclared, sorted(undeclared)


@pytest.mark.parametrize(
    ("service", "typo", "meant"),
    [
        ("gateway", "RTRL_FRAME_STAK", "RTRL_FRAME_STACK"),
        ("inference", "RTRL_INFERENCE_MAX_BATC", "RTRL_INFERENCE_MAX_BATCH"),
        ("learner", "RTRL_DQN_LEARNIN_RATE", "RTRL_DQN_LEARNING_RATE"),
        ("dashboard", "RTRL_DASHBOARD_REFRESH", "RTRL_DASHBOARD_REFRESH_HZ"),
    ],
)
def test_a_variable_no_service_reads_stops_a_service_naming_the_closest(service: str, typo: str, meant: str) -> None:
    with pytest.raises(SettingsError, match=f"^{typo} is not a setting; did you mean {meant}\\?$"):
        FROM_ENV[service]({typo: "1"})


def test_a_service_accepts_what_other_services_and_parts_read() -> None:
    shared_environment = {
        "RTRL_LEARNER_NICE": "3",  # the learner's
        "RTRL_INFERENCE_MAX_BATCH": "4",  # a replica's
        "RTRL_DQN_GAMMA": "0.9",  # a hyperparameter
        "RTRL_CPUS": "0",  # rtrl/cpus.py
        "RTRL_PARENT_PID": "1",  # rtrl/orphans.py
        "RTRL_IMAGE": "rtrl:dev",  # docker compose's
    }
    for from_env in FROM_ENV.values():
        from_env(shared_environment)


def test_a_name_like_nothing_says_so() -> None:
    with pytest.raises(SettingsError, match=r"^RTRL_WHATEVER is not a setting of any rtrl service; unset it"):
        check_variable("RTRL_WHATEVER")


def test_the_gateway_and_dashboard_check_names_without_importing_torch() -> None:
    code = (
        "import sys\n"
        "from rtrl.services.env_gateway.settings import GatewaySettings\n"
        "from rtrl.services.dashboard.settings import DashboardSettings\n"
        "env = {'RTRL_DQN_GAMMA': '0.5', 'RTRL_PPO_ANYTHING': '1', 'RTRL_LEARNER_NICE': '3'}\n"
        "GatewaySettings.from_env(env)\n"
        "DashboardSettings.from_env(env)\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=False)
    assert result.returncode == 0, result.stderr


# -- the run file ----------------------------------------------------------------------------------------


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "run.toml"
    path.write_text(text)
    return path


def test_a_run_file_gives_each_service_its_section_over_all(tmp_path: Path) -> None:
    run_file = load_run_file(
        write(
            tmp_path,
            """
            [up]
            env = "ale:Breakout"
            [all]
            seed = 7
            torch_threads = 2
            [gateway]
            frame_stack = 2
            obs_grayscale = false
            inference_addresses = ["a:1", "b:2"]
            [inference]
            torch_threads = 3
            [learner]
            dqn_learning_rate = 3e-4
            dqn_double_dqn = true
            """,
        )
    )
    assert run_file.up == {"env": "ale:Breakout"}
    assert run_file.service_env("gateway") == {
        "RTRL_SEED": "7",
        "RTRL_TORCH_THREADS": "2",
        "RTRL_FRAME_STACK": "2",
        "RTRL_OBS_GRAYSCALE": "false",
        "RTRL_INFERENCE_ADDRESSES": "a:1,b:2",
    }
    assert run_file.service_env("inference") == {"RTRL_SEED": "7", "RTRL_TORCH_THREADS": "3"}
    learner = LearnerSettings.from_env(run_file.service_env("learner"))
    assert (learner.seed, learner.torch_threads) == (7, 2)
    assert (learner.config.learning_rate, learner.config.double_dqn) == (3e-4, True)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[gatway]\nseed = 1", "gatway is not a section of a run file; did you mean gateway?"),
        ("[gateway]\nframe_stak = 2", r"\[gateway\] frame_stak is not a setting; did you mean frame_stack\?"),
        ("[learner]\ndqn_learnin_rate = 1e-4", r"dqn_learnin_rate is not a setting; did you mean dqn_learning_rate\?"),
        ("[gateway]\nlearner_nice = 3", r"\[gateway\] learner_nice is not a gateway setting; move it to \[learner\]"),
        ("[gateway]\ndqn_gamma = 0.5", r"\[gateway\] dqn_gamma is not a gateway setting; move it to \[learner\]"),
        ("[learner]\ntls_ca_file = 'ca.pem'", r"tls_ca_file is a setting every service shares.*move it to \[all\]"),
        ("[gateway]\nframe_stack = 'four'", r"frame_stack = 'four': RTRL_FRAME_STACK='four' is not valid"),
        ("[gateway]\nscheduler = 'fastest'", "set it to one of: next_idle, max_time, mean_time"),
        ("[gateway\n", "is not valid TOML"),
    ],
)  # fmt: skip
def test_a_run_file_refuses_what_no_service_reads_with_a_sentence(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        load_run_file(write(tmp_path, text))


def test_rtrl_up_refuses_a_run_file_setting_it_always_sets_itself(tmp_path: Path) -> None:
    run_file = load_run_file(write(tmp_path, "[gateway]\nenv = 'ale:Breakout'\n"))
    with pytest.raises(SettingsError, match=r"\[gateway\] env is set by rtrl up itself; give env under \[up\] instead"):
        check_run_file(run_file)
    run_file = load_run_file(write(tmp_path, "[inference]\nreplica_id = 'r'\n"))
    with pytest.raises(SettingsError, match="replica_id is set by rtrl up itself; leave it out"):
        check_run_file(run_file)


def test_every_variable_rtrl_up_always_sets_is_refused_in_a_run_file(tmp_path: Path) -> None:
    stack = Stack(UpOptions(run_dir=tmp_path, scheduler="max_time"))
    assert set(stack.common_env()) - SET_BY_UP.keys() == {"RTRL_SCHEDULER"}, "set only with --scheduler"


def test_under_rtrl_up_the_environment_beats_the_run_file_and_rtrl_up_beats_both(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_file = load_run_file(
        write(tmp_path, "[all]\nseed = 1\nstream = 'from-all'\n[gateway]\nseed = 2\nframe_stack = 2\nstream_maxlen = 2")
    )
    monkeypatch.setenv("RTRL_FRAME_STACK", "3")
    stack = Stack(UpOptions(run_dir=tmp_path, run_file=run_file))
    env = stack.child_env("gateway", {"RTRL_STREAM_MAXLEN": "5"})
    assert (env["RTRL_STREAM"], env["RTRL_SEED"], env["RTRL_FRAME_STACK"], env["RTRL_STREAM_MAXLEN"]) == (
        "from-all",
        "2",
        "3",
        "5",
    )
    assert stack.child_env("learner", {})["RTRL_SEED"] == "1"


# -- the command line ------------------------------------------------------------------------------------


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> list[UpOptions]:
    """The options `rtrl up` would start the stack with (nothing is started)."""
    options: list[UpOptions] = []
    monkeypatch.setattr("rtrl.launcher.up", lambda o: options.append(o) or 0)
    return options


def test_up_takes_its_options_from_the_run_files_up_section_under_the_command_line(
    tmp_path: Path, started: list[UpOptions]
) -> None:
    path = write(
        tmp_path, "[up]\ninference_replicas = 3\nduration = 60\ndashboard = false\ngateway_set = ['1:DISPLAY=:2']\n"
    )
    assert main(["up", "--config", str(path), "--inference-replicas", "4", "--gateways", "2"]) == 0
    [options] = started
    assert (options.inference_replicas, options.duration_s, options.dashboard) == (4, 60.0, False)
    assert options.gateway_env == {1: {"DISPLAY": ":2"}}
    assert options.run_file is not None and options.run_file.path == path


def test_up_refuses_an_unknown_option_in_the_run_file(
    tmp_path: Path, started: list[UpOptions], capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, "[up]\ninference_replica = 3\n")
    assert main(["up", "--config", str(path)]) == 2
    assert (
        "[up] inference_replica is not an option of rtrl up; did you mean inference_replicas?"
        in capsys.readouterr().err
    )
    assert not started


def test_set_refuses_a_name_no_service_reads(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["up", "--set", "RTRL_DQN_LEARNIN_RATE=1e-3"])
    assert exit_info.value.code == 2
    assert "RTRL_DQN_LEARNIN_RATE is not a setting; did you mean RTRL_DQN_LEARNING_RATE?" in capsys.readouterr().err


def test_up_refuses_an_unknown_rtrl_variable_in_its_environment(
    monkeypatch: pytest.MonkeyPatch, started: list[UpOptions], capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RTRL_LEAD_FRAME", "2")
    assert main(["up"]) == 2
    assert "RTRL_LEAD_FRAME is not a setting; did you mean RTRL_LEAD_FRAMES?" in capsys.readouterr().err
    assert not started


@pytest.mark.parametrize(
    ("command", "listed"),
    [
        ("gateway", "RTRL_FRAME_STACK (int, default 4 (the profile's))"),
        ("inference", "RTRL_INFERENCE_MAX_BATCH (int, default 8)"),
        ("learner", "RTRL_DQN_LEARNING_RATE (float, default 0.0001)"),
        ("dashboard", "RTRL_DASHBOARD_REFRESH_HZ (float, default 5)"),
        ("up", "RTRL_SCHEDULER (next_idle | max_time | mean_time, default next_idle)"),
    ],
)
def test_help_lists_every_setting_with_its_type_default_and_meaning(
    command: str, listed: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert listed in text
    services = ("gateway", "inference", "learner", "dashboard") if command == "up" else (command,)
    for service in services:
        for setting in service_settings()[service]:
            assert f"  {setting.variable} (" in text and setting.meaning in text, setting.variable


# -- docs/settings.md ------------------------------------------------------------------------------------


def test_docs_settings_md_is_what_the_tables_say() -> None:
    committed = (ROOT / "docs" / "settings.md").read_text()
    assert committed == settings_doc(), "docs/settings.md is out of date: run scripts/gen-settings-doc and commit it"


def test_service_readmes_link_to_docs_settings_md_instead_of_repeating_it() -> None:
    """Each service's README points at its section of docs/settings.md (anchors that exist there) rather than
    keeping a table of RTRL_* variables of its own, which would drift from the settings tables."""
    headings = re.findall(r"^#+ (.+)$", (ROOT / "docs" / "settings.md").read_text(), flags=re.MULTILINE)
    anchors = {github_anchor(heading) for heading in headings}
    for service in ("env_gateway", "inference", "learner", "dashboard"):
        readme = ROOT / "rtrl" / "services" / service / "README.md"
        text = readme.read_text()
        linked = re.findall(r"\]\(\.\./\.\./\.\./docs/settings\.md#([^)]+)\)", text)
        assert f"rtrl-{'gateway' if service == 'env_gateway' else service}-rtrlservices{service}" in linked, readme
        assert set(linked) <= anchors, f"{readme} links to {set(linked) - anchors}, not a heading of docs/settings.md"
        assert not re.search(r"^\| `RTRL_", text, flags=re.MULTILINE), f"{readme} has a settings table again"
