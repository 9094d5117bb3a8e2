import pytest

from sidrec.config import Config, load_config, save_config
from sidrec.errors import SidrecError


def test_defaults_and_overrides():
    cfg = load_config(None, ["train.lr=3e-4", "eval.ks=[1,5]", "method=sasrec", "train.bf16=true"])
    assert isinstance(cfg, Config)
    assert cfg.train.lr == pytest.approx(3e-4)
    assert cfg.eval.ks == [1, 5]
    assert cfg.train.bf16 == "true"
    assert cfg.train.epochs == Config().train.epochs


def test_unknown_key_names_closest():
    with pytest.raises(SidrecError, match="did you mean 'train.lr'"):
        load_config(None, ["train.lrr=1e-3"])
    with pytest.raises(SidrecError, match="unknown config key 'nope'"):
        load_config(None, ["nope=1"])


def test_wrong_type_is_an_error():
    with pytest.raises(SidrecError, match="train.epochs.*integer"):
        load_config(None, ["train.epochs=ten"])
    with pytest.raises(SidrecError, match="true/false"):
        load_config(None, ["train.progress=maybe"])
    with pytest.raises(SidrecError, match="one of auto, true, false"):
        load_config(None, ["train.bf16=maybe"])
    with pytest.raises(SidrecError, match="key.sub=value"):
        load_config(None, ["train.epochs"])


def test_yaml_layers_and_roundtrip(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text("train:\n  lr: 0.01\n  epochs: 3\n")
    child = tmp_path / "child.yaml"
    child.write_text("base: base.yaml\ntrain:\n  epochs: 5\ndata:\n  max_len: 20\n")
    cfg = load_config([child], ["train.epochs=7"])
    assert (cfg.train.lr, cfg.train.epochs, cfg.data.max_len) == (0.01, 7, 20)
    save_config(cfg, tmp_path / "resolved.yaml")
    again = load_config([tmp_path / "resolved.yaml"])
    assert again.train.epochs == 7 and again.data.max_len == 20


def test_bad_yaml_reports_file_and_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  lr: [1, 2\n")
    with pytest.raises(SidrecError, match=r"bad.yaml:\d+: invalid YAML"):
        load_config([bad])
    bad.write_text("train:\n  lrate: 1\n")
    with pytest.raises(SidrecError, match="train.lrate"):
        load_config([bad])
