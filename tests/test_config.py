import re
from pathlib import Path

import pytest

from sidrec.config import Config, load_config, save_config
from sidrec.errors import SidrecError

REPO = Path(__file__).resolve().parents[1]


def test_defaults_and_overrides():
    cfg = load_config(None, ["train.lr=3e-4", "eval.ks=[1,10]", "method=sasrec", "train.bf16=true"])
    assert isinstance(cfg, Config)
    assert cfg.train.lr == pytest.approx(3e-4)
    assert cfg.eval.ks == [1, 10]
    assert cfg.train.bf16 == "true"
    assert cfg.train.epochs == Config().train.epochs


def test_unknown_key_names_closest():
    with pytest.raises(SidrecError, match="did you mean 'train.lr'"):
        load_config(None, ["train.lrr=1e-3"])
    with pytest.raises(SidrecError, match="unknown config key 'nope'"):
        load_config(None, ["nope=1"])


def test_a_removed_setting_still_loads_runs_that_used_what_the_code_now_does(tmp_path):
    """A run's config.yaml saves every key: runs trained while ``acerec.head`` existed name it. The value the code
    now always uses is read as nothing; the removed value is one line naming the key, not "unknown key"."""
    saved = tmp_path / "config.yaml"
    saved.write_text("method: acerec\nacerec:\n  head: residual\n  d_model: 96\n")
    assert load_config([saved]).acerec.d_model == 96
    saved.write_text("method: acerec\nacerec:\n  head: linear\n")
    with pytest.raises(SidrecError, match="'acerec.head: linear' was removed.*docs/acerec.md"):
        load_config([saved])
    with pytest.raises(SidrecError, match="unknown config key 'acerec.heads'"):
        load_config(None, ["acerec.heads=residual"])


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


def test_every_numeric_key_of_every_section_has_a_range_rule():
    """New settings must say what values make sense (issue #21); seeds and 'negative = derive' keys are exempt."""
    import dataclasses

    from sidrec.config import _UNCHECKED, _leaves, _rule_for

    cfg = load_config()
    leaves = _leaves(cfg)
    numeric = [k for k, v in leaves if isinstance(v, int | float) and not isinstance(v, bool)
               or isinstance(v, list) and v and isinstance(v[0], int | float)]
    assert len(numeric) > 80
    missing = [k for k in numeric if _rule_for(k) is None and k not in _UNCHECKED]
    assert not missing, f"no value rule for {missing}"
    assert dataclasses.is_dataclass(cfg)


@pytest.mark.parametrize(("override", "needle"), [
    ("train.batch_size=0", "train.batch_size': must be > 0"), ("data.max_len=-1", "data.max_len"),
    ("train.min_lr_ratio=1.5", "in [0, 1]"), ("tiger.dropout=1", "tiger.dropout"),
    ("dream.cart.queue_size=0", "dream.cart.queue_size"), ("tokenizer.codebook_sizes=[256,0]", "every value"),
    ("acerec.merge=max", "acerec.merge"), ("diger.decay=sdu", "did you mean 'sdud'"), ("train.lr=nan", "train.lr"),
    ("method=tigre", "did you mean 'tiger'"),
])
def test_values_are_checked_when_the_config_is_read(override, needle):
    with pytest.raises(SidrecError, match=re.escape(needle)):
        load_config(None, [override])


def test_edge_values_that_mean_off_are_accepted():
    cfg = load_config(None, ["train.eval_users=0", "data.kcore=0", "tokenizer.pca_dim=0", "tiger.user_buckets=0",
                             "train.weight_decay=0", "dream.lambda_kd=-1", "sasrec.dropout=0"])
    assert cfg.train.eval_users == 0


def test_choice_fields_match_the_code_that_consumes_them():
    """Every choice setting is a ``Literal`` on its field (one mechanism), equal to what the code accepts."""
    import typing

    from sidrec.config import Config
    from sidrec.methods.acerec.config import MERGES
    from sidrec.methods.diger.config import DECAYS
    from sidrec.methods.diger.config import NOISES as DIGER_NOISES
    from sidrec.sid.base import _MODULES
    from sidrec.sid.rqvae import ESTIMATORS, NOISES

    def choices(key: str) -> set[str]:
        cls: type = Config
        *path, last = key.split(".")
        for part in path:
            cls = typing.get_type_hints(cls)[part]
        return set(typing.get_args(typing.get_type_hints(cls)[last]))

    assert choices("acerec.merge") == set(MERGES)
    assert choices("diger.decay") == set(DECAYS)
    assert choices("diger.noise") == {*NOISES, "none"} and set(DIGER_NOISES) == set(NOISES)
    assert choices("tokenizer.estimator") == set(ESTIMATORS)
    assert choices("tokenizer.kind") == set(_MODULES)
    with pytest.raises(SidrecError, match="did you mean 'rqvae'"):
        load_config(None, ["tokenizer.kind=rqvea"])


