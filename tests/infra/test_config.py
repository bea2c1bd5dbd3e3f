"""Profiles: typed sections with one declaration per parameter, validated once with every error reported."""
import dataclasses

import pytest
import yaml

from lib.infra import config
from lib.infra.runner import main as runner_main


@pytest.mark.parametrize("profile", ["smoke", "paper"])
def test_shipped_profiles_are_valid(profile):
    cfg = config.load_profile(profile)
    assert cfg.common.profile == profile
    assert isinstance(cfg.section("monte_carlo"), config.MonteCarlo)


def test_smoke_profile_is_the_defaults_and_paper_lists_changes():
    smoke = config.load_profile("smoke")
    for stage in config.STAGES:
        assert dataclasses.asdict(smoke.section(stage)) == config.defaults(stage)
    paper = config.load_profile("paper")
    assert paper.section("monte_carlo").sigma == 1.0 and paper.section("monte_carlo").D == 10
    assert paper.stage("projection")[0].models == ["mlp2"] and paper.common.models == ["mlp1", "mlp2", "cnn"]
    assert paper.section("train").batch_size == 64   # default, not repeated in paper.yaml


def test_every_field_has_a_rule_and_help():
    for section, cls in config.SECTIONS.items():
        for f in dataclasses.fields(cls):
            assert callable(f.metadata["rule"]) and f.metadata["doc"], f"{section}.{f.name}"
            default = config.defaults(section)[f.name]
            assert f.metadata["rule"](f"{section}.{f.name}", default) == default   # defaults obey their rule


def _write(tmp_path, monkeypatch, text):
    (tmp_path / "bad.yaml").write_text(text)
    monkeypatch.setattr(config, "CONFIG_DIR", tmp_path)


@pytest.mark.parametrize("change, match", [
    ({"common": {"datasets": ["cifar10"]}}, r"common.datasets\[0\]='cifar10'.*one of \['fashion_mnist', 'mnist'\]"),
    ({"common": {"models": ["vgg"]}}, r"common.models\[0\]='vgg'.*one of \['mlp1', 'mlp2', 'cnn'\]"),
    ({"common": {"n_train": 70000}}, r"common.n_train=70000.*\[2, 60000\]"),
    ({"common": {"device": "tpu"}}, r"common.device='tpu'.*one of \['cpu', 'cuda', 'auto'\]"),
    ({"train": {"epochs": 0}}, r"train.epochs=0"),
    ({"train": {"lr": -0.1}}, r"train.lr=-0.1.*\(0, inf\]"),
    ({"train": {"lr": float("inf")}}, r"train.lr=inf.*finite"),
    ({"train": {"lr": "fast"}}, r"train.lr='fast'.*finite number"),
    ({"train": {"epoch": 3}}, r"unknown parameter train.epoch; did you mean 'epochs'\?"),
    ({"trian": {"epochs": 3}}, r"unknown profile section 'trian'; did you mean 'train'\?"),
    ({"monte_carlo": {"sigma": 0}}, r"monte_carlo.sigma=0.*\(0, inf\]"),
    ({"monte_carlo": {"n_samples": 1}}, r"monte_carlo.n_samples=1.*\[2, inf\]"),
    ({"monte_carlo": {"distributions": ["cauchy"]}}, r"distributions\[0\]='cauchy'.*one of"),
    ({"monte_carlo": {"estimators": ["qmc"]}}, r"estimators\[0\]='qmc'.*one of"),
    ({"monte_carlo": {"D": 50}}, r"monte_carlo.D=50 exceeds spectrum.n_vectors=4"),
    ({"monte_carlo": {"dims": [1, 8]}}, r"monte_carlo.dims=8 exceeds spectrum.n_vectors=4"),
    ({"spectrum": {"n_vectors": 20}}, r"spectrum.n_vectors=20 must be <= spectrum.k_top=10"),
    ({"common": {"models": ["cnn"]}, "spectrum": {"k_top": 5000, "n_vectors": 4}},
     r"spectrum.k_top=5000 must be smaller than the number of parameters of cnn \(4266\)"),
    ({"convergence": {"pilot_sizes": [200, 1000]}},
     r"convergence.pilot_sizes contains 1000, which must be smaller than n_train=1000"),
    ({"convergence": {"learning_sizes": [100, 200, 400]}}, r"learning_sizes=\[100, 200, 400\] needs at least 4"),
    ({"projection": {"k_small": 999}}, r"projection.k_small=999 must be <= n_train - 2 = 998"),
    ({"projection": {"models": ["vgg"]}}, r"projection.models\[0\]='vgg'.*one of"),
])
def test_bad_profiles_fail_fast(tmp_path, monkeypatch, change, match):
    cfg = {"common": {"profile": "bad"}}
    for section, kv in change.items():
        cfg.setdefault(section, {}).update(kv)
    _write(tmp_path, monkeypatch, yaml.safe_dump(cfg))
    with pytest.raises(config.ProfileError, match=match):
        config.load_profile("bad")


def test_all_errors_are_reported_at_once(tmp_path, monkeypatch):
    _write(tmp_path, monkeypatch, "train: {epochs: 0, lr: -1}\nmonte_carlo: {sigma: 0}\nfigurs: {}\n")
    with pytest.raises(config.ProfileError) as info:
        config.load_profile("bad")
    text = "\n".join(info.value.errors)
    assert len(info.value.errors) == 4, text
    for part in ("train.epochs=0", "train.lr=-1", "monte_carlo.sigma=0", "did you mean 'figures'"):
        assert part in text


