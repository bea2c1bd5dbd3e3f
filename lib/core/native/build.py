"""Compiling, caching and loading the native C kernels (``fused_cnn.c``, ``order_sums.c``), and their thread pool.

* ``load(source, disable_var)``: the ctypes library of ``source`` (a ``.c`` file of this package), compiled
  once per source text, compiler and ``FLAGS`` into ``$XDG_CACHE_HOME/curvature-subspace`` (default ``~/.cache``;
  a per-user folder in the temporary directory when that one cannot be written), as ``(library, None)``; or
  ``(None, reason)``: ``LIB_NATIVE=0`` or the kernel's own ``disable_var`` set to 0, not an x86-64 CPU on which
  torch runs its AVX2 (or AVX-512) kernels, no C compiler (``$CC`` or ``cc``), a failed build. Callers fall back
  to torch's operations then, with the same results to float rounding.
* ``kernel(source, disable_var, signatures)``: a cached ``() -> (library, reason)`` of ``load`` with the argument
  types of its functions set (each returns a C ``int``, 0 on success), registered in ``KERNELS`` under the
  source's stem; ``refresh()`` forgets every cached answer (re-reads the switches, e.g. after the environment
  changed).
* ``compiler_command()`` / ``compiler_version()``: the compiler command and the first line of its ``--version``.
* ``split(n, threads, unit)`` / ``run(parts, call)``: contiguous ranges, one per thread, and the calls on a shared
  thread pool (a ctypes call releases the GIL, so the threads run in parallel).

Why plain ``cc`` + ctypes and not ``torch.utils.cpp_extension``: docs/engine.md ("Building the kernels").
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path

import torch

__all__ = ["FLAGS", "KERNELS", "cache_dir", "cpu_reason", "compiler_command", "compiler_version", "load", "kernel",
           "refresh", "split", "run"]

#: compiler flags: AVX2 + FMA code whatever the CPU (AVX-512 machines run the same instructions), no contraction
#: of the scalar code (its rounding is then the compiler's choice no more)
FLAGS = ("-O3", "-mavx2", "-mfma", "-ffp-contract=off", "-fPIC", "-shared", "-std=c11")
_lock = threading.Lock()
_pool: dict = {}
#: kernel name (the source's stem) -> (cached library(), its own switch), filled by ``kernel``
KERNELS: dict = {}


def cache_dir() -> Path:
    """``$XDG_CACHE_HOME/curvature-subspace`` (default ``~/.cache``), or a per-user folder in the temporary
    directory when that one cannot be written (a read-only home)."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    home = Path(root) / "curvature-subspace"
    try:
        home.mkdir(parents=True, exist_ok=True)
        if os.access(home, os.W_OK):
            return home
    except OSError:
        pass
    return Path(tempfile.gettempdir()) / f"curvature-subspace-{os.getuid() if hasattr(os, 'getuid') else 'user'}"


def cpu_reason() -> str | None:
    """Why this CPU cannot run the kernels (None: it can)."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return f"not an x86-64 CPU ({platform.machine()})"
    capability = torch.backends.cpu.get_cpu_capability()
    if capability not in ("AVX2", "AVX512"):
        return f"torch runs {capability} kernels here (the kernels need AVX2)"
    return None


def compiler_command() -> str:
    """The C compiler the kernels are built with: ``$CC``, else ``cc``."""
    return os.environ.get("CC") or "cc"


@lru_cache(maxsize=8)
def _version_line(command: str) -> str | None:
    try:
        done = subprocess.run([command, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    lines = (done.stdout or done.stderr).strip().splitlines()
    return lines[0] if done.returncode == 0 and lines else None


def compiler_version() -> str | None:
    """First line of ``$CC --version`` (None: no such compiler)."""
    command = compiler_command()
    return _version_line(command) if shutil.which(command) else None


def load(source: Path, disable_var: str):
    """(ctypes library, None) or (None, reason); see the module docstring. Not cached and no argument types set:
    ``kernel`` does both."""
    for var in ("LIB_NATIVE", disable_var):
        if os.environ.get(var, "1") == "0":
            return None, f"disabled by {var}=0"
    reason = cpu_reason()
    if reason:
        return None, reason
    compiler = compiler_command()
    if shutil.which(compiler) is None:
        return None, f"no C compiler ({compiler!r} not found)"
    text = source.read_bytes()
    tag = hashlib.sha256(text + " ".join((compiler,) + FLAGS).encode()).hexdigest()[:16]
    target = cache_dir() / f"{source.stem}-{tag}.so"
    if not target.exists():
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
                built = Path(tmp) / target.name
                done = subprocess.run([compiler, *FLAGS, str(source), "-o", str(built), "-lm"],
                                      capture_output=True, text=True, timeout=120)
                if done.returncode != 0:
                    return None, f"{compiler} failed on {source.name}: {done.stderr.strip()[:300]}"
                os.replace(built, target)          # atomic: a concurrent process sees the whole library or none
        except (OSError, subprocess.SubprocessError) as e:
            return None, f"could not build {source.name}: {e}"
    try:
        return ctypes.CDLL(str(target)), None
    except OSError as e:
        return None, f"could not load {target}: {e}"


def kernel(source: Path, disable_var: str, signatures: dict):
    """A cached ``library()`` -> ``(ctypes library, None)`` or ``(None, reason)`` for ``source``; ``signatures``
    maps each exported function to its ctypes argument types (``library.cache_clear()`` rebuilds the answer, e.g.
    after the environment changed)."""
    @lru_cache(maxsize=1)
    def library():
        lib, reason = load(source, disable_var)
        if lib is None:
            return None, reason
        for name, argtypes in signatures.items():
            fn = getattr(lib, name)
            fn.argtypes, fn.restype = argtypes, ctypes.c_int
        return lib, None

    KERNELS[source.stem] = (library, disable_var)
    return library


def refresh() -> None:
    """Forget every kernel's cached answer: the next call reads ``LIB_NATIVE``, the kernels' switches and ``CC``
    again (and builds or loads the library)."""
    for library, _ in KERNELS.values():
        library.cache_clear()


def split(n: int, threads: int | None, unit: int = 1) -> list[tuple[int, int]]:
    """Contiguous ranges of 0..n-1, one per thread (``threads`` defaults to torch's), starting at multiples of
    ``unit`` (lane groups)."""
    groups = -(-n // unit)
    nt = max(1, min(threads or torch.get_num_threads(), max(groups, 1)))
    bounds = [min(n, round(i * groups / nt) * unit) for i in range(nt + 1)]
    return list(zip(bounds[:-1], bounds[1:]))


def run(parts: list[tuple[int, int]], call) -> list:
    """call(s0, s1) for every range, the ranges on the thread pool (the foreign calls release the GIL)."""
    if len(parts) == 1:
        return [call(*parts[0])]
    return list(_executor(len(parts)).map(lambda se: call(*se), parts))


def _executor(n: int) -> ThreadPoolExecutor:
    with _lock:
        if _pool.get("n") != n:
            if "pool" in _pool:
                _pool["pool"].shutdown(wait=False)
            _pool.update(n=n, pool=ThreadPoolExecutor(max_workers=n, thread_name_prefix="native"))
        return _pool["pool"]
