"""Build the real llama.cpp servers from registry packages, once, cached outside the repo.

Both come from one PyPI package, `llama-cpp-python` (version `LLAMA_CPP_PYTHON_VERSION`):

- `ensure_llama_cpp_python()`: a dedicated venv with `llama-cpp-python[server]` (its wheel
  builds llama.cpp from the sdist: ~6-9 min on 2 cores); returns its python, which runs
  `python -m llama_cpp.server`. A venv of its own keeps the project's venv lean (no fastapi,
  pydantic, uvicorn, ... that could hide a missing dependency of the project, nor version
  conflicts with it) and survives a rebuilt `.venv`.
- `ensure_llama_server()`: llama.cpp's own `llama-server`, built with cmake from the
  llama.cpp source that the same sdist vendors (`vendor/llama.cpp`), only that target,
  static (`BUILD_SHARED_LIBS=OFF`, no OpenSSL, no OpenMP, no web UI download); returns the
  binary, self-contained but for libc/libstdc++.

Cache root: `$LLM_PROBE_CACHE`, else `~/.cache/llm-probe-exporter`:

    sdist/llama_cpp_python-<ver>.tar.gz     downloaded once, shared by both builds
    wheels/llama_cpp_python-<ver>-*.whl     any wheel of that version found here is used
    llama-cpp-python-<ver>/venv/            the server venv (+ .complete, build.log)
    llama-server-<ver>/llama-server         the binary (+ .complete, build.log)

Each `ensure_*` builds only when its `.complete` marker is missing, under an exclusive lock
file so two processes (pytest workers, CI's pre-build) never build at once: the second one
waits and then finds the result. Builds run niced (they share 2 cores with the tests) and
with bounded timeouts; a failure raises `BuildError` with the tail of the build log.
Both builds use `GGML_NATIVE=OFF` so a cached artefact never hits an illegal instruction on
another CPU (the tiny test model needs no SIMD speed).

`python -m tests.realservers.build` builds both (CI's pre-build step) and prints the paths.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

LLAMA_CPP_PYTHON_VERSION = "0.3.36"
CACHE_ENV = "LLM_PROBE_CACHE"

BUILD_TIMEOUT_S = 45 * 60  # one build step (pip wheel, cmake --build)
STEP_TIMEOUT_S = 10 * 60  # a download, a venv, an install, a configure
LOCK_TIMEOUT_S = 60 * 60  # waiting for another process's build
NICE = 10

CMAKE_FLAGS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DBUILD_SHARED_LIBS=OFF",
    "-DGGML_NATIVE=OFF",
    "-DGGML_OPENMP=OFF",
    "-DLLAMA_CURL=OFF",
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_SERVER=ON",
    "-DLLAMA_BUILD_UI=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",  # else it downloads the web UI at build time
)
# For the wheel: the same portability, and nothing fetched at build time.
WHEEL_CMAKE_ARGS = "-DGGML_NATIVE=OFF -DLLAMA_CURL=OFF"


class BuildError(RuntimeError):
    """A build step failed; the message names it and ends with the log's tail."""


def cache_root() -> Path:
    env = os.environ.get(CACHE_ENV)
    root = Path(env).expanduser() if env else Path.home() / ".cache" / "llm-probe-exporter"
    root.mkdir(parents=True, exist_ok=True)
    return root


def _jobs() -> int:
    return max(1, len(os.sched_getaffinity(0)))