def test_template_override_that_yaml_reads_as_a_mapping_says_to_quote():
    with pytest.raises(SidrecError, match="quote") as exc:
        load_config(None, ["features.template={title}"])
    assert "features.template=\"{title}\"" in str(exc.value)
    assert load_config(None, ['features.template="{title}"']).features.template == "{title}"


def test_run_dir_knows_the_tokenizer_stage_file_names():
    from sidrec.runs import TOKENIZER_STAGE
    from sidrec.sid.pipeline import PLOT_FILE, REPORT_FILE, SID_TABLE_FILE, TOKENIZER_DIR
    from sidrec.sid.stage import SID_SOURCE_FILE

    items = SID_TABLE_FILE.replace(".parquet", ".items.parquet")  # SIDTable.save's item-id side file
    assert TOKENIZER_STAGE == (SID_SOURCE_FILE, SID_TABLE_FILE, items, TOKENIZER_DIR, REPORT_FILE, PLOT_FILE)


def test_unset_tokenizer_seed_is_the_run_seed_when_a_run_is_resumed():
    """run_tokenize writes the resolved tokenizer seed into the saved config; resuming with the settings that
    produced it (seed unset) must not read as a change, while a different explicit seed must."""
    from sidrec.runs import settings_diff

    base = ["seed=42", "tokenizer.kind=rqkmeans"]
    saved = load_config(None, base + ["tokenizer.seed=42"])
    assert settings_diff(saved, load_config(None, base)) == []
    assert any(d.startswith("tokenizer.seed") for d in settings_diff(saved, load_config(None, base + ["tokenizer.seed=7"])))
    assert any(d.startswith("tokenizer.seed") for d in settings_diff(saved, load_config(None, ["seed=43"])))


def _shipped_configs(root):
    """configs/: the data files (configs/data/*.yaml) and every method setting with the data files it is
    composed with (the -small settings with the synthetic data, the others with the three Amazon datasets)."""
    paths = sorted(root.rglob("*.yaml"))
    data = sorted((root / "data").glob("*.yaml"))
    top = [p for p in sorted(root.glob("*.yaml")) if p.name != "base.yaml"]
    assert sorted([*data, *top, root / "base.yaml"]) == paths, "configs/ holds only base.yaml, data/ and methods"
    synthetic = [d for d in data if d.stem == "synthetic"]
    amazon = [d for d in data if d.stem != "synthetic"]
    return data, {m: synthetic if m.stem.endswith("-small") else amazon for m in top}


