"""The images' sizes, and what a one-line code change makes a host pull again, measured with podman.

    python bench/image_layers.py                          # after scripts/compose-smoke built its base image
    python bench/image_layers.py --base-image python:3.11.11-slim-bookworm   # where a registry is reachable

Builds the Dockerfile's two targets (full: every service; gateway: the gateway and the dashboard, no
PyTorch) from this work tree, then from a copy of it with one line of rtrl/__init__.py changed, and
prints each image's size and the size of the layers the second build has that the first has not: what
a registry push and every host's pull move after a code change. Needs root and podman
(scripts/compose-smoke installs podman and makes the base image localhost/rtrl-base:bookworm).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
TARGETS = ("full", "gateway")


def podman(*args: str) -> str:
    result = subprocess.run(["podman", *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"podman {' '.join(args[:3])} ... failed:\n{result.stderr[-3000:]}")
    return result.stdout


def build(context: Path, target: str, tag: str, build_args: list[str]) -> None:
    podman("build", "--network=host", *build_args, "--target", target, "-t", tag, str(context))


def layers(tag: str) -> dict[str, int]:
    """Layer content digest -> its size in bytes. The digests are the image's RootFS layers (equal content,
    equal digest); the sizes come from `podman history`, whose steps that make a layer (RUN, COPY, ADD)
    are those layers in the same order."""
    digests = json.loads(podman("image", "inspect", "--format", "{{json .RootFS.Layers}}", tag))
    history = json.loads(podman("history", "--format", "json", "--no-trunc", tag))
    steps = [entry for entry in reversed(history) if _makes_a_layer(entry["CreatedBy"])]
    if len(steps) != len(digests):
        raise SystemExit(f"{tag}: {len(digests)} layers but {len(steps)} steps that make one; cannot pair them")
    return {digest: int(step["size"]) for digest, step in zip(digests, steps, strict=True)}


def _makes_a_layer(created_by: str) -> bool:
    return "#(nop)" not in created_by or any(f"#(nop) {kind} " in created_by for kind in ("COPY", "ADD"))


def image_size(tag: str) -> int:
    return int(podman("image", "inspect", "--format", "{{.Size}}", tag).strip())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-image", default="localhost/rtrl-base:bookworm")
    parser.add_argument("--torch-index-url", default=None, help="empty: torch only from wheels/ (offline)")
    args = parser.parse_args()
    if shutil.which("podman") is None:
        raise SystemExit("podman is not installed: run scripts/compose-smoke once (it installs podman), or apt-get it")
    build_args = ["--build-arg", f"BASE_IMAGE={args.base_image}"]
    if args.torch_index_url is not None or any((REPO_ROOT / "wheels").glob("torch-*.whl")):
        build_args += ["--build-arg", f"TORCH_INDEX_URL={args.torch_index_url or ''}"]

    rows = []
    with tempfile.TemporaryDirectory(prefix="rtrl-image-") as work:
        changed = Path(work) / "rtrl"
        ignore = shutil.ignore_patterns(".venv", ".git", "runs", "checkpoints", "artifacts", "__pycache__")
        shutil.copytree(REPO_ROOT, changed, ignore=ignore)
        init = changed / "rtrl" / "__init__.py"
        init.write_text(init.read_text() + "\n# one line changed by bench/image_layers.py\n")
        for target in TARGETS:
            before, after = f"localhost/rtrl-bench-{target}:before", f"localhost/rtrl-bench-{target}:after"
            build(REPO_ROOT, target, before, build_args)
            build(changed, target, after, build_args)
            old, new = layers(before), layers(after)
            fresh = [size for digest, size in new.items() if digest not in old]
            rows.append((target, image_size(before), len(new), len(fresh), sum(fresh)))
            podman("rmi", before, after)
    print("| target | image size | layers | new layers after a one-line change | their size |")
    print("|---|---:|---:|---:|---:|")
    for target, size, count, fresh_count, fresh_bytes in rows:
        print(f"| {target} | {size / 1e6:.0f} MB | {count} | {fresh_count} | {fresh_bytes / 1e6:.2f} MB |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
