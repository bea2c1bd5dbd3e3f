"""Every result records the machine it was computed on: CPU model and vector instruction set, torch's dispatched
CPU capability, the MKL / oneDNN builds and the environment variables that steer their numerics."""
import json
import platform
from pathlib import Path

import pytest
import torch

from lib.core import native
from lib.core.native import fused_cnn, order_sums
from lib.infra.results import NUMERIC_ENV, cpu_info, cpu_libraries, provenance


def test_provenance_names_the_cpu_and_its_libraries(tmp_store, monkeypatch):
    monkeypatch.setenv("MKL_CBWR", "COMPATIBLE")
    tmp_store.save("s", "r", {"v": 1}, {"p": 1})
    prov = json.loads((tmp_store.root / "s" / "r.meta.json").read_text())["provenance"]
    assert set(prov) >= {"cpu", "cpu_libraries", "numeric_env", "torch_threads", "machine", "native"}
    assert prov["native"] == native.status()
    assert set(prov["native"]) == {"fused_cnn", "order_sums"}
    assert prov["native"]["fused_cnn"]["built"] == fused_cnn.available()
    assert prov["native"]["order_sums"]["built"] == order_sums.available()
    assert set(prov["numeric_env"]) == set(NUMERIC_ENV) and prov["numeric_env"]["MKL_CBWR"] == "COMPATIBLE"
    libs = prov["cpu_libraries"]
    assert libs["aten_cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    if torch.backends.mkl.is_available():
        assert libs["mkl"] and libs["mkl"][0].isdigit()
    if torch.backends.mkldnn.is_available():
        assert libs["onednn"] and libs["onednn"][0].isdigit()


@pytest.mark.skipif(not Path("/proc/cpuinfo").is_file() or platform.machine() != "x86_64", reason="Linux x86-64")
def test_cpu_model_and_isa_flags_come_from_proc_cpuinfo():
    info = cpu_info()
    text = Path("/proc/cpuinfo").read_text()
    assert info["model"] and info["model"] in text
    flags = next(line for line in text.splitlines() if line.startswith("flags")).split(":", 1)[1].split()
    assert {"sse2"} <= set(info["isa_flags"]) <= set(flags)
    assert ("avx2" in info["isa_flags"]) == ("avx2" in flags)
    assert not {"fpu", "vme", "ht"} & set(info["isa_flags"])       # only vector instruction sets
    assert len(info["flags_sha256"]) == 16 and info["logical_cpus"] >= 1


def test_provenance_is_json_and_cheap():
    cpu_libraries.cache_clear()
    assert json.loads(json.dumps(provenance()))["cpu"] == cpu_info()
