import re

import pytest

from sidrec.config import Config, load_config, save_config
from sidrec.errors import SidrecError


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

    from sidrec.config import _EXTRA_SECTIONS, _UNCHECKED, _leaves, _rule_for

    cfg = load_config()
    leaves = _leaves(cfg) + [kv for name, cls in _EXTRA_SECTIONS.items() for kv in _leaves(cls(), f"{name}.")]
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


def test_choice_rules_match_the_code_that_consumes_them():
    from sidrec.config import _rule_for
    from sidrec.models.acerec import MERGES
    from sidrec.models.diger import DECAYS
    from sidrec.sid.base import _MODULES
    from sidrec.sid.rqvae import ESTIMATORS, NOISES

    assert set(_rule_for("acerec.merge")) == set(MERGES)
    assert set(_rule_for("diger.decay")) == set(DECAYS)
    assert set(_rule_for("diger.noise")) == {*NOISES, "none"}
    assert set(_rule_for("tokenizer.estimator")) == set(ESTIMATORS)
    assert set(_rule_for("tokenizer.kind")) == set(_MODULES)


def test_template_override_that_yaml_reads_as_a_mapping_says_to_quote():
    with pytest.raises(SidrecError, match="quote") as exc:
        load_config(None, ["features.template={title}"])
    assert "features.template=\"{title}\"" in str(exc.value)
    assert load_config(None, ['features.template="{title}"']).features.template == "{title}"


def test_run_dir_knows_the_tokenizer_stage_file_names():
    from sidrec.recipes.tiger import SID_SOURCE_FILE
    from sidrec.runs import TOKENIZER_STAGE
    from sidrec.sid.pipeline import PLOT_FILE, REPORT_FILE, SID_TABLE_FILE, TOKENIZER_DIR

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


def test_every_shipped_config_loads():
    """A shipped config that no longer parses (a renamed key, a bad value) fails here, not in a user's run."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "configs"
    paths = sorted(root.rglob("*.yaml"))
    assert len(paths) > 10
    for p in paths:
        cfg = load_config([p])
        assert isinstance(cfg, Config), p
    rpg = load_config([root / "beauty" / "acerec-rpg.yaml"]).section("acerec")
    assert (rpg.merge, rpg.n_latents, rpg.intent_token, rpg.isa, rpg.head) == ("mean", 1, False, False, "residual")


def test_every_documented_choice_passes_the_schema():
    """The schema's choice lists must not lag behind what the code accepts (dream.negatives=family_far was
    implemented and documented but refused by the config check)."""
    import sidrec.dream.config  # noqa: F401  (registers the dream section)

    for neg in ("family", "family_far", "none"):
        assert load_config(None, [f"dream.negatives={neg}"]).section("dream").negatives == neg
    with pytest.raises(SidrecError, match="dream.negatives"):
        load_config(None, ["dream.negatives=far"])
    for key, ok in (("dream.cart.space", "base"), ("dream.cart.levels", "parallel"), ("dream.cart.nce_positive", "next")):
        assert getattr(load_config(None, [f"{key}={ok}"]).section("dream").cart, key.split(".")[-1]) == ok
        with pytest.raises(SidrecError, match=key):
            load_config(None, [f"{key}=nope"])