def test_every_shipped_config_loads():
    """A shipped config that no longer parses (a renamed key, a bad value) fails here, not in a user's run."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "configs"
    data, methods = _shipped_configs(root)
    assert {p.stem for p in data} == {"beauty", "sports", "synthetic", "toys"}
    assert len(methods) >= 12
    for d in data:
        assert isinstance(load_config([d]), Config), d
    for m, on in methods.items():
        # a method setting names no data (it is composed after a data file: -c configs/data/X.yaml -c M.yaml)
        assert load_config([m]).data.path == Config().data.path, m
        for d in on:
            cfg = load_config([d, m])
            assert isinstance(cfg, Config) and cfg.data.path == load_config([d]).data.path, (d, m)
    rpg = load_config([root / "data" / "beauty.yaml", root / "acerec-rpg.yaml"]).acerec
    assert (rpg.merge, rpg.n_latents, rpg.intent_token, rpg.isa) == ("mean", 1, False, False)


def test_no_two_shipped_configs_are_identical_or_equivalent():
    """Each setting lives in one file: the 24 per-dataset copies (many byte-identical) became data files and
    method settings composed with -c. No two files under configs/ may be byte-identical, and no two method
    settings may give the same resolved config on the same data (a copy that differs only in comments)."""
    from pathlib import Path

    from sidrec.config import config_to_dict

    root = Path(__file__).resolve().parents[1] / "configs"
    seen: dict[bytes, Path] = {}
    for p in sorted(root.rglob("*.yaml")):
        assert p.read_bytes() not in seen, f"{p} is byte-identical to {seen.get(p.read_bytes())}"
        seen[p.read_bytes()] = p
    data, methods = _shipped_configs(root)
    resolved: dict[str, Path] = {}
    for m, on in methods.items():
        key = repr(config_to_dict(load_config([on[0], m])))
        assert key not in resolved, f"{m} resolves to the same config as {resolved.get(key)}"
        resolved[key] = m
    dicts = [repr(config_to_dict(load_config([d]))) for d in data]
    assert len(set(dicts)) == len(data)


def test_every_documented_choice_passes_the_schema():
    """The schema's choice lists must not lag behind what the code accepts (dream.negatives=family_far was
    implemented and documented but refused by the config check)."""
    for neg in ("family", "family_far", "none"):
        assert load_config(None, [f"dream.negatives={neg}"]).dream.negatives == neg
    with pytest.raises(SidrecError, match="dream.negatives"):
        load_config(None, ["dream.negatives=far"])
    for key in ("dream.mode", "dream.cart.space", "dream.cart.levels", "dream.keep_base"):  # first designs: removed
        with pytest.raises(SidrecError, match="unknown config key"):
            load_config(None, [f"{key}=x"])


def test_ranges_sit_beside_their_fields_and_name_known_ranges():
    """One mechanism: every section's RANGES names its own fields and ranges the loader knows."""
    import dataclasses
    import typing

    from sidrec.config import _RANGE_TESTS, Config

    def sections(cls: type) -> list[type]:
        out = [cls]
        for t in typing.get_type_hints(cls).values():
            if dataclasses.is_dataclass(t):
                out += sections(t)
        return out

    for cls in sections(Config):
        ranges = getattr(cls, "RANGES", {})
        names = {f.name for f in dataclasses.fields(cls)}
        assert set(ranges) <= names, (cls.__name__, set(ranges) - names)
        assert set(ranges.values()) <= set(_RANGE_TESTS), (cls.__name__, set(ranges.values()) - set(_RANGE_TESTS))


def test_a_method_alone_gets_the_preset_of_the_device_it_trains_on(monkeypatch):
    """Issue #27: `method: tiger` with no other setting was the paper's encoder-decoder evaluated on every user
    (9 minutes an epoch on a 2-core CPU); `method: acerec` was 3-code RQ-KMeans IDs with the collision code
    ignored (63% tied top-10 slots). The unset keys now come from the measured preset of the device."""
    import sidrec.config as C

    monkeypatch.setattr(C, "gpu_visible", lambda: False)
    tiger = load_config(None, ["method=tiger"])
    assert tiger.size == "cpu"
    assert (tiger.tiger.arch, tiger.tiger.head_dim, tiger.tokenizer.kind, tiger.train.eval_users) == (
        "decoder", 32, "rqkmeans", 2000)
    acerec = load_config(None, ["method=acerec"])
    a, t = acerec.acerec, acerec.tokenizer
    assert (t.kind, t.subspaces, t.subspace_codes, a.collision_code) == ("opq", 32, 256, True)
    assert (a.merge, a.n_latents, a.intent_token, a.isa, a.d_model) == ("mean", 1, False, False, 128)
    diger = load_config(None, ["method=diger"])
    assert (diger.tiger.arch, diger.tokenizer.kind, diger.data.max_len) == ("decoder", "rqvae", 50)
    # a GPU (visible, or named by train.device) gives the paper's sizes
    assert load_config(None, ["method=tiger", "train.device=cuda"]).tiger.arch == "encdec"
    monkeypatch.setattr(C, "gpu_visible", lambda: True)
    paper = load_config(None, ["method=acerec"])
    assert (paper.size, paper.acerec.d_model, paper.train.batch_size) == ("paper", 448, 256)
    assert load_config(None, ["method=acerec", "train.device=cpu"]).acerec.d_model == 128
    # a key a file or an override names wins over the preset; size none is the schema's defaults
    assert load_config(None, ["method=tiger", "size=cpu", "tiger.arch=encdec"]).tiger.arch == "encdec"
    bare = load_config(None, ["method=tiger", "size=none"])
    assert (bare.size, bare.tiger, bare.train) == ("none", Config().tiger, Config().train)
    # methods without a preset are the same on every device
    assert load_config(None, ["method=sasrec"]).sasrec == Config().sasrec


