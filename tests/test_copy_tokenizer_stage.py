"""copy_tokenizer_stage carries a fitted tokenizer stage into a run folder that does not exist yet."""

from pathlib import Path

from sidrec.runs import TOKENIZER_STAGE, copy_tokenizer_stage


def _stage(root: Path) -> Path:
    root.mkdir(parents=True)
    for name in TOKENIZER_STAGE:
        if name == "tokenizer":
            (root / name).mkdir()
            (root / name / "state.safetensors").write_bytes(b"x")
        else:
            (root / name).write_text(name)
    return root


def test_copy_into_new_folder(tmp_path: Path) -> None:
    src = _stage(tmp_path / "a")
    dst = tmp_path / "runs" / "b"  # neither the folder nor its parent exists
    copy_tokenizer_stage(src, dst)
    for name in TOKENIZER_STAGE:
        assert (dst / name).exists(), name
    assert (dst / "sid_table.parquet").read_text() == "sid_table.parquet"


def test_stage_without_source_record_is_not_carried(tmp_path: Path) -> None:
    src = _stage(tmp_path / "a")
    (src / "sid_table.source.json").unlink()
    dst = tmp_path / "b"
    copy_tokenizer_stage(src, dst)
    assert not dst.exists()
