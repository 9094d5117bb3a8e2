"""Every config key is described, in one place (the dataclasses' comments), and docs/config.md shows it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import yaml

from sidrec.config import Config, _all_keys, load_config, render_config
from sidrec.config_docs import DOC_PATH, describe, descriptions, field_comments, render_markdown

REPO = Path(__file__).resolve().parents[1]


def test_every_key_has_a_description():
    about = descriptions()
    assert list(about) == _all_keys(Config)
    missing = [key for key in _all_keys(Config) if not about[key].strip()]
    assert not missing, f"describe these keys in a comment above or beside their field: {missing}"


def test_comments_above_beside_and_headings_are_read():
    @dataclasses.dataclass
    class Example:
        """An example section."""

        # the first line
        # and the second
        a: int = 1  # and the end of the line
        b: int = 2

        # -- group --
        c: int = 3  # under a heading

    about = field_comments(Example)
    assert about == {"a": "the first line and the second and the end of the line", "b": "",
                     "c": "[group] under a heading"}


def test_docs_config_md_is_generated_from_the_source():
    assert DOC_PATH == REPO / "docs" / "config.md"
    assert DOC_PATH.read_text(encoding="utf-8") == render_markdown(), \
        "docs/config.md is out of date: run python -m sidrec.config_docs"
    text = DOC_PATH.read_text(encoding="utf-8")
    assert all(f"| `{key}` |" in text for key, _, _, section in describe() if not section)
    assert "(config.md)" in (REPO / "docs" / "README.md").read_text(encoding="utf-8")


def test_config_show_explain_describes_every_key_and_still_loads(tmp_path):
    cfg = load_config(None, ["method=tiger", "train.epochs=3"])
    text = render_config(cfg, descriptions())
    assert "# [rqvae] passes over the catalogue while fitting the RQ-VAE" in text  # a description, as a comment
    assert "epochs: 3  # default: 200" in text and "seed: 42  # default: 42" in text
    (tmp_path / "c.yaml").write_text(text)
    assert load_config([tmp_path / "c.yaml"]) == cfg  # still a config file that gives the same settings
    assert yaml.safe_load(text)["train"]["epochs"] == 3
