"""Every gRPC server and channel in rtrl and the services is made by rtrl/grpc_util.py, and every Redis
client by rtrl/redis_client.py, so TLS, the token, the message limit and the Redis URL's password and
TLS apply everywhere. Checked on the syntax tree: a new direct call fails here with its location."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# (object, attribute) -> the only module allowed to use it.
OWNERS = {
    ("grpc", "server"): "rtrl/grpc_util.py",
    ("grpc", "insecure_channel"): "rtrl/grpc_util.py",
    ("grpc", "secure_channel"): "rtrl/grpc_util.py",
    ("Redis", "from_url"): "rtrl/redis_client.py",
    ("redis", "Redis"): "rtrl/redis_client.py",
    ("redis", "StrictRedis"): "rtrl/redis_client.py",
}
# Type annotations name redis.Redis without making a client; only calls count.


def direct_calls(path: Path) -> list[str]:
    relative = path.relative_to(ROOT).as_posix()
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        target = node.func.value
        name = target.id if isinstance(target, ast.Name) else target.attr if isinstance(target, ast.Attribute) else ""
        owner = OWNERS.get((name, node.func.attr))
        if owner is not None and owner != relative:
            found.append(f"{relative}:{node.lineno} calls {name}.{node.func.attr} (use {owner})")
    return found


def project_files() -> list[Path]:
    files = list((ROOT / "rtrl").rglob("*.py"))
    return sorted(path for path in files if "rtrl/v1" not in path.as_posix())


def test_the_owners_themselves_are_seen() -> None:
    assert not direct_calls(ROOT / "rtrl/grpc_util.py") and not direct_calls(ROOT / "rtrl/redis_client.py")
    source = ast.parse((ROOT / "rtrl/grpc_util.py").read_text())
    assert any(isinstance(n, ast.Attribute) and n.attr == "secure_channel" for n in ast.walk(source))


def test_servers_channels_and_redis_clients_are_made_in_one_place() -> None:
    found = [call for path in project_files() for call in direct_calls(path)]
    assert not found, "\n".join(found)
