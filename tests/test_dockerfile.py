"""The cluster image's Dockerfile: hadolint finds nothing, its base is Ray's GPU image of the pinned Ray on a Python the
project supports, and every package it installs (its own `pip install` lines and the project's dependencies) resolves
on PyPI for that Python on x86_64 Linux, so a misspelt name or a version that does not exist fails here rather than
on a cluster node. Resolution reads only package metadata from the index (`--dry-run`, ranged HTTP reads)."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
HADOLINT = Path(sys.executable).parent / "hadolint"
BASE = re.compile(r"rayproject/ray:(?P<ray>[\d.]+)-py(?P<py>3)(?P<minor>\d+)-cu(?P<cuda>\d+)")
# manylinux tags an Ubuntu 22.04 (glibc 2.35) image accepts, newest first
PLATFORMS = [f"manylinux_2_{minor}_x86_64" for minor in range(35, 16, -1)] + ["manylinux2014_x86_64"]


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in joined.splitlines() if line.strip()]


def pip_requirements(text: str) -> list[str]:
    """Every requirement named on a `pip install` command of a RUN instruction (local paths excluded)."""
    found = []
    for instruction, args in instructions(text):
        lexer = shlex.shlex(args, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        command: list[str] = []
        for word in [*lexer, ";"] if instruction == "RUN" else []:
            if word not in ("&&", "||", ";", "|"):
                command.append(word)
                continue
            if command[:2] == ["pip", "install"]:
                found += [w for w in command[2:] if not w.startswith(("-", ".", "/"))]
            command = []
    return found


def base_image(text: str) -> re.Match:
    (image,) = [args.split()[0] for instruction, args in instructions(text) if instruction == "FROM"]
    match = BASE.fullmatch(image)
    assert match, f"FROM {image}: expected Ray's GPU image rayproject/ray:<version>-py3XX-cuXXX"
    return match


def pins() -> dict[str, str]:
    lines = (ROOT / "constraints-cpu.txt").read_text().splitlines()
    return dict(line.split("==") for line in lines if "==" in line and not line.startswith("#"))


def resolve(requirements: list[str], python: str, report: Path) -> subprocess.CompletedProcess:
    """pip's own resolution of `requirements` (each alone: --no-deps) for `python` on x86_64 Linux, from PyPI only
    (this machine's pip configuration ignored), without installing anything."""
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    env = {**os.environ, "PIP_CONFIG_FILE": os.devnull}
    return subprocess.run(
        [sys.executable, "-m", "pip", "--isolated", "--disable-pip-version-check", "install", "--dry-run",
         "--no-deps", "--ignore-installed", "--no-cache-dir", "--use-feature=fast-deps", "--only-binary=:all:",
         "--index-url", "https://pypi.org/simple", "--python-version", python, *platforms,
         "--target", str(report.parent / "target"), "--report", str(report), "--quiet", *requirements],
        capture_output=True, text=True, env=env, timeout=300)


def test_hadolint_passes_and_catches_a_bad_line(tmp_path):
    clean = subprocess.run([str(HADOLINT), str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    bad = tmp_path / "Dockerfile"
    bad.write_text(DOCKERFILE.read_text() + "RUN cd /tmp && pip install requests\n")
    dirty = subprocess.run([str(HADOLINT), str(bad)], capture_output=True, text=True, timeout=60)
    assert dirty.returncode != 0 and "DL3003" in dirty.stdout and "DL3013" in dirty.stdout, dirty.stdout


def test_base_is_rays_gpu_image_of_the_pinned_ray_and_pins_match():
    text = DOCKERFILE.read_text()
    base = base_image(text)
    assert base["ray"] == pins()["ray"]
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert Version(f"3.{base['minor']}") in Requirement(f"python{requires}").specifier
    pinned = {Requirement(r).name: str(Requirement(r).specifier) for r in pip_requirements(text)}
    assert {name: pinned[name] for name in ("torch", "torchvision")} == {
        name: f"=={pins()[name]}" for name in ("torch", "torchvision")}  # the CPU pins' CUDA builds
    assert any(name.startswith("spconv-cu") for name in pinned)  # the CUDA spconv, not the CPU one
    copied = [args.split()[-2] for instruction, args in instructions(text) if instruction == "COPY"]
    assert all((ROOT / path).exists() for path in copied), copied


def test_every_package_the_image_installs_resolves_on_pypi(tmp_path):
    text = DOCKERFILE.read_text()
    base = base_image(text)
    python = f"3.{base['minor']}"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    requirements = pip_requirements(text) + project + [f"ray=={base['ray']}"]  # the base image's Ray
    result = resolve(requirements, python, tmp_path / "report.json")
    assert result.returncode == 0, result.stdout + result.stderr
    resolved = {canonicalize_name(item["metadata"]["name"]): item["metadata"]
                for item in json.loads((tmp_path / "report.json").read_text())["install"]}
    assert {canonicalize_name(Requirement(r).name) for r in requirements} <= set(resolved)
    # The exact pins agree with each other (e.g. torchvision's own torch pin), as pip will need when it installs.
    environment = {"python_version": python, "python_full_version": f"{python}.0", "sys_platform": "linux",
                   "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
                   "implementation_name": "cpython", "platform_python_implementation": "CPython", "extra": ""}
    exact = {canonicalize_name(Requirement(r).name) for r in requirements if "==" in r}
    for name in exact:
        for line in resolved[name].get("requires_dist", []):
            dependency = Requirement(line)
            other = canonicalize_name(dependency.name)
            if other in exact and (dependency.marker is None or dependency.marker.evaluate(environment)):
                version = resolved[other]["version"]
                assert dependency.specifier.contains(version, prereleases=True), f"{name} needs {line}, got {version}"


def test_a_package_that_does_not_exist_fails_resolution(tmp_path):
    """The name the old cluster.yaml installed: no such distribution on PyPI."""
    result = resolve(["spconv-cu12x==2.3.8"], "3.11", tmp_path / "report.json")
    assert result.returncode != 0 and "No matching distribution found for spconv-cu12x" in result.stderr, result.stderr