def test_a_saved_config_keeps_its_resolved_size_on_another_machine(tmp_path, monkeypatch):
    """A run trained on a CPU and resumed on a GPU (or the reverse) must not change its model: the saved config
    holds every key and the size it resolved to."""
    import sidrec.config as C

    monkeypatch.setattr(C, "gpu_visible", lambda: False)
    cfg = load_config(None, ["method=tiger"])
    save_config(cfg, tmp_path / "config.yaml")
    monkeypatch.setattr(C, "gpu_visible", lambda: True)
    again = load_config([tmp_path / "config.yaml"])
    assert again == cfg and again.size == "cpu"


def test_gpu_detection_without_torch_reads_torchs_build_and_the_driver(tmp_path, monkeypatch):
    """A machine with an NVIDIA driver but a CPU-only torch trains on the CPU, so it must get the CPU preset."""
    import importlib.util
    import sys
    from types import SimpleNamespace

    import sidrec.config as C

    gpus = tmp_path / "proc" / "gpus"
    (gpus / "0000:01:00.0").mkdir(parents=True)
    pkg = tmp_path / "torch"
    pkg.mkdir()
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: SimpleNamespace(submodule_search_locations=[str(pkg)]))
    real_path = C.Path
    monkeypatch.setattr(C, "Path", lambda p="", *a: real_path(str(gpus)) if p == "/proc/driver/nvidia/gpus"
                        else real_path(p, *a))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    (pkg / "version.py").write_text("__version__ = '2.13.0+cpu'\ncuda: Optional[str] = None\n")
    assert C.gpu_visible() is False
    (pkg / "version.py").write_text("__version__ = '2.13.0'\ncuda: Optional[str] = '12.8'\n")
    assert C.gpu_visible() is True
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert C.gpu_visible() is False


# ------------------------------------------------------------------------------- round three (issue 59)
@pytest.mark.parametrize(("text", "key", "lines"), [
    ("train:\n  epochs: 1\ndata:\n  path: synthetic\ntrain:\n  lr: 0.01\n", "train", (1, 5)),
    ("train:\n  epochs: 1\n  lr: 0.1\n  epochs: 2\n", "train.epochs", (2, 4)),
    ("seed: 1\nseed: 1\n", "seed", (1, 2)),
])
def test_a_key_given_twice_is_refused_with_both_lines(tmp_path, text, key, lines):
    """YAML keeps the last of two equal keys: a section written twice lost the first block (epochs 1 -> 200)."""
    (tmp_path / "c.yaml").write_text(text)
    with pytest.raises(SidrecError, match=rf"c\.yaml:{lines[1]}: duplicate key '{key}' \(first at line {lines[0]}\)"):
        load_config([tmp_path / "c.yaml"])
    (tmp_path / "top.yaml").write_text("base: c.yaml\n")  # in a base file too
    with pytest.raises(SidrecError, match=rf"c\.yaml:{lines[1]}: duplicate key"):
        load_config([tmp_path / "top.yaml"])


def test_the_same_key_in_two_files_or_two_sections_is_no_duplicate(tmp_path):
    (tmp_path / "a.yaml").write_text("train:\n  epochs: 1\n")
    (tmp_path / "b.yaml").write_text("train:\n  epochs: 2\ntokenizer:\n  epochs: 3\n")
    cfg = load_config([tmp_path / "a.yaml", tmp_path / "b.yaml"])
    assert (cfg.train.epochs, cfg.tokenizer.epochs) == (2, 3)


def test_every_config_of_the_repository_loads_without_duplicate_keys():
    from sidrec.config import PRESETS, _read_yaml

    files = sorted((REPO / "configs").rglob("*.yaml")) + sorted(PRESETS.glob("*.yaml"))
    assert files
    for f in files:
        _read_yaml(f, set())


@pytest.mark.parametrize("override", ["seed=-1", "seed=4294967296", "data.synthetic_seed=-3", "tokenizer.seed=-1"])
def test_seeds_outside_numpy_range_are_refused(override):
    """np.random.seed takes 0 .. 2^32-1; a seed outside it was a traceback once training started."""
    with pytest.raises(SidrecError, match=rf"'{override.split('=')[0]}': must be in \[0, 4294967295\]"):
        load_config(None, [override])
    assert load_config(None, ["seed=4294967295"]).seed == 4294967295


@pytest.mark.parametrize("override", ["train.threads=99999999999999999999", "sasrec.d_model=1e30",
                                      "eval.ks=[10, 99999999999999999999]"])
def test_integers_beyond_64_bits_are_refused(override):
    with pytest.raises(SidrecError, match=rf"'{override.split('=')[0]}': expected an integer of at most 64 bits"):
        load_config(None, [override])
