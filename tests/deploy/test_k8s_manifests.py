"""The Kubernetes manifests (deploy/k8s): rendered as kustomize would, validated offline against the
Kubernetes API schemas, and checked against the services' settings and docker-compose.yml, which
they mirror.

The renderer here supports what the kustomizations use (resources, labels) and fails on anything
else, so that what is validated is what `kubectl apply -k` applies.
"""

from __future__ import annotations

import copy
import importlib.machinery
import importlib.util
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from deploy_settings import HTTP_COMMANDS, METRICS_COMMANDS, ROOT, read_settings

from rtrl.cli import SERVICES

K8S = ROOT / "deploy" / "k8s"
KUSTOMIZATIONS = [K8S / "base", K8S / "overlays" / "autoscaled"]
# The oldest release with gRPC probes GA (1.27) and the newest whose schemas the package ships.
KUBERNETES_VERSIONS = ["1.27.0", kubernetes_validate.latest_version()]
SUPPORTED_KUSTOMIZE_FIELDS = {"apiVersion", "kind", "resources", "labels"}
SAMPLE_POD_IP = "10.0.0.7"


def render(directory: Path) -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unsupported = set(kustomization) - SUPPORTED_KUSTOMIZE_FIELDS
    assert not unsupported, f"{directory}: teach this test's renderer {sorted(unsupported)} before using it"
    resources: list[dict[str, Any]] = []
    for entry in kustomization["resources"]:
        path = (directory / entry).resolve()
        if path.is_dir():
            resources += render(path)
        else:
            resources += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    for label in kustomization.get("labels", []):
        assert not label.get("includeSelectors") and not label.get("includeTemplates")
        for resource in resources:
            resource["metadata"].setdefault("labels", {}).update(label["pairs"])
    return resources


BASE = render(K8S / "base")


