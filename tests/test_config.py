"""Profiles are validated before compute, with messages naming the parameter and the allowed values."""
import pytest
import yaml

from lib.infra import config
from lib.infra.runner import main as runner_main


@pytest.mark.parametrize("profile", ["smoke", "paper"])
def test_shipped_profiles_are_valid(profile):
    cfg = config.load_profile(profile)
    assert cfg["common"]["profile"] == profile
    params = config.stage_parameters(cfg, "train")
    config.check_parameters("train", params)


def _write(tmp_path, monkeypatch, text):
    (tmp_path / "bad.yaml").write_text(text)
    monkeypatch.setattr(config, "CONFIG_DIR", tmp_path)


BASE = yaml.safe_load((config.CONFIG_DIR / "smoke.yaml").read_text())


@pytest.mark.parametrize("change, match", [
    ({"common": {"datasets": ["cifar10"]}}, r"common.datasets\[0\]='cifar10'.*one of \['fashion_mnist', 'mnist'\]"),
    ({"common": {"models": ["vgg"]}}, r"common.models\[0\]='vgg'.*one of \['mlp1', 'mlp2', 'cnn'\]"),
    ({"common": {"n_train": 70000}}, r"common.n_train=70000.*\[2, 60000\]"),
    ({"common": {"device": "tpu"}}, r"common.device='tpu'.*one of \['cpu', 'cuda', 'auto'\]"),
    ({"train": {"epochs": 0}}, r"train.epochs=0"),
    ({"train": {"lr": -0.1}}, r"train.lr=-0.1.*> 0"),
    ({"train": {"epoch": 3}}, r"unknown parameter train.epoch; allowed in train: \[.*'batch_size'.*'epochs'.*'lr'"),
    ({"trian": {"epochs": 3}}, r"unknown profile section 'trian'"),
    ({"monte_carlo": {"sigma": 0}}, r"monte_carlo.sigma=0.*> 0"),
    ({"monte_carlo": {"n_samples": 1}}, r"monte_carlo.n_samples=1.*\[2, inf\]"),
    ({"monte_carlo": {"distributions": ["cauchy"]}}, r"distributions\[0\]='cauchy'.*one of"),
    ({"monte_carlo": {"estimators": ["qmc"]}}, r"estimators\[0\]='qmc'.*one of"),
    ({"monte_carlo": {"D": 50}}, r"monte_carlo.D=50 exceeds spectrum.n_vectors=4"),
    ({"monte_carlo": {"dims": [1, 8]}}, r"monte_carlo.dims=8 exceeds spectrum.n_vectors=4"),
    ({"spectrum": {"n_vectors": 20}}, r"spectrum.n_vectors=20 must be <= spectrum.k_top=10"),
    ({"common": {"models": ["cnn"]}, "spectrum": {"k_top": 5000, "n_vectors": 4}},
     r"spectrum.k_top=5000 must be smaller than the number of parameters of cnn \(4266\)"),
    ({"convergence": {"pilot_k0": 1000}}, r"convergence.pilot_k0=1000 must be smaller than n_train=1000"),
    ({"projection": {"k_small": 999}}, r"projection.k_small=999 must be <= n_train - 2 = 998"),
])
def test_bad_profiles_fail_fast(tmp_path, monkeypatch, change, match):
    cfg = {k: dict(v) for k, v in BASE.items()}
    for section, kv in change.items():
        cfg.setdefault(section, {}).update(kv)
    _write(tmp_path, monkeypatch, yaml.safe_dump(cfg))
    with pytest.raises(ValueError, match=match):
        config.load_profile("bad")


def test_malformed_yaml_and_unknown_profile(tmp_path, monkeypatch):
    _write(tmp_path, monkeypatch, "common: [unclosed\n")
    with pytest.raises(ValueError, match="bad.yaml is not valid YAML"):
        config.load_profile("bad")
    with pytest.raises(ValueError, match="unknown profile 'nope'"):
        config.load_profile("nope")


def test_overrides_are_validated():
    cfg = config.load_profile("smoke", {"train.epochs": 3})
    assert cfg["train"]["epochs"] == 3
    with pytest.raises(ValueError, match="train.epochs=-3"):
        config.load_profile("smoke", {"train.epochs": -3})


def test_runner_rejects_bad_parameters_before_running(capsys):
    assert runner_main(["--profile", "smoke", "--set", "common.n_train=0"]) == 2
    assert "common.n_train=0" in capsys.readouterr().err
    assert runner_main(["--profile", "smoke", "--only", "99_nothing"]) == 2


def test_spectrum_max_seeds_is_validated_and_applied():
    from lib.stages.pipeline import spectrum_seeds

    cfg = config.load_profile("smoke", {"common.spectrum_max_seeds": {"cnn": 1}, "common.seeds": [0, 1, 2]})
    caps = cfg["common"]["spectrum_max_seeds"]
    assert spectrum_seeds("cnn", [0, 1, 2], caps) == [0] and spectrum_seeds("mlp2", [0, 1, 2], caps) == [0, 1, 2]
    with pytest.raises(ValueError, match=r"spectrum_max_seeds key='vgg'.*one of"):
        config.load_profile("smoke", {"common.spectrum_max_seeds": {"vgg": 1}})
    with pytest.raises(ValueError, match=r"spectrum_max_seeds\[cnn\]=0.*integer in \[1"):
        config.load_profile("smoke", {"common.spectrum_max_seeds": {"cnn": 0}})


def test_check_parameters_reads_a_notebook_namespace():
    ns = {"profile": "x", "epochs": 2, "batch_size": 8, "lr": 0.1, "seeds": [0], "np": object(), "__name__": "m"}
    assert config.check_parameters("train", ns) == {"profile": "x", "seeds": [0], "epochs": 2, "batch_size": 8,
                                                    "lr": 0.1}
    with pytest.raises(ValueError, match=r"does not define parameter\(s\) \['lr'\]"):
        config.check_parameters("train", {k: v for k, v in ns.items() if k != "lr"})
    with pytest.raises(ValueError, match=r"train.epochs=0"):
        config.check_parameters("train", {**ns, "epochs": 0})
