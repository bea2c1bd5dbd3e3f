"""Result files: atomic writes, provenance, and a store that knows what is already computed.

Every result is a pair of files in ``results/<profile>/<stage>/``:

* ``<name>.<ext>`` -- the payload (``.pt`` for tensors/weights, ``.json`` for plain values), and
* ``<name>.meta.json`` -- its parameters, seed, package versions, git commit, timing and the payload's sha256.

The meta file is written last, atomically, so it doubles as the completion marker: a payload without a
meta file, or whose sha256 does not match, is treated as missing and recomputed. A result is reused only
when its recorded parameters equal the requested ones exactly; a changed parameter therefore invalidates
exactly that result (and, because downstream parameters include the upstream payload's sha256, everything
computed from it).

A result is never silently replaced by one computed with other parameters: the results of a profile that has a
``configs/<profile>.yaml`` are replaced only by the runner (``python -m lib``, ``make reproduce``/``stage``), which
marks the notebooks it executes with the environment variable ``LANDSCAPE_RUNNER``. Anywhere else (a notebook run
by hand, a script) saving over such a result with different parameters raises ``ResultConflictError`` naming the
parameters that differ and the fix, unless the store or the call says ``overwrite=True``.
"""
from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lib import REPO_ROOT
from lib.core import native

RESULTS_ROOT = Path(os.environ.get("LANDSCAPE_RESULTS", REPO_ROOT / "results"))
_UMASK = os.umask(0o022)
os.umask(_UMASK)
_PACKAGES = ("torch", "torchvision", "numpy", "scipy", "pyhessian", "matplotlib", "papermill", "jupytext")
CONFIG_DIR = REPO_ROOT / "configs"
#: set by the runner in the environment of the notebooks it executes: JSON {"profile": ..., "set": [...]}
RUNNER_ENV = "LANDSCAPE_RUNNER"
#: environment variables that steer the numerics of torch's CPU libraries (recorded in every result's provenance)
NUMERIC_ENV = ("ATEN_CPU_CAPABILITY", "MKL_CBWR", "MKL_ENABLE_INSTRUCTIONS", "ONEDNN_MAX_CPU_ISA",
               "DNNL_MAX_CPU_ISA", "ONEDNN_DEFAULT_FPMATH_MODE", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
               "CUBLAS_WORKSPACE_CONFIG")
#: the CPU flags that decide which vector kernels MKL, oneDNN and ATen dispatch to
_ISA_FLAG = re.compile(r"^(sse\d?(_\d)?|ssse3|avx.*|fma4?|f16c|amx.*|bmi\d|popcnt|movbe|lzcnt|abm|aes|sha_ni|"
                       r"vaes|vpclmulqdq|gfni)$")


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see either the old file or the complete new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)   # mkstemp makes 0600; results are meant to be shared like any file
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def to_jsonable(obj: Any) -> Any:
    """Convert tensors, numpy values, tuples and paths into plain JSON values."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return to_jsonable(obj.detach().cpu().tolist())
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, float) and (obj != obj or obj in (float("inf"), float("-inf"))):
        return str(obj)
    return obj


def json_bytes(obj: Any) -> bytes:
    return (json.dumps(to_jsonable(obj), indent=1, sort_keys=True) + "\n").encode()


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_bytes(path, json_bytes(obj))


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def git_commit() -> dict:
    """The repository's HEAD commit and whether the working tree had uncommitted changes."""
    def git(*args):
        return subprocess.run(["git", "-C", str(REPO_ROOT), *args], capture_output=True, text=True,
                              timeout=20).stdout.strip()
    try:
        commit = git("rev-parse", "--verify", "-q", "HEAD") or "unknown"
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        commit, dirty = "unknown", None
    return {"commit": commit, "dirty": dirty}


def package_versions() -> dict:
    versions = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