def by_kind(resources: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {r["metadata"]["name"]: r for r in resources if r["kind"] == kind}


def workloads(resources: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    yield from (r for r in resources if r["kind"] in ("Deployment", "StatefulSet"))


def rtrl_containers() -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(rtrl command, container, pod spec) of every container that runs an rtrl service."""
    for workload in workloads(BASE):
        pod = workload["spec"]["template"]["spec"]
        for container in pod["containers"]:
            if container.get("args", [None])[0] in SERVICES:
                yield container["args"][0], container, pod


def container_env(container: dict[str, Any]) -> dict[str, str]:
    """The container's environment: ConfigMaps it imports, then its env with $(VAR) expanded."""
    config_maps = by_kind(BASE, "ConfigMap")
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(config_maps[source["configMapRef"]["name"]]["data"])
    for variable in container.get("env", []):
        if "value" in variable:
            env[variable["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], variable["value"])
        elif variable["valueFrom"].get("fieldRef", {}).get("fieldPath") == "status.podIP":
            env[variable["name"]] = SAMPLE_POD_IP
    return env


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS, ids=lambda p: str(p.relative_to(K8S)))
def test_every_resource_validates_against_the_kubernetes_schemas(kustomization, version):
    resources = render(kustomization)
    names = [(r["kind"], r["metadata"]["name"]) for r in resources]
    assert len(names) == len(set(names)), f"duplicate resources in {kustomization}: {names}"
    for resource in resources:
        # strict: unknown fields (a typo, a field of another version) fail too.
        kubernetes_validate.validate(resource, version, strict=True)


def test_the_base_mirrors_the_compose_services():
    kinds = {(r["kind"], r["metadata"]["name"]) for r in BASE}
    assert {
        ("StatefulSet", "redis"),
        ("Service", "redis"),
        ("Deployment", "learner"),
        ("Deployment", "inference"),
        ("Deployment", "env-gateway"),
        ("Service", "env-gateway"),
        ("Deployment", "dashboard"),
        ("Service", "dashboard"),
        ("PersistentVolumeClaim", "checkpoints"),
        ("ConfigMap", "rtrl-settings"),
    } <= kinds
    assert sorted(command for command, _, _ in rtrl_containers()) == sorted(SERVICES)


def test_selectors_and_services_match_the_pods():
    templates = {w["metadata"]["name"]: w["spec"]["template"] for w in workloads(BASE)}
    for name, template in templates.items():
        selector = by_kind(BASE, "Deployment").get(name) or by_kind(BASE, "StatefulSet")[name]
        assert selector["spec"]["selector"]["matchLabels"].items() <= template["metadata"]["labels"].items(), name
    for name, service in by_kind(BASE, "Service").items():
        matching = [
            t for t in templates.values() if service["spec"]["selector"].items() <= t["metadata"]["labels"].items()
        ]
        assert len(matching) == 1, f"Service {name} selects {len(matching)} pod templates"
        port_names = {p.get("name") for c in matching[0]["spec"]["containers"] for p in c.get("ports", [])}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in port_names, f"Service {name} targets a port the pod does not name"


@pytest.mark.parametrize("command", sorted(SERVICES))
def test_rtrl_variables_are_settings_and_ports_probes_agree(command):
    [(container, pod)] = [(c, p) for cmd, c, p in rtrl_containers() if cmd == command]
    read = read_settings(command, container_env(container))
    assert not read.unread, f"the {command} container sets {sorted(read.unread)}, which its settings never read"
    settings = read.settings
    assert settings.host == "0.0.0.0"
    if command in HTTP_COMMANDS:
        [http_port] = [p["containerPort"] for p in container["ports"] if p["name"] == "http"]
        assert http_port == settings.port
        for probe in ("readinessProbe", "livenessProbe"):
            assert container[probe]["httpGet"] == {"path": "/healthz", "port": "http"}, f"{command} {probe}"
    else:
        [grpc_port] = [p["containerPort"] for p in container["ports"] if p["name"] == "grpc"]
        assert grpc_port == settings.port
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            # The gRPC health service (grpc.health.v1), as compose's `rtrl health` checks it.
            assert container[probe]["grpc"] == {"port": settings.port}, f"{command} {probe}"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001, "the Dockerfile's user"


def test_checkpoints_are_shared_read_write_many_and_only_the_learner_writes():
    assert by_kind(BASE, "PersistentVolumeClaim")["checkpoints"]["spec"]["accessModes"] == ["ReadWriteMany"]
    mounts = {}
    for command, container, pod in rtrl_containers():
        settings = read_settings(command, container_env(container)).settings
        for mount in container.get("volumeMounts", []):
            [volume] = [v for v in pod["volumes"] if v["name"] == mount["name"]]
            assert volume["persistentVolumeClaim"]["claimName"] == "checkpoints"
            assert mount["mountPath"] == str(settings.checkpoint_dir)
            mounts[command] = mount.get("readOnly", False)
    assert mounts == {"learner": False, "inference": True}
    learner = by_kind(BASE, "Deployment")["learner"]["spec"]
    assert learner["replicas"] == 1 and learner["strategy"]["type"] == "Recreate", "never two learners writing"


def test_inference_is_ready_for_a_horizontal_autoscaler():
    [(container, _)] = [(c, p) for cmd, c, p in rtrl_containers() if cmd == "inference"]
    assert container["resources"]["requests"]["cpu"], "an HPA on CPU utilisation needs a CPU request"
    settings = read_settings("inference", container_env(container)).settings
    assert settings.redis_url, "replicas must register so gateways find new pods"
    assert settings.advertise_address == f"{SAMPLE_POD_IP}:{settings.port}"
    autoscaled = render(K8S / "overlays" / "autoscaled")
    [hpa] = [r for r in autoscaled if r["kind"] == "HorizontalPodAutoscaler"]
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "inference")
    assert hpa["spec"]["minReplicas"] >= by_kind(BASE, "Deployment")["inference"]["spec"]["replicas"]


def test_settings_match_docker_compose():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    for command, container, _ in rtrl_containers():
        [service] = [s for s in compose.values() if s.get("command") == [command]]
        compose_env = {name: str(value) for name, value in service["environment"].items()}
        k8s_env = {name: value for name, value in container_env(container).items() if name.startswith("RTRL_")}
        # Service names differ only where compose's has "_", which Kubernetes names cannot contain.
        compose_env = {name: value.replace("env_gateway:", "env-gateway:") for name, value in compose_env.items()}
        # Kubernetes adds what only it needs (the pod IP to advertise); everything compose sets, it sets alike.
        assert compose_env.items() <= k8s_env.items(), f"rtrl {command}: compose {compose_env}, Kubernetes {k8s_env}"
        assert set(k8s_env) - set(compose_env) <= {"RTRL_INFERENCE_ADVERTISE_ADDRESS"}


@pytest.mark.parametrize("command", sorted(METRICS_COMMANDS))
def test_metrics_ports_are_named_and_annotated_for_prometheus(command):
    [(container, _)] = [(c, p) for cmd, c, p in rtrl_containers() if cmd == command]
    settings = read_settings(command, container_env(container)).settings
    [metrics_port] = [p["containerPort"] for p in container["ports"] if p["name"] == "metrics"]
    assert metrics_port == settings.metrics_port > 0
    [workload] = [w for w in workloads(BASE) if container in w["spec"]["template"]["spec"]["containers"]]
    annotations = workload["spec"]["template"]["metadata"]["annotations"]
    assert annotations == {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(settings.metrics_port),
        "prometheus.io/path": "/metrics",
    }


def load_k8s_smoke() -> Any:
    loader = importlib.machinery.SourceFileLoader("k8s_smoke", str(ROOT / "scripts" / "k8s-smoke"))
    spec = importlib.util.spec_from_loader("k8s_smoke", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def test_k8s_smoke_translates_the_base_into_what_podman_plays_and_keeps_the_rest() -> None:
    """scripts/k8s-smoke's translation (run for real by tests/deploy/test_k8s_smoke.py, as root with podman):
    only kinds podman 4.3 plays, one Pod per replica named for DNS, no fieldRef, numbered probe ports."""
    smoke = load_k8s_smoke()
    notes: list[str] = []
    played, inference = smoke.translate(copy.deepcopy(BASE), notes)
    assert {doc["kind"] for doc in played} == {"ConfigMap", "PersistentVolumeClaim", "Pod"}
    pods = by_kind(played, "Pod")
    replicas = by_kind(BASE, "Deployment")["inference"]["spec"]["replicas"]
    assert set(pods) == {"redis", "learner", "env-gateway", "dashboard", *(f"inference-{i}" for i in range(replicas))}
    # Every Service name the manifests use is a pod's name (its DNS name on the smoke's network).
    assert set(by_kind(BASE, "Service")) - {"inference"} <= set(pods)
    for name, pod in pods.items():
        for container in pod["spec"]["containers"]:
            env = {e["name"]: e for e in container.get("env", [])}
            assert all("valueFrom" not in e or "fieldRef" not in e["valueFrom"] for e in env.values()), name
            assert "ports" not in container
            assert not container["image"].startswith(("rtrl", "redis:")), container["image"]
            for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
                for action in ("grpc", "httpGet", "tcpSocket"):
                    if action in container.get(probe, {}):
                        assert isinstance(container[probe][action]["port"], int), (name, probe)
            if name.startswith("inference-"):
                assert env["RTRL_INFERENCE_ADVERTISE_ADDRESS"]["value"] == f"{name}:50061"
    claims = {v["persistentVolumeClaim"]["claimName"] for v in pods["redis"]["spec"]["volumes"]}
    assert claims == {"data-redis-0"} and "data-redis-0" in by_kind(played, "PersistentVolumeClaim")
    assert inference["metadata"]["name"] == "inference"
    assert any("status.podIP" in note for note in notes)
