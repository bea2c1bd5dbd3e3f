"""Building and running the native kernels (``lib.core.native.build``): the switches and the compiler turn kernels
off with their reason, the cache folder, the compiler command, the thread ranges and the calls on them."""
import os

import pytest

from lib.core import native
from lib.core.native import build, fused_cnn, order_sums, refresh, status


def test_the_switches_turn_kernels_off(clean_switches):
    if native.build.cpu_reason():
        pytest.skip(f"the kernels cannot run on this CPU: {native.build.cpu_reason()}")
    clean_switches.setenv("LIB_NATIVE", "0")
    refresh()
    got = status()
    assert [s["reason"] for s in got.values()] == ["disabled by LIB_NATIVE=0"] * 2
    assert not fused_cnn.available() and not order_sums.available()
    clean_switches.delenv("LIB_NATIVE")
    clean_switches.setenv("LIB_ORDER_SUMS", "0")
    refresh()
    got = status()
    assert got["order_sums"] == {**got["order_sums"], "built": False, "reason": "disabled by LIB_ORDER_SUMS=0"}
    assert got["fused_cnn"]["reason"] != "disabled by LIB_ORDER_SUMS=0"
    clean_switches.delenv("LIB_ORDER_SUMS")
    clean_switches.setenv("CC", "no-such-compiler-xyz")
    refresh()
    got = status()
    assert {s["reason"] for s in got.values()} == {"no C compiler ('no-such-compiler-xyz' not found)"}
    assert {s["compiler"] for s in got.values()} == {"no-such-compiler-xyz"}
    assert {s["compiler_version"] for s in got.values()} == {None}


def test_compiler_command_and_cache_folder_follow_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("CC", "clang-17")
    assert build.compiler_command() == "clang-17"
    monkeypatch.delenv("CC")
    assert build.compiler_command() == "cc"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    folder = build.cache_dir()
    assert folder == tmp_path / "cache" / "curvature-subspace" and folder.is_dir() and os.access(folder, os.W_OK)
    assert build.FLAGS[:3] == ("-O3", "-mavx2", "-mfma") and "-ffp-contract=off" in build.FLAGS


@pytest.mark.parametrize("n, threads, unit, expected", [
    (10, 3, 1, [(0, 3), (3, 7), (7, 10)]),
    (10, 3, 8, [(0, 8), (8, 10)]),                         # two lane groups: two ranges, the second ragged
    (5, 8, 1, [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5)]),   # never more ranges than groups
    (0, 4, 1, [(0, 0)]),
])
def test_split_gives_contiguous_ranges_one_per_thread(n, threads, unit, expected):
    assert build.split(n, threads, unit) == expected


@pytest.mark.parametrize("n, threads, unit", [(37, 4, 8), (1000, 3, 1), (17, 2, 8), (64, 16, 8)])
def test_split_covers_every_index_once_from_multiples_of_the_unit(n, threads, unit):
    parts = build.split(n, threads, unit)
    assert parts[0][0] == 0 and parts[-1][1] == n and len(parts) <= threads
    assert all(a < b for a, b in parts) and all(b == c for (_, b), (c, _) in zip(parts, parts[1:]))
    assert all(a % unit == 0 for a, _ in parts)


def test_run_returns_each_range_result_in_order():
    parts = build.split(100, 4, 8)
    assert build.run(parts, lambda a, b: list(range(a, b))) == [list(range(a, b)) for a, b in parts]
    assert sum(build.run(parts, lambda a, b: sum(range(a, b)))) == sum(range(100))
    assert build.run([(2, 5)], lambda a, b: b - a) == [3]                  # one range: called here, no pool