@contextlib.contextmanager
def _lock(path: Path, timeout_s: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """An exclusive flock on `path`, waited for at most `timeout_s`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise BuildError(f"timed out waiting for the build lock {path}") from None
                time.sleep(1.0)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _tail(log: Path, lines: int = 40) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _run(
    cmd: Sequence[str | os.PathLike[str]],
    log: Path,
    *,
    timeout_s: float,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    nice: bool = True,
) -> None:
    """Run `cmd` (niced), appending its output to `log`; raise BuildError on failure."""
    argv = [str(c) for c in cmd]
    if nice and shutil.which("nice"):
        argv = ["nice", "-n", str(NICE), *argv]
    with log.open("a") as out:
        out.write(f"\n$ {' '.join(argv)}\n")
        out.flush()
        try:
            proc = subprocess.run(
                argv,
                cwd=cwd,
                env={**os.environ, **(env or {})},
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=timeout_s,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise BuildError(
                f"timed out after {timeout_s:.0f}s: {' '.join(argv)}\n{_tail(log)}"
            ) from None
    if proc.returncode != 0:
        raise BuildError(f"exit {proc.returncode}: {' '.join(argv)} (log {log})\n{_tail(log)}")


def _say(msg: str) -> None:
    print(f"[realservers.build] {msg}", file=sys.stderr, flush=True)


# --- the sdist, shared by both builds -------------------------------------------------------


def ensure_sdist(version: str = LLAMA_CPP_PYTHON_VERSION) -> Path:
    """The `llama-cpp-python` sdist from PyPI, downloaded once."""
    root = cache_root()
    sdist_dir = root / "sdist"
    target = sdist_dir / f"llama_cpp_python-{version}.tar.gz"
    if target.is_file():
        return target
    with _lock(root / ".sdist.lock"):
        if target.is_file():
            return target
        sdist_dir.mkdir(parents=True, exist_ok=True)
        log = sdist_dir / "download.log"
        with tempfile.TemporaryDirectory(dir=sdist_dir) as tmp:
            _run(
                [sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps",
                 "--no-input", "--disable-pip-version-check", "-d", tmp,
                 f"llama-cpp-python=={version}"],
                log, timeout_s=STEP_TIMEOUT_S, nice=False,
            )  # fmt: skip
            found = sorted(Path(tmp).glob(f"llama_cpp_python-{version}.tar.gz"))
            if not found:
                raise BuildError(f"pip download left no sdist in {tmp}\n{_tail(log)}")
            os.replace(found[0], target)
    return target


# --- llama-cpp-python[server] ---------------------------------------------------------------


def _find_wheel(version: str) -> Path | None:
    wheels = sorted((cache_root() / "wheels").glob(f"llama_cpp_python-{version}-*.whl"))
    return wheels[-1] if wheels else None


def ensure_wheel(version: str = LLAMA_CPP_PYTHON_VERSION) -> Path:
    """A `llama-cpp-python` wheel of `version`, built from the sdist when none is cached."""
    found = _find_wheel(version)
    if found:
        return found
    root = cache_root()
    with _lock(root / ".wheel.lock"):
        found = _find_wheel(version)
        if found:
            return found
        sdist = ensure_sdist(version)
        wheels = root / "wheels"
        wheels.mkdir(parents=True, exist_ok=True)
        log = wheels / f"build-{version}.log"
        log.write_text("")
        _say(f"building the llama-cpp-python {version} wheel (several minutes; log {log})")
        t0 = time.monotonic()
        with tempfile.TemporaryDirectory(dir=wheels) as tmp:
            _run(
                [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-input",
                 "--disable-pip-version-check", "-w", tmp, sdist],
                log,
                timeout_s=BUILD_TIMEOUT_S,
                env={"CMAKE_ARGS": WHEEL_CMAKE_ARGS, "CMAKE_BUILD_PARALLEL_LEVEL": str(_jobs())},
            )  # fmt: skip
            built = sorted(Path(tmp).glob(f"llama_cpp_python-{version}-*.whl"))
            if not built:
                raise BuildError(f"pip wheel left no wheel in {tmp}\n{_tail(log)}")
            final = wheels / built[0].name
            os.replace(built[0], final)
        _say(f"wheel built in {time.monotonic() - t0:.0f}s: {final}")
        return final


def _venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def ensure_llama_cpp_python(version: str = LLAMA_CPP_PYTHON_VERSION) -> Path:
    """A python that can run `-m llama_cpp.server` (a dedicated, cached venv)."""
    home = cache_root() / f"llama-cpp-python-{version}"
    venv = home / "venv"
    python = _venv_python(venv)
    done = home / ".complete"
    if done.is_file() and python.exists():
        return python
    with _lock(home / ".lock"):
        if done.is_file() and python.exists():
            return python
        wheel = ensure_wheel(version)
        log = home / "build.log"
        log.write_text("")
        _say(f"installing llama-cpp-python[server] {version} into {venv}")
        t0 = time.monotonic()
        if venv.exists():
            shutil.rmtree(venv)
        base = getattr(sys, "_base_executable", sys.executable)
        _run([base, "-m", "venv", venv], log, timeout_s=STEP_TIMEOUT_S, nice=False)
        _run(
            [python, "-m", "pip", "install", "--no-input", "--disable-pip-version-check",
             f"{wheel}[server]"],
            log, timeout_s=STEP_TIMEOUT_S, nice=False,
        )  # fmt: skip
        _run(
            [python, "-c", "import llama_cpp, llama_cpp.server.app; print(llama_cpp.__version__)"],
            log, timeout_s=120, nice=False,
        )  # fmt: skip
        done.write_text(f"{wheel.name}\n")
        _say(f"llama-cpp-python[server] ready in {time.monotonic() - t0:.0f}s: {python}")
    return python


# --- llama.cpp's llama-server ---------------------------------------------------------------


def _extract_llama_cpp(sdist: Path, into: Path) -> Path:
    """Extract only `vendor/llama.cpp` of the sdist; return that directory."""
    with tarfile.open(sdist) as tar:
        members = [m for m in tar.getmembers() if "/vendor/llama.cpp/" in m.name + "/"]
        if not members:
            raise BuildError(f"{sdist} carries no vendor/llama.cpp")
        tar.extractall(into, members=members, filter="data")
    found = sorted(into.glob("*/vendor/llama.cpp/CMakeLists.txt"))
    if not found:
        raise BuildError(f"{sdist}: no vendor/llama.cpp/CMakeLists.txt")
    return found[0].parent


def ensure_llama_server(version: str = LLAMA_CPP_PYTHON_VERSION) -> Path:
    """llama.cpp's `llama-server` built from the llama-cpp-python sdist's vendored source."""
    home = cache_root() / f"llama-server-{version}"
    binary = home / "llama-server"
    done = home / ".complete"
    if done.is_file() and binary.is_file():
        return binary
    with _lock(home / ".lock"):
        if done.is_file() and binary.is_file():
            return binary
        sdist = ensure_sdist(version)
        log = home / "build.log"
        log.write_text("")
        _say(f"building llama-server from llama-cpp-python {version} (several minutes; log {log})")
        t0 = time.monotonic()
        with tempfile.TemporaryDirectory(dir=home, prefix="build-") as tmp:
            src = _extract_llama_cpp(sdist, Path(tmp))
            build = Path(tmp) / "build"
            generator = ["-G", "Ninja"] if shutil.which("ninja") else []
            _run(
                ["cmake", "-S", src, "-B", build, *generator, *CMAKE_FLAGS],
                log, timeout_s=STEP_TIMEOUT_S,
            )  # fmt: skip
            _run(
                ["cmake", "--build", build, "--target", "llama-server", "-j", str(_jobs())],
                log, timeout_s=BUILD_TIMEOUT_S,
            )  # fmt: skip
            built = build / "bin" / "llama-server"
            if not built.is_file():
                raise BuildError(f"no {built} after the build\n{_tail(log)}")
            tmp_binary = home / "llama-server.tmp"
            shutil.copy2(built, tmp_binary)
            os.replace(tmp_binary, binary)
        _run([binary, "--version"], log, timeout_s=60, nice=False)
        done.write_text(f"llama-cpp-python {version}\n")
        _say(f"llama-server built in {time.monotonic() - t0:.0f}s: {binary}")
    return binary


def main(argv: Sequence[str] | None = None) -> int:
    """Build both servers when missing and print their paths (CI's pre-build step)."""
    args = list(sys.argv[1:] if argv is None else argv)
    which = set(args) or {"llama-cpp-python", "llama-server"}
    unknown = which - {"llama-cpp-python", "llama-server"}
    if unknown:
        print(
            "usage: python -m tests.realservers.build [llama-cpp-python] [llama-server]",
            file=sys.stderr,
        )
        return 2
    try:
        if "llama-cpp-python" in which:
            print(f"llama-cpp-python: {ensure_llama_cpp_python()}")
        if "llama-server" in which:
            print(f"llama-server: {ensure_llama_server()}")
    except BuildError as e:
        print(f"build failed: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
