"""Format readers: counts, time order, item text, detection, k-core, and error messages.

Every fixture under tests/fixtures/ encodes the same 13 interactions (4 users, 6 items) in its own
format, rows shuffled, with two of user 2's interactions sharing a timestamp. In canonical names:

    u1: i1 i2 i3 i4     u2: i2 i1 i3 (i2, i1 tie; file order decides)
    u3: i4 i2 i1 i5     u4: i6 i5

2-core filtering needs three rounds to settle: i6 goes (1 interaction), then u4 (left with 1), then
i5 (left with 1): 1 user, 2 items and 3 interactions removed. 3-core filtering removes everything.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sidrec.data.dataset import Dataset
from sidrec.data.formats import FORMATS, _module, amazon, detect_format, lcrec, load_dataset, recbole, tabular
from sidrec.errors import SidrecError

FIX = Path(__file__).parent / "fixtures"
CANON = {
    "u1": ["i1", "i2", "i3", "i4"], "u2": ["i2", "i1", "i3"],
    "u3": ["i4", "i2", "i1", "i5"], "u4": ["i6", "i5"],
}

# Per fixture: the format, how canonical user/item names are spelled in it, and what it is read with.
CASES = {
    "lcrec": ("lcrec", FIX / "lcrec", lambda u: str(int(u[1:]) - 1), lambda i: str(int(i[1:]) - 1)),
    "recbole": ("recbole", FIX / "recbole" / "atomic", lambda u: u, lambda i: i),
    # the .inter files hold indices (1.. for users and items); Toy.user2index / Toy.item2index give the original ids back
    "recbole_presplit": ("recbole", FIX / "recbole" / "presplit", lambda u: "A" + u[1:], lambda i: "B00" + i[1:]),
    "amazon2014": ("amazon", FIX / "amazon" / "2014", lambda u: "A" + u[1:], lambda i: "B00" + i[1:]),
    "amazon2018": ("amazon", FIX / "amazon" / "2018", lambda u: "A" + u[1:], lambda i: "B00" + i[1:]),
    "amazon2023": ("amazon", FIX / "amazon" / "2023", lambda u: "A" + u[1:], lambda i: "B00" + i[1:]),
    "tabular": ("tabular", FIX / "tabular", lambda u: u[1:], lambda i: "0" + i[1:] * 2),
}
# Single files each reader accepts in place of its folder.
FILES = {
    "lcrec": FIX / "lcrec" / "Toy.inter.json",
    "recbole": FIX / "recbole" / "atomic" / "Toy.inter",
    "recbole_presplit": FIX / "recbole" / "presplit" / "Toy.test.inter",
    "amazon2014": FIX / "amazon" / "2014" / "reviews_Toys_5.json.gz",
    "amazon2018": FIX / "amazon" / "2018" / "Toys_5.json.gz",
    "amazon2023": FIX / "amazon" / "2023" / "Toys.jsonl.gz",
    "tabular": FIX / "tabular" / "interactions.csv",
}


def by_id(ds: Dataset) -> dict[str, list[str]]:
    return {ds.user_ids[u]: [ds.item_ids[i] for i in ds.sequence(u)] for u in range(ds.n_users)}


def field(ds: Dataset, name: str, item: str) -> object:
    return ds.items[name][ds.item_ids.index(item)]


def read(case: str, kcore: int = 0, path: Path | None = None) -> Dataset:
    fmt, folder, _, _ = CASES[case]
    return _module(fmt).read(path or folder, name=case, kcore=kcore)


# ------------------------------------------------------------------------------------ all formats
@pytest.mark.parametrize("case", list(CASES))
def test_counts_and_time_order(case: str) -> None:
    _, _, uname, iname = CASES[case]
    ds = read(case)
    assert (ds.n_users, ds.n_items, ds.n_interactions) == (4, 6, 13)
    expected = {uname(u): [iname(i) for i in seq] for u, seq in CANON.items()}
    assert by_id(ds) == expected  # out-of-order rows sorted; the u2 tie keeps file order (i2 before i1)


@pytest.mark.parametrize("case", list(CASES))
def test_single_file_path_reads_the_same(case: str) -> None:
    assert by_id(read(case, path=FILES[case])) == by_id(read(case))


@pytest.mark.parametrize("case", list(CASES))
def test_detection_is_exclusive(case: str) -> None:
    fmt = CASES[case][0]
    for path in (CASES[case][1], FILES[case]):
        assert detect_format(path) == fmt
        claims = [f for f in FORMATS[1:] if _module(f).detect(path)]
        assert claims == [fmt], f"{path} is claimed by {claims}"


@pytest.mark.parametrize("case", list(CASES))
def test_kcore_iterates_until_stable(case: str) -> None:
    _, _, uname, iname = CASES[case]
    ds = read(case, kcore=2)
    assert (ds.n_users, ds.n_items, ds.n_interactions) == (3, 4, 10)
    rep = ds.filter_report
    assert rep is not None and rep.kcore == 2
    assert rep.rounds >= 3  # one pass would only drop i6
    assert (rep.users_removed, rep.items_removed, rep.interactions_removed) == (1, 2, 3)
    assert by_id(ds)[uname("u3")] == [iname(i) for i in ["i4", "i2", "i1"]]
    assert min(ds.lengths) >= 2


@pytest.mark.parametrize("case", list(CASES))
def test_kcore_that_removes_everything_is_an_error(case: str) -> None:
    with pytest.raises(SidrecError, match="no interactions left after 3-core"):
        read(case, kcore=3)


def test_load_dataset_entry_point() -> None:
    ds = load_dataset(FIX / "recbole" / "atomic", kcore=2)
    assert ds.n_interactions == 10 and ds.name == "atomic"


# ------------------------------------------------------------------------------------------- LC-Rec
def test_lcrec_items_and_order() -> None:
    ds = read("lcrec")
    assert by_id(ds)["2"] == ["3", "1", "0", "4"]  # list order kept, not sorted
    assert field(ds, "title", "5") == "Jigsaw & Glue"
    assert field(ds, "brand", "3") is None  # empty string -> missing
    assert field(ds, "description", "2") is None
    assert "9" not in ds.item_ids  # described but never interacted with


def test_lcrec_malformed_json_names_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "X.inter.json").write_text('{\n  "0": [1, 2],\n  "1": [2 3]\n}\n')
    with pytest.raises(SidrecError, match=r"X\.inter\.json:3: invalid JSON"):
        lcrec.read(tmp_path, "x")


def test_lcrec_wrong_structure(tmp_path: Path) -> None:
    (tmp_path / "X.inter.json").write_text('{"0": [1, 2], "1": 7}')
    with pytest.raises(SidrecError, match=r"X\.inter\.json: user 1: expected a list of item ids"):
        lcrec.read(tmp_path / "X.inter.json", "x")


# ------------------------------------------------------------------------------------------ RecBole
def test_recbole_item_fields() -> None:
    ds = read("recbole")
    assert field(ds, "title", "i6") == "Jigsaw & Glue"
    assert field(ds, "categories", "i1") == "Toys Balls"
    assert field(ds, "brand", "i4") is None
    assert field(ds, "price", "i3") == "9.5"


def test_recbole_presplit_item_fields() -> None:
    ds = read("recbole_presplit")
    assert field(ds, "item_token", "B003") == "B003"
    assert field(ds, "text", "B001") == "Red Ball Acme Toys Balls"  # .text keyed by token
    assert field(ds, "text", "B006") == "Jigsaw & Glue"  # .text keyed by index, mapped to the token
    assert field(ds, "text", "B005") is None


def test_recbole_presplit_round_trips_its_original_ids(tmp_path) -> None:
    """user2index / item2index: the dataset, a trained run and its recommendations speak the original ids; a map
    that misses an index the interactions use is not applied (the indices stay, never a mix of both)."""
    import shutil

    ds = read("recbole_presplit")
    assert sorted(ds.user_ids) == ["A1", "A2", "A3", "A4"] and sorted(ds.item_ids) == [f"B00{i}" for i in range(1, 7)]
    from sidrec.config import load_config
    from sidrec.pipeline import recommend, train

    run = tmp_path / "run"
    train(load_config(None, [f"data.path={FIX / 'recbole' / 'presplit'}", "data.format=recbole", "method=sasrec",
                             "features.kind=attributes", "fusion.lambdas=[0]", "train.epochs=1", "eval.ks=[5,10]",
                             "train.progress=false", f"run_dir={run}"]))
    recs = recommend(run, "A1", k=2, exclude_history=False)[0]
    assert len(recs) == 2 and all(i.startswith("B00") for i, _ in recs)
    assert recommend(run, None, k=3, histories=[["B001", "B002"]])[0][0][0].startswith("B00")
    part = tmp_path / "part"
    shutil.copytree(FIX / "recbole" / "presplit", part)
    (part / "Toy.item2index").write_text("B001\t1\nB002\t2\n")
    ds2 = _module("recbole").read(part, name="part")
    assert sorted(ds2.item_ids) == [str(i) for i in range(1, 7)] and sorted(ds2.user_ids)[0] == "A1"


def _split_rows(path: Path) -> dict[str, tuple[list[str], str]]:
    lines = path.read_text().splitlines()[1:]
    return {u: (h.split(), t) for u, h, t in (ln.split("\t") for ln in lines)}


def test_recbole_presplit_leave_one_out_reproduces_files() -> None:
    from sidrec.data.protocol import LeaveOneOut

    ds = read("recbole_presplit")
    loo = LeaveOneOut.from_dataset(ds)
    folder = CASES["recbole_presplit"][1]
    for split in ("valid", "test"):
        es = loo.split(split)
        got = {ds.user_ids[u]: ([ds.item_ids[i] for i in h], ds.item_ids[t])
               for u, h, t in zip(es.users, es.histories, es.targets, strict=True)}
        # the files speak indices; the dataset the original ids of Toy.user2index / Toy.item2index
        want = {"A" + u: (["B00" + i for i in h], "B00" + t)
                for u, (h, t) in _split_rows(folder / f"Toy.{split}.inter").items()}
        assert got == want


def _write_split(folder: Path, seqs: dict[str, list[str]], max_hist: int,
                 reverse_train: bool = False) -> None:
    """Write a UniSRec-style pre-split dataset: every training prefix, histories cut to ``max_hist``."""
    rows: dict[str, list[str]] = {"train": [], "valid": [], "test": []}
    for u, s in seqs.items():
        train = [f"{u}\t{' '.join(s[:k][-max_hist:])}\t{s[k]}" for k in range(1, len(s) - 2)]
        rows["train"] += train[::-1] if reverse_train else train
        rows["valid"].append(f"{u}\t{' '.join(s[:-2][-max_hist:])}\t{s[-2]}")
        rows["test"].append(f"{u}\t{' '.join(s[:-1][-max_hist:])}\t{s[-1]}")
    for split, lines in rows.items():
        header = "user_id:token\titem_id_list:token_seq\titem_id:token\n"
        (folder / f"T.{split}.inter").write_text(header + "".join(line + "\n" for line in lines))


def test_recbole_presplit_truncated_histories_are_stitched(tmp_path: Path) -> None:
    seqs = {"1": list("abcdefgh"), "2": list("cab"), "3": list("hgfedc")}
    _write_split(tmp_path, seqs, max_hist=2, reverse_train=True)
    ds = recbole.read(tmp_path, "t")
    assert by_id(ds) == seqs


def test_recbole_presplit_disagreement_names_row(tmp_path: Path) -> None:
    _write_split(tmp_path, {"1": list("abcde"), "2": list("abc")}, max_hist=50)
    valid = tmp_path / "T.valid.inter"
    valid.write_text(valid.read_text().replace("1\ta b c\td", "1\ta b x\td"))
    with pytest.raises(SidrecError, match=r"T\.valid\.inter:2: user 1: the validation row .* disagree"):
        recbole.read(tmp_path, "t")


def test_recbole_presplit_duplicate_test_row(tmp_path: Path) -> None:
    _write_split(tmp_path, {"1": list("abcde")}, max_hist=50)
    test = tmp_path / "T.test.inter"
    test.write_text(test.read_text() + "1\ta b c d\te\n")
    with pytest.raises(SidrecError, match=r"T\.test\.inter:3: user 1 has a second test row"):
        recbole.read(tmp_path, "t")


def test_recbole_presplit_missing_split(tmp_path: Path) -> None:
    _write_split(tmp_path, {"1": list("abcde")}, max_hist=50)
    (tmp_path / "T.valid.inter").unlink()
    with pytest.raises(SidrecError, match=r"lacks T\.valid\.inter"):
        recbole.read(tmp_path, "t")


def test_recbole_malformed_line(tmp_path: Path) -> None:
    (tmp_path / "X.inter").write_text("user_id:token\titem_id:token\ttimestamp:float\nu1\ti1\t1\nu1\ti2\n")
    with pytest.raises(SidrecError, match=r"X\.inter:3: expected 3 tab-separated fields"):
        recbole.read(tmp_path, "x")


def test_recbole_bad_timestamp(tmp_path: Path) -> None:
    (tmp_path / "X.inter").write_text("user_id:token\titem_id:token\ttimestamp:float\nu1\ti1\tsoon\n")
    with pytest.raises(SidrecError, match=r"X\.inter:2: expected a number in 'timestamp'"):
        recbole.read(tmp_path / "X.inter", "x")


def test_recbole_missing_column(tmp_path: Path) -> None:
    (tmp_path / "X.inter").write_text("uid:token\titem_id:token\nu1\ti1\n")
    with pytest.raises(SidrecError, match=r"X\.inter:1: no 'user_id' column \(the header has: uid, item_id"):
        recbole.read(tmp_path, "x")


def test_recbole_without_timestamp_keeps_file_order(tmp_path: Path) -> None:
    (tmp_path / "X.inter").write_text("item_id:token\tuser_id:token\nb\tu\na\tu\nc\tv\n")
    assert by_id(recbole.read(tmp_path, "x")) == {"u": ["b", "a"], "v": ["c"]}


# ------------------------------------------------------------------------------------------- Amazon
def test_amazon_2014_meta_fields() -> None:
    ds = read("amazon2014")
    assert field(ds, "categories", "B001") == ["Toys", "Balls", "Sports"]  # nested, flattened, deduplicated
    assert field(ds, "title", "B006") == "Jigsaw & Glue"  # HTML entity decoded
    assert field(ds, "price", "B001") == "4.99"
    assert field(ds, "brand", "B004") is None
    assert field(ds, "title", "B005") is None  # no meta line for B005
    assert "B999" not in ds.item_ids  # meta for an item nobody reviewed is ignored


def test_amazon_2018_fields_and_duplicates() -> None:
    ds = read("amazon2018")  # the file has 14 lines, one an exact duplicate
    assert ds.n_interactions == 13
    assert field(ds, "description", "B001") == "A bouncy red ball."
    assert field(ds, "features", "B002") == ["Fun for all ages"]
    assert field(ds, "price", "B003") == "9.50"
    assert field(ds, "price", "B002") is None  # empty price string


def test_amazon_2023_fields() -> None:
    ds = read("amazon2023")
    assert field(ds, "brand", "B002") == "SkyCo"  # from 'store'
    assert field(ds, "categories", "B004") == ["Toys", "Games"]
    assert field(ds, "features", "B001") == ["Fun for all ages", "Safe"]


def _gz(path: Path, lines: list[str]) -> None:
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        fh.write("".join(line + "\n" for line in lines))


def test_amazon_plain_files_and_python_literal_reviews(tmp_path: Path) -> None:
    (tmp_path / "Toys.jsonl").write_text(
        json.dumps({"user_id": "U", "parent_asin": "P1", "timestamp": 2000}) + "\n"
        + repr({"user_id": "U", "parent_asin": "P2", "timestamp": 1000}) + "\n"
    )
    (tmp_path / "meta_Toys.jsonl").write_text(json.dumps({"parent_asin": "P1", "title": "One"}) + "\n")
    assert amazon.detect(tmp_path)
    ds = amazon.read(tmp_path, "t")
    assert by_id(ds) == {"U": ["P2", "P1"]}
    assert field(ds, "title", "P1") == "One"


def test_amazon_malformed_review_line(tmp_path: Path) -> None:
    good = json.dumps({"reviewerID": "A", "asin": "B", "unixReviewTime": 1})
    _gz(tmp_path / "reviews_Toys_5.json.gz", [good, good.replace('"B"', '"C"'), "{'reviewerID': 'A', oops"])
    with pytest.raises(SidrecError, match=r"reviews_Toys_5\.json\.gz:3: expected one review per line"):
        amazon.read(tmp_path, "t")


def test_amazon_review_missing_field(tmp_path: Path) -> None:
    _gz(tmp_path / "reviews_Toys_5.json.gz", [json.dumps({"reviewerID": "A", "asin": "B"})])
    with pytest.raises(SidrecError, match=r"reviews_Toys_5\.json\.gz:1: .*missing unixReviewTime"):
        amazon.read(tmp_path, "t")


REVIEW = json.dumps({"reviewerID": "A", "asin": "B", "unixReviewTime": 1})


def test_amazon_malformed_meta_line(tmp_path: Path) -> None:
    _gz(tmp_path / "reviews_Toys_5.json.gz", [REVIEW])
    _gz(tmp_path / "meta_Toys.json.gz", [repr({"asin": "Z", "title": "z"}), "{'asin': 'B', 'title': }"])
    with pytest.raises(SidrecError, match=r"meta_Toys\.json\.gz:2: expected one item per line"):
        amazon.read(tmp_path, "t")


def test_amazon_truncated_gzip(tmp_path: Path) -> None:
    _gz(tmp_path / "reviews_Toys_5.json.gz", [REVIEW] * 50)
    data = (tmp_path / "reviews_Toys_5.json.gz").read_bytes()
    (tmp_path / "reviews_Toys_5.json.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(SidrecError, match=r"reviews_Toys_5\.json\.gz.*cannot read the file"):
        amazon.read(tmp_path, "t")


def test_amazon_ignores_other_json(tmp_path: Path) -> None:
    (tmp_path / "items.jsonl").write_text(json.dumps({"item_id": "1", "title": "x"}) + "\n")
    (tmp_path / "datamaps.json").write_text(json.dumps({"id2item": {"1": "B"}}))
    _gz(tmp_path / "meta_Toys.json.gz", [repr({"asin": "B", "title": "b"})])
    assert not amazon.detect(tmp_path)


# ------------------------------------------------------------------------------------------ tabular
def test_tabular_ids_stay_strings_and_items_join() -> None:
    ds = read("tabular")
    assert ds.item_ids[0] == "011"
    assert field(ds, "description", "011") == "A bouncy, red ball."
    assert field(ds, "brand", "044") is None


def test_tabular_parquet_with_dates(tmp_path: Path) -> None:
    times = ["2024-01-02 10:00:00", "2024-01-01 09:00:00", "2024-01-02 10:00:00"]
    ts = pa.array(times).cast(pa.timestamp("s"))
    inter = pa.table({"user": [7, 7, 7], "item": [3, 1, 2], "timestamp": ts})
    pq.write_table(inter, tmp_path / "interactions.parquet")
    pq.write_table(pa.table({"item_id": [1, 2], "title": ["one", None]}), tmp_path / "items.parquet")
    assert detect_format(tmp_path) == "tabular"
    ds = tabular.read(tmp_path, "t")
    assert by_id(ds) == {"7": ["1", "3", "2"]}
    assert field(ds, "title", "1") == "one" and field(ds, "title", "2") is None


def test_tabular_iso_strings_and_no_timestamp(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("user,item,timestamp\nu,x,2024-03-01T10:00:00+01:00\nu,y,2024-02-01\n")
    assert by_id(tabular.read(tmp_path / "a.csv", "t")) == {"u": ["y", "x"]}
    (tmp_path / "b.csv").write_text("user,item\nu,y\nu,x\n")
    assert by_id(tabular.read(tmp_path / "b.csv", "t")) == {"u": ["y", "x"]}


def test_tabular_malformed_line(tmp_path: Path) -> None:
    (tmp_path / "interactions.csv").write_text("user,item,timestamp\n1,2,3\n1,3,4\n1,2\n")
    with pytest.raises(SidrecError, match=r"interactions\.csv:4: expected the same number of comma-sep"):
        tabular.read(tmp_path, "t")


def test_tabular_bad_timestamp_and_empty_id(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("user,item,timestamp\n1,2,3\n1,3,later\n")
    with pytest.raises(SidrecError, match=r"a\.csv:3: expected a number or date in 'timestamp', got 'later'"):
        tabular.read(tmp_path / "a.csv", "t")
    (tmp_path / "b.csv").write_text("user,item\n1,2\n,3\n")
    with pytest.raises(SidrecError, match=r"b\.csv:3: empty 'user'"):
        tabular.read(tmp_path / "b.csv", "t")


def test_tabular_missing_column_lists_found(tmp_path: Path) -> None:
    pq.write_table(pa.table({"uid": ["a"], "item": ["b"]}), tmp_path / "x.parquet")
    assert not tabular.detect(tmp_path / "x.parquet")
    with pytest.raises(SidrecError, match=r"x\.parquet: no user column \(expected one of user, user_id; "
                                          r"found: uid, item\)"):
        tabular.read(tmp_path / "x.parquet", "t")


# -------------------------------------------------------------------------------------- real data
REAL = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.mark.realdata
@pytest.mark.skipif(not REAL.is_dir(), reason="needs ../shared/data")
def test_real_s3rec_folders_are_not_claimed_by_other_readers() -> None:
    for folder in sorted(p for p in REAL.iterdir() if p.is_dir()):
        claims = [f for f in FORMATS[1:] if f != "s3rec" and _module(f).detect(folder)]
        assert claims == [], f"{folder} is claimed by {claims}"


# ------------------------------------------------------------------------------- round three (issue 59)
_CSV = "user,item,timestamp\n" + "".join(f"u{u},i{(u * 3 + t) % 7},{t}\n" for u in range(5) for t in range(4))


@pytest.mark.parametrize(("files", "culprit", "where"), [
    ({"x.csv": _CSV.encode() + b"u\xe9,i1,9\n"}, "x.csv", "line 22"),
    ({"interactions.csv": _CSV.encode(), "items.csv": b"item,title\ni1,caf\xe9\n"}, "items.csv", "line 2"),
    ({"X.inter.json": b'{"1": ["a", "\xe9"]}'}, "X.inter.json", "line 1"),
    ({"X.inter": b"user_id:token\titem_id:token\nu1\ti\xe9\n"}, "X.inter", "line 2"),
    ({"seq.txt": b"1 2 3\n", "items.jsonl": b'{"item_id": "2"}\n{"item_id": "3", "title": "\xe9"}\n'},
     "items.jsonl", "line 2"),
])
def test_text_that_is_not_utf8_names_file_byte_and_line(tmp_path: Path, files, culprit, where) -> None:
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    path = tmp_path / next(iter(files)) if len(files) == 1 else tmp_path
    with pytest.raises(SidrecError, match=rf"{culprit}: not UTF-8 text at byte \d+ \({where}\)"):
        load_dataset(path)


def test_a_csv_row_over_the_limit_names_its_line(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(tabular, "CSV_ROW_LIMIT", 4096)  # the 16 MiB limit, scaled down
    rows = _CSV.splitlines(keepends=True)
    (tmp_path / "x.csv").write_text("".join(rows[:2]) + "u9,i9," + "9" * 20_000 + "\n" + "".join(rows[2:]))
    with pytest.raises(SidrecError, match=r"x\.csv:3: a row of 20,007 bytes; a CSV row may hold at most 4,096 bytes"):
        load_dataset(tmp_path / "x.csv")


def test_items_missing_from_the_item_file_are_counted_or_refused(tmp_path: Path) -> None:
    (tmp_path / "X.inter.json").write_text(json.dumps({"u1": [0, 1, 2], "u2": [1, 2, 3]}))
    (tmp_path / "X.item.json").write_text(json.dumps({"0": {"title": "a"}, "1": {"title": "b"}}))
    ds = load_dataset(tmp_path / "X.inter.json")
    assert ds.unmatched_items == ["2", "3"] and ds.item_file.endswith("X.item.json")
    with pytest.raises(SidrecError, match=r"X\.item\.json: 2 of the 4 items .*--strict-items"):
        load_dataset(tmp_path / "X.inter.json", strict_items=True)
    assert load_dataset(FIX / "lcrec").unmatched_items == []  # every item of the fixture has a record
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "interactions.csv").write_text(_CSV)
    (tmp_path / "t" / "items.csv").write_text("item,title\ni1,one\n")
    assert len(load_dataset(tmp_path / "t").unmatched_items) == 6
    with pytest.raises(SidrecError, match="--strict-items"):
        load_dataset(tmp_path / "t", strict_items=True)


def test_ids_of_digits_int_refuses_are_strings_or_named(tmp_path: Path) -> None:
    """'²' passes str.isdigit but not int(): it sorted as a number and crashed the readers."""
    (tmp_path / "x.csv").write_text(_CSV + "\u00b2,i1,1\n")
    assert "\u00b2" in load_dataset(tmp_path / "x.csv").user_ids
    (tmp_path / "seq.txt").write_text("1 2 3\n2 3 \u00b9\n")
    with pytest.raises(SidrecError, match=r"seq\.txt:2: expected integer ids"):
        load_dataset(tmp_path / "seq.txt", "s3rec")


@pytest.mark.parametrize(("datamaps", "message"), [("[1, 2]", "got a list"), ('{"id2item": [1]}', "id2item")])
def test_s3rec_datamaps_of_another_shape_is_named(tmp_path: Path, datamaps: str, message: str) -> None:
    (tmp_path / "seq.txt").write_text("1 2 3\n2 3 4\n")
    (tmp_path / "datamaps.json").write_text(datamaps)
    with pytest.raises(SidrecError, match=rf"datamaps\.json: .*{message}"):
        load_dataset(tmp_path)