@functools.lru_cache(maxsize=1)
def cpu_info() -> dict:
    """The CPU: model, vendor, family/model/stepping, logical CPUs and its vector instruction-set flags (Linux
    ``/proc/cpuinfo``; elsewhere what ``platform`` knows). ``flags_sha256`` identifies the complete flag list."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, sep, value = line.partition(":")
            if not sep:
                if fields:
                    break        # the first processor block is enough
                continue
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    flags = fields.get("flags", fields.get("Features", "")).split()
    return {
        "model": fields.get("model name") or platform.processor() or None,
        "vendor": fields.get("vendor_id"),
        "family_model_stepping": "/".join(fields.get(k, "?") for k in ("cpu family", "model", "stepping"))
        if "cpu family" in fields else None,
        "logical_cpus": os.cpu_count(),
        "isa_flags": sorted(f for f in flags if _ISA_FLAG.match(f)),
        "flags_sha256": sha256_bytes(" ".join(sorted(flags)).encode())[:16] if flags else None,
    }


@functools.lru_cache(maxsize=1)
def cpu_libraries() -> dict:
    """What torch computes with on the CPU: its dispatched ATen capability, MKL and oneDNN builds, threads."""
    config = torch.__config__.show()

    def version(pattern):
        match = re.search(pattern, config)
        return match.group(1) if match else None

    return {
        "aten_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "mkl": version(r"Math Kernel Library Version ([0-9.]+)") if torch.backends.mkl.is_available() else None,
        "onednn": version(r"MKL-DNN v([^\s]+)") if torch.backends.mkldnn.is_available() else None,
        "blas": version(r"BLAS_INFO=([^,\s]+)"),
        "interop_threads": torch.get_num_interop_threads(),
    }


def provenance() -> dict:
    """Where and with what a result was computed (not part of the result's identity)."""
    return {
        "git": git_commit(),
        "versions": package_versions(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu": cpu_info(),
        "cpu_libraries": cpu_libraries(),
        "numeric_env": {k: os.environ.get(k) for k in NUMERIC_ENV},
        "native": native.status(),
        "torch_threads": torch.get_num_threads(),
        "argv": sys.argv[:1],
        "written_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def runner_context() -> dict | None:
    """``{"profile": ..., "set": [...]}`` when this process is a notebook executed by the runner, else None."""
    raw = os.environ.get(RUNNER_ENV)
    if not raw:
        return None
    try:
        ctx = json.loads(raw)
    except json.JSONDecodeError:
        return {}
    return ctx if isinstance(ctx, dict) else {}


def _short(value: Any, width: int = 40) -> str:
    text = json.dumps(value, sort_keys=True) if not isinstance(value, str) else repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def param_differences(stored: Any, new: Any, prefix: str = "") -> list[str]:
    """``["key: <stored> stored, <new> now", ...]`` for every parameter that differs (nested keys dotted)."""
    if not (isinstance(stored, dict) and isinstance(new, dict)):
        return [] if stored == new else [f"{prefix or 'params'}: {_short(stored)} stored, {_short(new)} now"]
    out = []
    for key in sorted(set(stored) | set(new), key=str):
        name = f"{prefix}.{key}" if prefix else str(key)
        if key not in new:
            out.append(f"{name}: {_short(stored[key])} stored, absent now")
        elif key not in stored:
            out.append(f"{name}: absent in the stored result, {_short(new[key])} now")
        elif stored[key] != new[key]:
            out += (param_differences(stored[key], new[key], name) if isinstance(stored[key], dict)
                    and isinstance(new[key], dict) else [f"{name}: {_short(stored[key])} stored, "
                                                         f"{_short(new[key])} now"])
    return out


def _payload_bytes(payload: Any, ext: str) -> bytes:
    if ext == "json":
        return json_bytes(payload)
    if ext == "pt":
        buf = io.BytesIO()
        torch.save(payload, buf)
        return buf.getvalue()
    raise ValueError(f"unknown payload type {ext!r}; use 'json' or 'pt'")


@dataclass
class Result:
    """A loaded result: the payload and its meta record (params, seed, provenance, timing)."""
    payload: Any
    meta: dict
    path: Path


class MissingResultError(FileNotFoundError):
    """A result needed by a later stage is not there; the message names the notebook that makes it."""


class ResultConflictError(ValueError):
    """Saving would replace a complete result computed with other parameters; the message says which and the fix."""


class ResultStore:
    """Results of one profile: ``results/<profile>/<stage>/<name>.{pt,json}`` plus ``.meta.json``."""

    def __init__(self, profile: str, root: str | Path | None = None, *, overwrite: bool | None = None):
        """``overwrite``: may a result be replaced by one with other parameters? ``None`` (default): yes inside
        the runner and for profiles without a ``configs/<profile>.yaml``; no otherwise."""
        if not profile or "/" in profile:
            raise ValueError(f"profile={profile!r} must be a plain name such as 'smoke' or 'paper'")
        self.profile = profile
        self.root = Path(root) if root is not None else RESULTS_ROOT / profile
        self.overwrite = overwrite

    def may_replace(self) -> bool:
        """Whether this store replaces results whose parameters differ (see ``__init__``)."""
        if self.overwrite is not None:
            return self.overwrite
        return runner_context() is not None or not (CONFIG_DIR / f"{self.profile}.yaml").is_file()

    def check_replace(self, stage: str, name: str, params: dict, *, overwrite: bool | None = None,
                      notebook: str | None = None) -> None:
        """Raise ``ResultConflictError`` if a complete result ``stage/name`` has other parameters than ``params``
        and may not be replaced (``overwrite``: this call's decision; None = the store's). Cheap: call it before
        computing."""
        meta = self.meta(stage, name)
        if meta is None or meta.get("params") == to_jsonable(params):
            return
        if (self.may_replace() if overwrite is None else overwrite):
            return
        diff = param_differences(meta.get("params"), to_jsonable(params))
        shown = "; ".join(diff[:8]) + (f"; ... ({len(diff) - 8} more)" if len(diff) > 8 else "")
        try:
            where = (self.root / stage / name).relative_to(REPO_ROOT)
        except ValueError:
            where = self.root / stage / name
        rerun = (f"make stage STAGE={notebook} PROFILE={self.profile} SET='section.key=value ...'" if notebook
                 else f"make reproduce PROFILE={self.profile}")
        why = (f"The results of profile {self.profile!r} (configs/{self.profile}.yaml) are replaced only by the "
               f"runner. To recompute them with other values, change configs/{self.profile}.yaml or run `{rerun}`; "
               if (CONFIG_DIR / f"{self.profile}.yaml").is_file() else
               "This store was created with overwrite=False. ")
        raise ResultConflictError(
            f"not overwriting {where}: it was computed with other parameters than this run's ({shown}). {why}"
            f"to experiment, give this run another profile name (e.g. profile = 'scratch' in the notebook's "
            f"parameters cell; its results go to results/scratch/); to replace them anyway, use "
            f"ResultStore({self.profile!r}, overwrite=True).")

    def _paths(self, stage: str, name: str, ext: str) -> tuple[Path, Path]:
        base = self.root / stage
        return base / f"{name}.{ext}", base / f"{name}.meta.json"

    def meta(self, stage: str, name: str) -> dict | None:
        """The meta record if the result is complete and intact, else None."""
        meta_path = self.root / stage / f"{name}.meta.json"
        if not meta_path.is_file():
            return None
        try:
            meta = json.loads(meta_path.read_text())
        except (json.JSONDecodeError, OSError):
            return None
        payload_path = meta_path.parent / meta.get("payload", "")
        if not payload_path.is_file() or sha256_file(payload_path) != meta.get("sha256"):
            return None
        return meta

    def is_done(self, stage: str, name: str, params: dict) -> bool:
        """True when an intact result with exactly these parameters exists."""
        meta = self.meta(stage, name)
        return meta is not None and meta.get("params") == to_jsonable(params)

    def save(self, stage: str, name: str, payload: Any, params: dict, *, ext: str = "json",
             seconds: float | None = None, summary: dict | None = None, overwrite: bool | None = None) -> Path:
        """Write payload then meta (the completion marker), both atomically. Returns the payload path.

        Refuses (``ResultConflictError``) to replace a complete result computed with other parameters unless
        ``overwrite`` (None: the store's policy, see ``__init__``)."""
        self.check_replace(stage, name, params, overwrite=overwrite)
        data = _payload_bytes(payload, ext)
        payload_path, meta_path = self._paths(stage, name, ext)
        atomic_write_bytes(payload_path, data)
        meta = {
            "stage": stage,
            "name": name,
            "profile": self.profile,
            "payload": payload_path.name,
            "sha256": sha256_bytes(data),
            "params": to_jsonable(params),
            "seed": params.get("seed") if isinstance(params, dict) else None,
            "summary": to_jsonable(summary or {}),
            "seconds": seconds,
            "provenance": provenance(),
        }
        atomic_write_json(meta_path, meta)
        return payload_path

    def load(self, stage: str, name: str, *, made_by: str | None = None, command: str | None = None) -> Result:
        """Load an intact result or raise MissingResultError naming the notebook that makes it."""
        meta = self.meta(stage, name)
        if meta is None:
            hint = (f"; run notebook {made_by} first ({command or f'make reproduce PROFILE={self.profile}'})"
                    if made_by else "")
            raise MissingResultError(
                f"result {stage}/{name} of profile {self.profile!r} is missing or incomplete "
                f"under {self.root}{hint}")
        path = self.root / stage / meta["payload"]
        if path.suffix == ".pt":
            payload = torch.load(path, map_location="cpu", weights_only=False)
        else:
            payload = json.loads(path.read_text())
        return Result(payload=payload, meta=meta, path=path)

    def names(self, stage: str) -> list[str]:
        """Names of the complete results of a stage, sorted."""
        folder = self.root / stage
        if not folder.is_dir():
            return []
        names = [p.name[: -len(".meta.json")] for p in folder.glob("*.meta.json")]
        return sorted(n for n in names if self.meta(stage, n) is not None)
