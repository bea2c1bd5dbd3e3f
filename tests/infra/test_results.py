"""Atomic result files, completion markers, parameter-exact reuse, provenance."""
import json

import pytest
import torch

from lib.infra.results import MissingResultError, ResultStore, atomic_write_bytes


def test_save_load_roundtrip_and_meta(tmp_store):
    params = {"a": 1, "seed": 3, "sigma": [0.1, 0.2]}
    tmp_store.save("stage", "r1", {"x": torch.arange(4)}, params, ext="pt", seconds=1.5, summary={"v": 2.0})
    res = tmp_store.load("stage", "r1")
    assert torch.equal(res.payload["x"], torch.arange(4))
    assert res.meta["params"] == params and res.meta["seed"] == 3 and res.meta["seconds"] == 1.5
    assert set(res.meta["provenance"]) >= {"git", "versions", "platform"}
    assert tmp_store.is_done("stage", "r1", params)
    assert not tmp_store.is_done("stage", "r1", {**params, "a": 2})
    assert tmp_store.names("stage") == ["r1"]


def test_corrupt_or_partial_payload_is_not_done(tmp_store):
    tmp_store.save("s", "r", {"v": 1}, {"p": 1})
    payload = tmp_store.root / "s" / "r.json"
    payload.write_text('{"v": 2}\n')
    assert tmp_store.meta("s", "r") is None and not tmp_store.is_done("s", "r", {"p": 1})
    (tmp_store.root / "s" / "r.meta.json").write_text("{truncated")
    assert tmp_store.meta("s", "r") is None
    with pytest.raises(MissingResultError, match="run notebook 0X_make.py first"):
        tmp_store.load("s", "r", made_by="0X_make.py")


def test_payload_without_marker_is_ignored(tmp_store):
    atomic_write_bytes(tmp_store.root / "s" / "orphan.json", b"{}")
    assert tmp_store.names("s") == [] and tmp_store.meta("s", "orphan") is None


def test_atomic_write_leaves_no_temporary_files(tmp_path):
    atomic_write_bytes(tmp_path / "f.bin", b"abc")
    atomic_write_bytes(tmp_path / "f.bin", b"defg")
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]
    assert (tmp_path / "f.bin").read_bytes() == b"defg"


def test_json_payload_is_plain(tmp_store):
    tmp_store.save("s", "j", {"t": torch.tensor([1.5, 2.5]), "n": float("nan")}, {})
    assert json.loads((tmp_store.root / "s" / "j.json").read_text()) == {"t": [1.5, 2.5], "n": "nan"}


def test_bad_profile_name():
    with pytest.raises(ValueError, match="plain name"):
        ResultStore("a/b")
