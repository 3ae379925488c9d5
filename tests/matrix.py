"""The test suite against the installed wheel, on every supported Python.

For each CPython from 3.9 to 3.13 found (through pyenv, or as ``python3.X``
on PATH), this makes a fresh virtual environment, installs the one abi3
wheel from ``dist/`` with the test tools, and runs the pytest suite from a
scratch copy of ``tests/``, the four scripts, the examples and the docs: a folder with no
``sockdemo`` sources in it, so every test imports the installed package. On
the oldest and the newest it also checks the type stubs against the module
(``mypy.stubtest``). Then it installs the sdist with a plain ``pip install``
(compiling the Rust core, no maturin develop) and checks that the server,
the client and the ``sockdemo`` command work.

A missing interpreter is reported as skipped, never passed. Exits non-zero
if anything failed.

    python tests/matrix.py [--dist dist] [--versions 3.9 3.13] [--no-sdist]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VERSIONS = ["3.9", "3.10", "3.11", "3.12", "3.13"]
# uvloop and prometheus_client too: the asyncio tests run on both loops, and
# the metrics tests read /metrics with the official parser, on every Python.
TEST_TOOLS = [
    "pytest>=7",
    "pytest-timeout>=2",
    "hypothesis>=6",
    "uvloop>=0.19",
    "prometheus_client>=0.20",
]


def say(line: str) -> None:
    print(f"[matrix] {line}", flush=True)


def find_python(version: str) -> Path | None:
    """The interpreter for `version`: pyenv's if it has one, else on PATH."""
    if shutil.which("pyenv"):
        found = subprocess.run(
            ["pyenv", "prefix", version], capture_output=True, text=True, check=False
        )
        if found.returncode == 0:
            for prefix in found.stdout.split(":"):
                python = Path(prefix.strip()) / "bin" / "python3"
                if python.exists():
                    return python
    on_path = shutil.which(f"python{version}")
    return Path(on_path) if on_path else None


def run(argv: list[str | Path], cwd: Path | None = None) -> bool:
    return subprocess.run([str(a) for a in argv], check=False, cwd=cwd).returncode == 0


def venv(python: Path, where: Path, packages: list[str]) -> Path | None:
    """A fresh virtual environment with `packages`; its interpreter."""
    if not run([python, "-m", "venv", where]):
        return None
    venv_python = where / "bin" / "python"
    pip: list[str | Path] = [
        venv_python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"
    ]  # fmt: skip
    if not run([*pip, *packages]):
        return None
    return venv_python


def scratch_copy(where: Path) -> Path:
    """tests/, the scripts, the examples and the docs, without the package
    sources."""
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(ROOT / "tests", where / "tests", ignore=ignore)
    shutil.copytree(ROOT / "examples", where / "examples", ignore=ignore)
    (where / "python").mkdir()
    for script in (ROOT / "python").glob("*.py"):
        shutil.copy(script, where / "python")
    for name in ("README.md", "PROTOCOL.md", "pyproject.toml"):
        shutil.copy(ROOT / name, where / name)
    return where


def test_wheel(version: str, wheel: Path, work: Path) -> str:
    python = find_python(version)
    if python is None:
        return "skipped (no interpreter found)"
    tools = ["mypy"] if version in (VERSIONS[0], VERSIONS[-1]) else []
    venv_python = venv(python, work / f"venv-{version}", [str(wheel), *TEST_TOOLS, *tools])
    if venv_python is None:
        return "failed (could not install the wheel and the test tools)"
    checkout = scratch_copy(work / f"checkout-{version}")
    where = subprocess.run(
        [venv_python, "-c", "import sockdemo; print(sockdemo.__file__)"],
        cwd=checkout, capture_output=True, text=True, check=False,
    ).stdout.strip()  # fmt: skip
    say(f"{version}: testing {where}")
    if str(work / f"venv-{version}") not in where:
        return f"failed (imported {where!r}, not the installed wheel)"
    if not run([venv_python, "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=checkout):
        return "failed (pytest)"
    if tools and not run([venv_python, "-m", "mypy.stubtest", "sockdemo._sockdemo"], cwd=checkout):
        return "failed (stubtest)"
    return "passed" + (" (stubs checked)" if tools else "")


def test_sdist(sdist: Path, work: Path) -> str:
    """`pip install` of the sdist, then the server, client and command."""
    python = find_python("3.11") or Path(sys.executable)
    venv_python = venv(python, work / "venv-sdist", [str(sdist)])
    if venv_python is None:
        return "failed (pip install of the sdist)"
    bin_dir = venv_python.parent
    version = subprocess.run(
        [bin_dir / "sockdemo", "--version"], capture_output=True, text=True, check=False
    ).stdout.strip()
    if not version.startswith("sockdemo "):
        return f"failed (sockdemo --version printed {version!r})"
    server = subprocess.Popen(
        [bin_dir / "sockdemo", "server", "--port", "0"],
        stdout=subprocess.PIPE, text=True, cwd=work,
    )  # fmt: skip
    try:
        assert server.stdout is not None
        first = server.stdout.readline().strip()
        port = first.rsplit(":", 1)[-1]
        reply = subprocess.run(
            [bin_dir / "sockdemo", "client", "--port", port, "--timeout", "10", "hello"],
            capture_output=True, text=True, check=False, cwd=work,
        ).stdout  # fmt: skip
    finally:
        server.terminate()
        server.wait(10)
    if "Received from server: Server received: hello" not in reply:
        return f"failed (server said {first!r}, client printed {reply!r})"
    return f"passed ({version}, server and client from the sdist)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dist", type=Path, default=ROOT / "dist", help="where make wheel put them"
    )
    parser.add_argument("--versions", nargs="*", default=VERSIONS)
    parser.add_argument("--no-sdist", action="store_true", help="skip the sdist install")
    args = parser.parse_args()
    # The manylinux2014 x86_64 wheel: the one a Linux user installs.
    wheels = sorted(args.dist.glob("sockdemo-*-abi3-*manylinux*x86_64*.whl"))
    sdists = sorted(args.dist.glob("sockdemo-*.tar.gz"))
    if not wheels:
        say(f"no manylinux x86_64 abi3 wheel in {args.dist}: run 'make test-matrix'")
        return 2
    results: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="sockdemo-matrix-") as tmp:
        for version in args.versions:
            started = time.monotonic()
            outcome = test_wheel(version, wheels[-1], Path(tmp))
            results[f"Python {version}"] = outcome
            say(f"Python {version}: {outcome} in {time.monotonic() - started:.0f} s")
        if not args.no_sdist:
            if sdists:
                results["sdist"] = test_sdist(sdists[-1], Path(tmp))
            else:
                results["sdist"] = "failed (no sdist in dist/)"
            say(f"sdist: {results['sdist']}")
    say("summary:")
    for name, outcome in results.items():
        say(f"  {name:12} {outcome}")
    counts = {
        k: sum(v.startswith(k) for v in results.values()) for k in ("passed", "failed", "skipped")
    }
    print(
        f"matrix: {counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped"
    )
    return 1 if counts["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