def test_numbers_in_scientific_notation_are_numbers(tmp_path, monkeypatch):
    _write(tmp_path, monkeypatch, "train: {lr: 1e-3}\nconvergence: {delta_grid: [1e-2, 1E-4]}\n")
    cfg = config.load_profile("bad")
    assert cfg.section("train").lr == 0.001 and cfg.section("convergence").delta_grid == [0.01, 0.0001]
    assert yaml.safe_load("lr: 1e-3")["lr"] == "1e-3"   # what plain YAML 1.1 would have read


def test_text_that_looks_like_a_number_gets_a_hint():
    with pytest.raises(config.ProfileError, match=r"read as the text '1e-3'"):
        config.validate({"train": {"lr": "1e-3"}})


def test_malformed_yaml_unknown_profile_and_non_mapping(tmp_path, monkeypatch):
    _write(tmp_path, monkeypatch, "common: [unclosed\n")
    with pytest.raises(config.ProfileError, match="bad.yaml is not valid YAML"):
        config.load_profile("bad")
    with pytest.raises(config.ProfileError, match="unknown profile 'nope'"):
        config.load_profile("nope")
    _write(tmp_path, monkeypatch, "- a\n- b\n")
    with pytest.raises(config.ProfileError, match="must be a YAML mapping"):
        config.load_profile("bad")


def test_cuda_without_gpu_fails_at_validation(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(config.ProfileError, match=r"common.device='cuda'.*is_available\(\) is False"):
        config.load_profile("smoke", {"common.device": "cuda"})


def test_overrides_are_validated():
    cfg = config.load_profile("smoke", {"train.epochs": 3})
    assert cfg.section("train").epochs == 3
    with pytest.raises(config.ProfileError, match="train.epochs=-3"):
        config.load_profile("smoke", {"train.epochs": -3})


def test_runner_rejects_bad_parameters_before_running(capsys):
    assert runner_main(["--profile", "smoke", "--set", "common.n_train=0"]) == 2
    assert "common.n_train=0" in capsys.readouterr().err
    assert runner_main(["--profile", "smoke", "--only", "99_nothing"]) == 2
    assert runner_main(["--profile", "smoke", "--set", "train.lr=[1"]) == 2
    assert "not valid YAML" in capsys.readouterr().err
    assert runner_main(["--profile", "smoke", "--set", "train.lr=1e-3", "--show"]) == 0
    assert "lr: 0.001" in capsys.readouterr().out


def test_spectrum_max_seeds_is_validated_and_applied():
    from lib.records.spectrum import spectrum_seeds

    cfg = config.load_profile("smoke", {"common.spectrum_max_seeds": {"cnn": 1}, "common.seeds": [0, 1, 2]})
    caps = cfg.common.spectrum_max_seeds
    assert spectrum_seeds("cnn", [0, 1, 2], caps) == [0] and spectrum_seeds("mlp2", [0, 1, 2], caps) == [0, 1, 2]
    with pytest.raises(config.ProfileError, match=r"spectrum_max_seeds key='vgg'.*one of"):
        config.load_profile("smoke", {"common.spectrum_max_seeds": {"vgg": 1}})
    with pytest.raises(config.ProfileError, match=r"spectrum_max_seeds\[cnn\]=0.*integer in \[1"):
        config.load_profile("smoke", {"common.spectrum_max_seeds": {"cnn": 0}})


def test_from_namespace_reads_a_notebook():
    ns = {"profile": "x", "device": "cpu", "datasets": ["mnist"], "models": ["mlp2"], "seeds": [3],
          "progress": False, "n_train": 500, "data_seed": 1, "workers": 3, "epochs": 2, "batch_size": 8, "lr": 0.1,
          "threads": 2, "np": object(), "__name__": "m"}
    common, train = config.from_namespace("train", ns)
    assert (common.profile, common.seeds, common.n_train, common.workers) == ("x", [3], 500, 3)
    assert train == config.Train(epochs=2, batch_size=8, lr=0.1, threads=2)
    with pytest.raises(config.ProfileError, match=r"does not define parameter\(s\) \['lr'\]"):
        config.from_namespace("train", {k: v for k, v in ns.items() if k != "lr"})
    with pytest.raises(config.ProfileError, match=r"train.epochs=0"):
        config.from_namespace("train", {**ns, "epochs": 0})


def test_stage_parameters_carry_only_what_the_stage_reads():
    params = config.stage_parameters(config.load_profile("paper"), "projection")
    assert params["models"] == ["mlp2"] and "n_train" not in params and "spectrum_max_seeds" not in params
    assert set(params) == set(config.COMMON_KEYS["projection"]) | set(config.fields_of("projection"))


def test_full_specification_flag_overrides_what_the_profile_trims(capsys):
    assert runner_main(["--profile", "paper", "--full-specification", "--show"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    for dotted, value in config.FULL_SPECIFICATION.items():
        section, key = dotted.split(".")
        assert shown[section][key] == value, dotted
    assert runner_main(["--profile", "paper", "--full-specification", "--set", "monte_carlo.n_samples=512",
                        "--show"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["monte_carlo"]["n_samples"] == 512       # --set wins


def test_the_paper_profile_is_the_full_specification():
    """configs/paper.yaml runs docs/specification.md section 7 in full: --full-specification changes nothing."""
    assert config.load_profile("paper") == config.load_profile("paper", dict(config.FULL_SPECIFICATION))
