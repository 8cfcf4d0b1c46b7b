"""No code in rtrl or the services can unpickle: data that crosses a process or touches disk is the
explicit transition schema, protobuf, safetensors and JSON. Checked on the syntax tree, so a new
`import pickle`, `torch.load` or `numpy.load(..., allow_pickle=True)` fails here with its location."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Modules that deserialize arbitrary objects (code execution on load).
FORBIDDEN_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "shelve", "marshal", "joblib"}
# torch.load unpickles (weights_only narrows it but is still pickle); safetensors is what rtrl loads.
FORBIDDEN_CALLS = {("torch", "load"), ("torch", "jit"), ("np", "load"), ("numpy", "load")}


def python_files() -> list[Path]:
    files = sorted((ROOT / "rtrl").rglob("*.py"))
    return [path for path in files if "rtrl/v1" not in path.as_posix()]


def offences(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        where = f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Import):
            found += [f"{where} imports {alias.name}" for alias in node.names if alias.name in FORBIDDEN_MODULES]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in FORBIDDEN_MODULES:
            found.append(f"{where} imports from {node.module}")
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            if (node.value.id, node.attr) in FORBIDDEN_CALLS:
                found.append(f"{where} uses {node.value.id}.{node.attr}")
        elif isinstance(node, ast.keyword) and node.arg == "allow_pickle":
            found.append(f"{where} passes allow_pickle")
    return found


def test_the_scan_sees_the_code() -> None:
    files = python_files()
    assert any(path.name == "checkpoints.py" for path in files) and len(files) > 30


def test_no_module_can_unpickle() -> None:
    found = [offence for path in python_files() for offence in offences(path)]
    assert not found, "pickle-capable loading found:\n" + "\n".join(found)
