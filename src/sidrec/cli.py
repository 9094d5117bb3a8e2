"""The ``sidrec`` command line. Sub-commands follow the flow of data (see docs/architecture.md).

Every user-fixable problem surfaces as one line on stderr and exit code 2 (no traceback); set
``SIDREC_DEBUG=1`` to see the traceback anyway.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from sidrec.errors import SidrecError

_TYPE_NAMES = {"str": "TEXT", "int": "INTEGER", "float": "FLOAT", "path": "PATH", "list[str]": "TEXT",
               "list[path]": "PATH"}


def _plain_help() -> None:
    """Help in the usual command-line style: typer >= 0.2x prints Python types ('<bool>' beside every flag, '<str>')
    and required arguments as '{run}', which read as template artefacts. Flags get no type, other values click's
    names (TEXT, INTEGER, PATH), arguments their upper-case name; a typer without these hooks is left as it is."""
    from typer import core as tc

    opt, arg = getattr(tc, "TyperOption", None), getattr(tc, "TyperArgument", None)
    if opt is None or arg is None or not hasattr(opt, "display_type_rich") or not hasattr(arg, "_usage_display_name"):
        return

    def display_type_rich(self: Any, ctx: Any) -> str | None:
        if getattr(self, "is_flag", False) or getattr(self, "is_bool_flag", False):
            return None
        raw = str(self.display_type(ctx))
        name = raw[1:-1] if raw.startswith("<") and raw.endswith(">") else raw
        return _TYPE_NAMES.get(name.lower(), name.upper())

    def usage_name(self: Any) -> str:
        name = str(self.display_name_raw).upper()
        return (name if self.required else f"[{name}]") + ("..." if self.nargs != 1 else "")

    for cls in (opt, arg):
        cls.display_type_rich = display_type_rich
    arg._usage_display_name = usage_name


_plain_help()
app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Generative recommendation with semantic IDs (TIGER, DIGER, ACERec, DREAM, SASRec).")
data_app = typer.Typer(no_args_is_help=True, help="Read, convert and inspect datasets.")
app.add_typer(data_app, name="data")
config_app = typer.Typer(no_args_is_help=True, help="Inspect configs.")
app.add_typer(config_app, name="config")
out = Console()

ConfigOpt = Annotated[list[Path] | None, typer.Option("--config", "-c", help="YAML config file(s), applied in order")]
Overrides = Annotated[list[str] | None, typer.Argument(help="dotted overrides, e.g. train.lr=3e-4 method=tiger")]


def _metric(v: float, digits: int = 4) -> str:
    """A metric in 0..1 without its leading zero ('.0632', as the papers and the README write them): one character
    less per cell is what lets eight metric columns fit an 80-column terminal."""
    text = f"{v:.{digits}f}"
    return text[1:] if text.startswith("0.") else text


def _metrics_table(title: str, rows: list[tuple[str, dict[str, Any]]], ks: list[int]) -> Table:
    """Recall / NDCG at ``ks`` per model and subset; cut-offs the run did not compute are left out.

    Sized for 80 columns: no vertical rules, metric cells that never wrap or shrink (a cut number is worse than no
    number), and the model column, when there is more than one model, the one that folds."""
    from rich import box

    present = {k for _, m in rows for r in m.values() if isinstance(r, dict) for k in r}
    ks = [k for k in ks if f"recall@{k}" in present] or sorted(
        {int(k.split("@")[1]) for k in present if k.startswith("recall@")})
    t = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, title_justify="left")
    tied = any("tied@10" in r for _, m in rows for r in m.values() if isinstance(r, dict))
    many = len(rows) > 1
    cols = (["model"] * many + ["subset", "users"] + [f"{m}@{k}" for k in ks for m in ("R", "N")]
            + (["tied@10"] * tied))
    cells = [[name] * many + [sub, str(m[sub]["n_users"]),
                              *[_metric(m[sub][f"{x}@{k}"]) if f"{x}@{k}" in m[sub] else "n/a"
                                for k in ks for x in ("recall", "ndcg")],
                              *([_metric(m[sub]["tied@10"], 3) if "tied@10" in m[sub] else ""] * tied)]
             for name, m in rows for sub in ("all", "warm", "cold") if sub in m]
    widths = [max([len(col)] + [len(c[j]) for c in cells]) for j, col in enumerate(cols)]
    # columns are set apart by the box's blank rule plus this right padding: two spaces, or one where two do not fit
    natural = sum(min(w, 12) if col == "model" else w for w, col in zip(widths, cols, strict=True))
    t.padding = (0, 1, 0, 0) if natural + 2 * (len(cols) - 1) <= 80 else (0, 0, 0, 0)
    for col, width in zip(cols, widths, strict=True):
        if col == "model":
            t.add_column(col, overflow="fold", min_width=min(width, 12))
        else:
            t.add_column(col, justify="left" if col == "subset" else "right", no_wrap=True, min_width=width)
    for c in cells:
        t.add_row(*c)
    return t


StrictItems = Annotated[bool, typer.Option(
    "--strict-items", help="refuse interactions that name items the item file (LC-Rec item.json, a tabular items "
    "table) has no record of; by default they are kept, counted and reported")]


def _warn_unmatched(ds: Any) -> None:
    """Say how many items the interactions name that the item file lacks (they have no text to embed)."""
    if ds.unmatched_items:
        from sidrec.data.formats import unmatched_message

        print(f"sidrec: warning: {unmatched_message(ds)}; --strict-items refuses such data", file=sys.stderr)


@data_app.command("prepare")
def data_prepare(
    input: Annotated[str, typer.Argument(help="raw dataset path (file or folder), or 'synthetic'")],
    output: Annotated[Path | None, typer.Option(
        "--out", "-o", help="prepared dataset folder (default: data_prepared/<dataset name>, in the working "
        "directory)")] = None,
    fmt: Annotated[str, typer.Option("--format", "-f", help="auto|s3rec|lcrec|recbole|amazon|tabular")] = "auto",
    kcore: Annotated[int, typer.Option(min=0, help="k-core filter (0 = keep as given)")] = 0,
    name: Annotated[str, typer.Option(help="dataset name (default: folder name)")] = "",
    cold_threshold: Annotated[int, typer.Option(min=0, help="cold = target with <= this many training "
                                                "interactions")] = 5,
    strict_items: StrictItems = False,
) -> None:
    """Read a dataset in any supported format, report its statistics, and save it as Parquet."""
    from sidrec.data.dataset import check_prepared_destination
    from sidrec.data.formats import load_dataset

    if output is not None:
        check_prepared_destination(output)
    ds = load_dataset(input, fmt, name, kcore, strict_items=strict_items)
    _warn_unmatched(ds)
    dest = output or Path("data_prepared") / ds.name
    check_prepared_destination(dest)
    _print_stats(ds, cold_threshold)
    ds.save(dest)
    out.print(f"saved prepared dataset to [bold]{dest}[/]")


def _fetch_help() -> str:
    from sidrec.data.fetch import DATASETS

    return "dataset to download: " + ", ".join(DATASETS)


@data_app.command("fetch", epilog="Datasets: beauty (Amazon 2014 Beauty), sports (Amazon 2014 Sports and Outdoors), "
                  "toys (Amazon 2014 Toys and Games); 5-core reviews + metadata of the McAuley lab's 2014 release. "
                  "Sources, terms and processing: docs/datasets.md.")
def data_fetch(
    name: Annotated[str, typer.Argument(help=_fetch_help(), show_default=False)],
    output: Annotated[Path | None, typer.Option(
        "--out", "-o", help="dataset folder to write (default: data/amazon14_NAME, in the working directory)")] = None,
    mirror: Annotated[str | None, typer.Option(
        "--mirror", help="base URL holding the files (default: $SIDREC_AMAZON14_MIRROR, else the lab's server)")] = None,
    keep_downloads: Annotated[bool, typer.Option(
        "--keep-downloads/--delete-downloads", help="keep the downloaded .json.gz files in the cache "
        "($SIDREC_CACHE/downloads) so a second fetch needs no network")] = True,
) -> None:
    """Download a public benchmark and convert it into the folder configs/data/NAME.yaml reads.

    The 5-core reviews and the item metadata are downloaded with resume, checked (size, gzip, and the user / item /
    interaction counts the papers report) and written as S3-Rec/P5 files with item text; then
    'sidrec train -c configs/data/NAME.yaml data.path=FOLDER ...' or 'sidrec data prepare FOLDER'.
    """
    from sidrec.data.fetch import fetch

    ds, dest = fetch(name, output, mirror, keep_downloads)
    _print_stats(ds)
    out.print(f"saved {ds.name} to [bold]{dest}[/]; train on it: sidrec train -c configs/data/{ds.name}.yaml "
              f"data.path={dest} method=sasrec", soft_wrap=True)


def _print_stats(ds: Any, cold_threshold: int = 5) -> dict[str, Any]:
    from sidrec.data.protocol import LeaveOneOut

    s = ds.stats()
    loo = LeaveOneOut.from_dataset(ds, 50, cold_threshold)
    s["test_users"] = loo.subset_counts("test")
    s["valid_users"] = loo.subset_counts("valid")
    t = Table(title=f"dataset {ds.name}")
    t.add_column("statistic")
    t.add_column("value", justify="right")
    t.add_row("users", f"{s['users']:,}")
    t.add_row("items", f"{s['items']:,}")
    t.add_row("interactions", f"{s['interactions']:,}")
    t.add_row("sequence length min/mean/max", f"{s['seq_len_min']} / {s['seq_len_mean']:.2f} / {s['seq_len_max']}")
    cov = s.get("field_coverage", {})
    t.add_row("item fields (share of items with a value)",
              ", ".join(f"{f} {cov.get(f, 0):.0%}" for f in s["item_fields"]) or "-")
    for split in ("test", "valid"):
        c = s[f"{split}_users"]
        t.add_row(f"{split} users cold / warm (<= {cold_threshold})", f"{c['cold']:,} / {c['warm']:,}")
    if "filter" in s:
        f = s["filter"]
        t.add_row(f"{f['kcore']}-core removed users / items / interactions",
                  f"{f['users_removed']:,} / {f['items_removed']:,} / {f['interactions_removed']:,} ({f['rounds']} rounds)")
    out.print(t)
    _warn_untrainable(s)
    return s


def _warn_untrainable(s: dict[str, Any]) -> None:
    """A dataset that reads but cannot be trained on (e.g. a misread user column) is said so here, not later."""
    n = s["test_users"]["all"]
    if n < 2:
        print(f"sidrec: warning: only {n} of {s['users']} users have the 3+ interactions leave-one-out needs; "
              "'sidrec train' will refuse this dataset", file=sys.stderr)


@data_app.command("stats")
def data_stats(
    input: Annotated[str, typer.Argument(help="dataset path (raw or prepared) or 'synthetic'")],
    fmt: Annotated[str, typer.Option("--format", "-f", help="auto|s3rec|lcrec|recbole|amazon|tabular")] = "auto",
    kcore: Annotated[int, typer.Option(min=0, help="k-core filter (0 = keep as given)")] = 0,
    cold_threshold: Annotated[int, typer.Option(min=0, help="cold = target with <= this many training "
                                                "interactions")] = 5,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")] = False,
    strict_items: StrictItems = False,
) -> None:
    """Print users, items, interactions, sequence lengths and cold/warm test-user counts."""
    from sidrec.data.formats import load_dataset

    ds = load_dataset(input, fmt, "", kcore, strict_items=strict_items)
    _warn_unmatched(ds)
    if as_json:
        from sidrec.data.protocol import LeaveOneOut

        s = ds.stats()
        s["test_users"] = LeaveOneOut.from_dataset(ds, 50, cold_threshold).subset_counts("test")
        print(json.dumps(s, indent=2))
        _warn_untrainable(s)
    else:
        _print_stats(ds, cold_threshold)


@app.command()
def embed(
    config: ConfigOpt = None,
    overrides: Overrides = None,
    output: Annotated[Path | None, typer.Option("--out", "-o", help="write the (n_items, d) array here")] = None,
) -> None:
    """Compute (or fetch from cache) item feature vectors: text embeddings or attribute SVD."""
    from sidrec.config import load_config, only_overrides
    from sidrec.features import item_features
    from sidrec.io import check_writable, features_cache, save_npy
    from sidrec.pipeline import dataset_from_config

    only_overrides("embed", overrides, ("data.", "features."))
    cfg = load_config(config, overrides)
    if output is not None:
        check_writable(output, "output file", folder=False)
    else:
        check_writable(features_cache(cfg.features.cache_dir), "features.cache_dir")
    ds = dataset_from_config(cfg)
    t0 = time.time()
    emb = item_features(cfg.features, ds)
    dest = output or features_cache(cfg.features.cache_dir) / f"{ds.name}.npy"
    save_npy(dest, emb)
    out.print(f"{ds.name}: {emb.shape[0]:,} items x {emb.shape[1]} dims in {time.time() - t0:.1f}s -> {dest}")
    f = cfg.features
    from sidrec.features.core import has_text, item_texts, resolve_template, truncated_texts

    if f.kind == "text" or (f.kind == "auto" and not f.npy_path and has_text(ds)):
        # what the encoder was given: the template, one item's text, and how many texts it cut short
        texts = item_texts(ds, f.template)
        cut, limit = truncated_texts(texts, f.model)
        out.print(f"template: {resolve_template(f.template)}", markup=False, highlight=False, soft_wrap=True)
        out.print(f"sample ({ds.item_ids[0]}): {texts[0][:300]}", markup=False, highlight=False, soft_wrap=True)
        out.print(f"{cut:,} of {len(texts):,} item texts are longer than the encoder's {limit} tokens and were cut "
                  "(put the fields that matter first in features.template)" if cut else
                  f"no item text is longer than the encoder's {limit} tokens", markup=False, highlight=False, soft_wrap=True)


def _config_with_run_dir(config: list[Path] | None, overrides: list[str] | None, run_dir: str | None) -> Any:
    """The config from files + dotted overrides, with ``--run-dir`` as one more override."""
    from sidrec.config import load_config

    return load_config(config, list(overrides or []) + ([f"run_dir={run_dir}"] if run_dir else []))


@app.command()
def tokenize(
    config: ConfigOpt = None,
    overrides: Overrides = None,
    run_dir: Annotated[str | None, typer.Option("--run-dir", help="run directory (default runs/...)")] = None,
) -> None:
    """Fit the configured tokenizer (tokenizer.kind=rqkmeans|rqvae|opq|pq) and write SID table + report."""
    from sidrec.config import only_overrides
    from sidrec.features import item_features
    from sidrec.pipeline import dataset_from_config, seed_everything
    from sidrec.runs import check_run_dir, claim_run_dir
    from sidrec.sid.pipeline import REPORT_FILE, SID_TABLE_FILE, preflight, run_tokenize

    only_overrides("tokenize", overrides, ("data.", "features.", "tokenizer.", "seed", "run_dir"))
    cfg = _config_with_run_dir(config, overrides, run_dir)
    tcfg = cfg.tokenizer
    if cfg.run_dir:
        check_run_dir(cfg, Path(cfg.run_dir))
    seed_everything(cfg.seed)
    ds = dataset_from_config(cfg)
    if not cfg.run_dir:
        cfg.run_dir = str(Path("runs") / f"{ds.name}-tokenize-{tcfg.kind}-{time.strftime('%Y%m%d-%H%M%S')}")
    check_run_dir(cfg, Path(cfg.run_dir))
    preflight(tcfg, ds.n_items)
    emb = item_features(cfg.features, ds, progress=tcfg.progress)
    with claim_run_dir(cfg, ds.name) as run:
        table = run_tokenize(cfg, ds, emb, run)
    rep = json.loads((run / REPORT_FILE).read_text())
    t = Table(title=f"{ds.name}: {tcfg.kind} semantic IDs")
    t.add_column("level")
    t.add_column("codes", justify="right")
    t.add_column("utilisation", justify="right")
    t.add_column("perplexity", justify="right")
    for i, lv in enumerate(rep["levels"], 1):
        t.add_row(str(i), str(lv["codes"]), f"{lv['utilization']:.1%}", f"{lv['perplexity']:.1f}")
    out.print(t)
    before, after = rep["collisions_before"], rep["collisions_after"]
    out.print(f"collisions before resolution: {before['collision_rate']:.2%} of items (largest group "
              f"{before['largest_group']}); after: {after['collision_rate']:.2%}; SID length {rep['sid_length']}")
    out.print(f"reconstruction error (relative): {rep.get('reconstruction_rel', float('nan')):.4f}; "
              f"fit {rep['fit_s']:.1f}s")
    for w in rep["warnings"]:
        out.print(f"[yellow]warning:[/] {w}")
    out.print(f"{table.n_sids:,} SIDs for {table.n_items:,} items -> [bold]{run / SID_TABLE_FILE}[/]")


@app.command()
def train(
    config: ConfigOpt = None,
    overrides: Overrides = None,
    resume: Annotated[bool, typer.Option("--resume", help="continue the run in run_dir from its last checkpoint")] = False,
    run_dir: Annotated[str | None, typer.Option("--run-dir", help="run directory (default runs/...)")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace a run already in run_dir that has other "
                                            "settings (it is kept if this run fails before training starts)")] = False,
) -> None:
    """Train a method on a dataset; writes a run directory with metrics.json.

    Methods (method=NAME): content (no training: cosine of item vectors to the last items), sasrec (ID-based
    Transformer baseline), tiger (semantic IDs + Transformer + beam search), diger (TIGER with its RQ-VAE
    trained jointly), acerec (32-code OPQ IDs + holistic scoring). Unset settings come from the method's
    preset for this machine (size=auto: cpu, or paper on a GPU; size=none: none). See docs/own-dataset.md for
    your own data and 'sidrec config show method=NAME' for every setting.

    Time and place: train.max_minutes=M stops training so that the whole command ends within M minutes (the final
    evaluation included); train.device=auto|cpu|cuda|cuda:N picks the device (auto: a GPU when there is one).
    """
    from sidrec.pipeline import train as run_train
    from sidrec.training import distributed as D

    cfg = _config_with_run_dir(config, overrides, run_dir)
    res = run_train(cfg, resume=resume, overwrite=overwrite)
    if D.is_main():
        split = "test" if "test" in res else "valid"  # eval.test=false: a model-selection run
        hist = "excluded" if cfg.eval.protocol == "exclude" else "kept"
        _print_wide(_metrics_table(f"{cfg.method} - {split} (history {hist})", _result_rows(cfg.method, res, split),
                                   [10, 50]))
        also = res.get("also")
        if also:  # eval.also_protocol: the second selection of the same training, a run folder of its own
            hist2 = "excluded" if also["protocol"] == "exclude" else "kept"
            _print_wide(_metrics_table(f"{cfg.method} - {split} (history {hist2}; selected on its own validation)",
                                       _result_rows(cfg.method, also, split), [10, 50]))
            out.print(f"run directory ({also['protocol']}): [bold]{Path(str(cfg.run_dir)) / also['protocol']}[/]")
        out.print(f"run directory: [bold]{cfg.run_dir}[/]")


def _result_rows(method: str, res: dict[str, Any], split: str) -> list[tuple[str, dict[str, Any]]]:
    """The run's ranking, the model alone when content fusion changed it, and popularity (test only)."""
    f = res.get("fusion") or {}
    from sidrec.fusion import fusion_from_record, is_fused

    fused = is_fused(f)
    rows = [(f"{method}+content ({fusion_from_record(f).name()})" if fused else method, res[split])]
    if fused and split in res.get("model_only", {}):
        rows.append((method, res["model_only"][split]))
    if split == "test" and "popularity_test" in res:
        rows.append(("popularity", res["popularity_test"]))
    return rows


@app.command()
def fuse(run: Annotated[Path, typer.Argument(help="a finished run directory")],
         overrides: Annotated[list[str] | None, typer.Argument(
             help="fusion.* / content.* settings, e.g. content.query_items=3 fusion.lambdas=[0,5,10]")] = None) -> None:
    """Choose the content fusion of a finished run on validation, without retraining (writes fusion.json and
    updates metrics.json); for runs trained before it existed, or with another grid or content query."""
    from sidrec.pipeline import fuse as run_fuse

    res = run_fuse(run, overrides or [])
    split = "test" if "test" in res else "valid"
    method = str(res.get("dataset", {}).get("method", "")) or "model"
    _print_wide(_metrics_table(f"{run} - {split}", _result_rows(method, res, split), [10, 50]))


def _print_wide(table: Table) -> None:
    """Print a table at its natural width when stdout is not a terminal (rich would squeeze it to 80 columns
    and cut the numbers to '0.0…')."""
    (out if out.is_terminal else Console(width=max(out.width, 240))).print(table)


@config_app.command("show", help="Print the resolved config: every key of every section, its value, and the default "
                    "where it differs. With --explain every key also says what it does and its default (the same text "
                    "as docs/config.md); the output stays a config file that loads to the same settings.")
def config_show(
    config: ConfigOpt = None,
    overrides: Overrides = None,
    explain: Annotated[bool, typer.Option(
        "--explain", help="also describe every key (comment lines above it) and give its default beside it")] = False,
) -> None:
    """``sidrec config show``; the help text is given in the decorator as one paragraph (a docstring's line breaks
    show up as breaks in rich's help)."""
    from sidrec.config import load_config, render_config
    from sidrec.config_docs import descriptions

    print(render_config(load_config(config, overrides), descriptions() if explain else None), end="")


def _parse_splits(split: str) -> tuple[str, ...]:
    """``--split valid | test | both`` as the tuple of splits to measure (both: valid first, where settings are
    chosen, then test)."""
    splits = ("valid", "test") if split == "both" else (split,)
    if any(s not in ("valid", "test") for s in splits):
        raise SidrecError(f"--split must be valid, test or both, got '{split}'")
    return splits


@app.command()
def evaluate(
    run: Annotated[Path, typer.Argument(help="a run directory written by 'sidrec train'")],
    split: Annotated[str, typer.Option(help="valid | test | both")] = "test",
    as_json: Annotated[bool, typer.Option("--json", help="print the metrics as JSON (per split and subset) "
                                          "instead of tables")] = False,
) -> None:
    """Re-evaluate a trained run's best checkpoint (full-catalogue ranking)."""
    from sidrec.pipeline import evaluate as run_eval

    splits = _parse_splits(split)
    res = run_eval(run, splits)
    if as_json:
        print(json.dumps(res, indent=2))
    else:
        for s in splits:
            _print_wide(_metrics_table(f"{run} - {s}", [(s, res[s])], [5, 10, 20, 50]))


@app.command()
def recommend(
    run: Annotated[Path, typer.Argument(help="a run directory")],
    user: Annotated[str | None, typer.Option("--user", "-u", help="original id of a user of the dataset")] = None,
    history: Annotated[str | None, typer.Option("--history", help="a history of original item ids, oldest first, "
                                                "comma-separated (e.g. a live session in no dataset)")] = None,
    sessions: Annotated[Path | None, typer.Option("--sessions", help="a text file of histories, one per line, item "
                                                  "ids comma-separated, oldest first")] = None,
    skip_unknown: Annotated[bool, typer.Option("--skip-unknown", help="leave out item ids the run does not know "
                                               "(by default they are an error)")] = False,
    k: Annotated[int, typer.Option("-k", help="number of items")] = 10,
    sid_table: Annotated[Path | None, typer.Option("--sid-table", help="decode over this SID table "
                                                   "(e.g. from 'sidrec add-items' or RUN/dream/)")] = None,
    weights: Annotated[Path | None, typer.Option("--weights", help="other weights for the run's model "
                                                 "(e.g. RUN/dream/model.safetensors)")] = None,
    include_history: Annotated[bool, typer.Option("--include-history", help="also list items the history already "
                                                  "holds (left out by default)")] = False,
    show: Annotated[str | None, typer.Option("--show", help="the item field printed beside each id (default: title, "
                                             "else the first text field the dataset has)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON: per history its items and the recommendations "
                                          "with ids, scores, the score's kind and the shown field")] = False,
) -> None:
    """Recommend the next items for a user of the dataset, or for any history of item ids (original ids in and
    out; every method)."""
    from sidrec import show as S
    from sidrec.pipeline import recommend_in_context as run_rec

    if k <= 0:
        raise SidrecError("-k must be positive")
    if sum(x is not None for x in (user, history, sessions)) != 1:
        raise SidrecError("give one of --user, --history or --sessions")
    histories: list[list[str]] | None = None
    names: list[str] = [f"user {user}"]
    if history is not None:
        histories = [_ids(history, "--history")]
        names = ["the history"]
    elif sessions is not None:
        histories, names = _read_sessions(sessions)
    lists, hists, ds, task = run_rec(run, user, k, sid_table, weights, not include_history, histories, skip_unknown)
    field = S.label_field(ds, show)
    labels, score = S.item_labels(ds, field), S.score_name(task)
    if as_json:
        print(json.dumps([{"for": name, "score": score, "field": field,
                           "history": S.records([(i, None) for i in h], labels, field),
                           "recommendations": S.records(recs, labels, field)}
                          for name, h, recs in zip(names, hists, lists, strict=True)], indent=2, ensure_ascii=False))
        return
    for name, h, recs in zip(names, hists, lists, strict=True):
        out.print(S.history_table(name, h, labels, field))
        out.print(S.recommendation_table(name, recs, labels, field, score))


def _ids(text: str, where: str) -> list[str]:
    ids = [x.strip() for x in text.split(",") if x.strip()]
    if not ids:
        raise SidrecError(f"{where}: no item ids (expected ids separated by commas, oldest first)")
    return ids


def _read_sessions(path: Path) -> tuple[list[list[str]], list[str]]:
    """Histories from a text file, one per non-empty line (item ids comma-separated)."""
    from sidrec.config import describe_path
    from sidrec.errors import read_utf8

    if not path.is_file():
        raise SidrecError(f"--sessions {describe_path(str(path))}: not a file")
    try:
        lines = read_utf8(path).splitlines()
    except SidrecError as exc:
        raise SidrecError(f"--sessions {exc}") from None
    hs, names = [], []
    for n, line in enumerate(lines, 1):
        if line.strip():
            hs.append(_ids(line, f"{path}:{n}"))
            names.append(f"{path.name}:{n}")
    if not hs:
        raise SidrecError(f"--sessions {path}: no histories (one per line, item ids separated by commas)")
    return hs, names


@app.command()
def dream(
    run: Annotated[Path, typer.Argument(help="a finished TIGER run directory")],
    overrides: Overrides = None,
    split: Annotated[str, typer.Option(
        help="valid | test | both: the users the stage table is measured on (both: fit once, choose on valid)")] = "test",
    allow_config_commands: Annotated[bool, typer.Option(
        "--allow-config-commands", help="run dream.rewrite_command even when it comes from RUN/config.yaml "
        "(by default only a command given on this command line runs)")] = False,
) -> None:
    """Refine the SIDs of a TIGER run (DREAM: CART for every item -> a bridge TIGER trained on them -> UC3 ->
    CPDE); writes RUN/dream/."""
    from sidrec.dream.pipeline import run_dream

    res = run_dream(run, overrides or [], split=_parse_splits(split), allow_config_commands=allow_config_commands)
    for name, stages in res["by_split"].items():
        rows = [(st, stages[st]) for st in stages]
        _print_wide(_metrics_table(f"DREAM stages - {name}", rows, [5, 10, 50]))
    d = res["diagnostics"]
    warm = f" and {d['cart_warm_changed']:.1%} of warm SIDs" if "bridge" in d else ""
    out.print(f"CART changed {d['cart_primary_changed']:.1%} of cold SIDs{warm}; UC3 switched {d['uc3_switch_rate']:.1%}; "
              f"written to [bold]{run / 'dream'}[/]")


@app.command("add-items")
def add_items(
    run: Annotated[Path, typer.Argument(help="a trained run directory")],
    items: Annotated[Path, typer.Argument(help="new items: JSON Lines or CSV with item_id and text fields")],
    out_file: Annotated[Path | None, typer.Option("--out", help="where the extended SID table goes")] = None,
    embeddings: Annotated[Path | None, typer.Option(help="(n_new, d) .npy content vectors instead of text")] = None,
    allow_empty_text: Annotated[bool, typer.Option("--allow-empty-text", help="accept items without any text")] = False,
) -> None:
    """Give new catalogue items valid, unique SIDs from the run's tokenizer (no retraining)."""
    from sidrec.dream.newitems import add_items as run_add

    table, path = run_add(run, items, out_file, embeddings, allow_empty_text)
    out.print(f"catalogue now {table.n_items} items; SID table written to [bold]{path}[/] "
              f"(use: sidrec recommend {run} --sid-table {path} -u USER)")


@app.command("refine-items")
def refine_items(
    run: Annotated[Path, typer.Argument(help="a trained TIGER run directory")],
    interactions: Annotated[Path, typer.Argument(help="first interactions: CSV or JSON Lines with user_id, item_id "
                                                     "[, timestamp]")],
    overrides: Annotated[list[str] | None, typer.Argument(help="dream.uc3_* gate settings as key=value")] = None,
    table: Annotated[Path | None, typer.Option(help="catalogue SID table (default RUN/sid_table.catalogue.parquet)")] = None,
    out_file: Annotated[Path | None, typer.Option("--out", help="where the refined table goes (default: in place)")] = None,
    weights: Annotated[Path | None, typer.Option(help="other weights of the run (e.g. RUN/dream/model.safetensors)")] = None,
    candidates: Annotated[int, typer.Option(help="SIDs voted on per item (its own + nearest warm items' paths)")] = 8,
) -> None:
    """Re-choose the SIDs of items added with add-items from their first interactions (frozen model, no training)."""
    from sidrec.dream.refine import refine_items as run_refine

    if candidates < 1:
        raise SidrecError(f"--candidates must be at least 1, got {candidates}")
    res = run_refine(run, interactions, table, out_file, weights, candidates, overrides or [])
    out.print(f"{res.added} added items, {res.with_contexts} with interactions ({res.contexts} scored contexts); "
              f"{len(res.switched)} switched SID; table written to [bold]{res.path}[/]")


@app.command()
def serve(
    run: Annotated[Path, typer.Argument(help="a finished run directory")],
    host: Annotated[str, typer.Option(help="address to listen on (127.0.0.1: this machine only)")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to listen on (0: a free one, printed at start)")] = 8000,
    max_k: Annotated[int, typer.Option("--max-k", help="largest k a request may ask for")] = 100,
    max_batch: Annotated[int, typer.Option("--max-batch", help="requests ranked together while the model is busy "
                                           "(1: each alone, bit-exact; see docs/serve.md)")] = 1,
    threads: Annotated[int, typer.Option(help="torch threads of the one model thread")] = 1,
    content_thread: Annotated[bool, typer.Option("--content-thread/--no-content-thread",
                                                 help="a dense model's content similarity on a second thread while "
                                                 "the model scores (same answers; uses a second core)")] = True,
    skip_unknown: Annotated[bool, typer.Option("--skip-unknown", help="leave out unknown item ids of a history "
                                               "(by default a request naming one is refused, 422)")] = False,
    weights: Annotated[Path | None, typer.Option(help="other weights for the run's model")] = None,
    access_log: Annotated[bool, typer.Option("--access-log", help="log every request")] = False,
) -> None:
    """Serve a run over HTTP (FastAPI): recommendations for histories or users, item lookup, health (docs/serve.md)."""
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise SidrecError(f"sidrec serve needs FastAPI and uvicorn ({exc.name} is missing): "
                          'pip install -e ".[serve]"') from None
    from sidrec.serve import ServeSettings
    from sidrec.serve import serve as run_serve

    if not 0 <= port <= 65535:
        raise SidrecError(f"--port must be between 0 and 65535, got {port}")
    settings = ServeSettings(max_k=max_k, max_batch=max_batch, threads=threads, skip_unknown=skip_unknown,
                             content_thread=content_thread)
    run_serve(run, host, port, settings, weights, access_log, announce=lambda line: print(line, flush=True))


@app.command()
def quickstart(
    run_dir: Annotated[Path, typer.Option("--run-dir", help="where the runs go")] = Path("runs/quickstart"),
    users: Annotated[int, typer.Option(help="synthetic users")] = 3000,
    items: Annotated[int, typer.Option(help="synthetic items")] = 600,
) -> None:
    """Run the main job end to end on the embedded synthetic dataset (no files, no network)."""
    from sidrec.io import check_writable
    from sidrec.quickstart import MIN_ITEMS, run_quickstart

    if users < 1 or items < 1:
        raise SidrecError(f"--users and --items must be positive, got {users} and {items}")
    if items < MIN_ITEMS:
        raise SidrecError(f"--items must be at least {MIN_ITEMS} (the demo's TIGER splits the catalogue into "
                          f"{MIN_ITEMS} codes per level), got {items}")
    check_writable(run_dir, "run directory")
    run_quickstart(run_dir, users, items, console=out)


def _click_error(exc: BaseException) -> Any:
    """The click-style exception behind ``exc`` if it is one (usage errors, bad parameters), else None.

    Why by name and not ``isinstance(exc, click.ClickException)``: typer >= 0.20 vendors its own copy of click
    (``typer._click``) whose exceptions are not click's classes, and older typer versions use click itself.
    """
    names = {c.__name__ for c in type(exc).__mro__}
    return exc if "ClickException" in names and hasattr(exc, "format_message") else None


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _size_culprit(argv: list[str]) -> str:
    """The override most likely to have asked for the memory: the numeric setting furthest above its default."""
    import dataclasses

    from sidrec.config import Config, parse_override

    best, ratio = "", 1.0
    for word in argv:
        if "=" not in word or word.startswith("-"):
            continue
        key, value = parse_override(word)
        obj: object = Config()
        for part in key.split("."):
            obj = getattr(obj, part, None) if obj is not None and dataclasses.is_dataclass(obj) else None
        if isinstance(value, int | float) and not isinstance(value, bool) and isinstance(obj, int | float) and obj > 0:
            if value / obj > ratio:
                best, ratio = f"{key}={value}", value / obj
    if best:
        return f"{best} is too large for this machine's memory"
    return "a size setting (data.max_len, train.batch_size, model widths, eval.batch_size) is too large for this machine"


def main(argv: list[str] | None = None) -> None:
    """Console entry point: user errors -> one line on stderr and exit code 2; Ctrl-C -> exit code 130.

    Bare ``sidrec`` and ``sidrec data`` print their help on stdout and exit 0 (they ask what the program can do,
    as ``--help`` does); every other command-line mistake (unknown command or option, a missing or malformed
    argument) is one line on stderr, naming the command's ``--help``, with exit code 2.
    """
    if not sys.stderr.isatty():  # libraries' progress bars and notices would surround the one error line in a log
        for var, value in (("HF_HUB_DISABLE_PROGRESS_BARS", "1"), ("TRANSFORMERS_VERBOSITY", "error"),
                           ("TQDM_DISABLE", "1"), ("TOKENIZERS_PARALLELISM", "false")):
            os.environ.setdefault(var, value)
    try:
        from sidrec.env import check_environment

        check_environment()  # WORLD_SIZE=abc, RANK without torchrun, ...: one line before any work
        rv = app(args=argv, standalone_mode=False, prog_name="sidrec")
    except SidrecError as exc:
        if os.environ.get("SIDREC_DEBUG"):
            raise
        print(f"sidrec: error: {_one_line(str(exc))}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("sidrec: interrupted", file=sys.stderr)
        sys.exit(130)
    except (MemoryError, RuntimeError) as exc:
        if os.environ.get("SIDREC_DEBUG") or not (isinstance(exc, MemoryError) or "allocate" in str(exc)):
            raise
        print(f"sidrec: error: out of memory ({_one_line(str(exc))[:120] or 'MemoryError'}): "
              f"{_size_culprit(argv if argv is not None else sys.argv[1:])}", file=sys.stderr)
        sys.exit(2)
    except Exception as exc:  # typer's Exit / Abort, click-style usage errors, OS errors
        if isinstance(exc, typer.Exit) or type(exc).__name__ == "Exit":
            code = getattr(exc, "exit_code", 0)
            if code == 130:
                print("sidrec: interrupted", file=sys.stderr)
            sys.exit(code)
        if type(exc).__name__ == "Abort" or isinstance(exc, typer.Abort):
            if isinstance(exc.__context__, KeyboardInterrupt):
                print("sidrec: interrupted", file=sys.stderr)
                sys.exit(130)
            print("sidrec: aborted", file=sys.stderr)
            sys.exit(1)
        err = _click_error(exc)
        if err is not None:
            if type(err).__name__ == "NoArgsIsHelpError":  # bare `sidrec` / `sidrec data`: the help, exit 0
                print(err.ctx.get_help() if getattr(err, "ctx", None) else err.format_message())
                sys.exit(0)
            ctx = getattr(err, "ctx", None)
            hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
            print(f"sidrec: error: {_one_line(err.format_message())}{hint}", file=sys.stderr)
            sys.exit(2)
        if isinstance(exc, OSError) and not os.environ.get("SIDREC_DEBUG"):
            # a full disk, a folder that vanished: the environment's problem, reported like a user error
            where = f": {exc.filename}" if getattr(exc, "filename", None) else ""
            print(f"sidrec: error: {exc.strerror or _one_line(str(exc))}{where} (SIDREC_DEBUG=1 shows where)",
                  file=sys.stderr)
            sys.exit(2)
        raise
    if isinstance(rv, int) and rv:  # typer returns an exit code (130 for Ctrl-C) in non-standalone mode
        if rv == 130:
            print("sidrec: interrupted", file=sys.stderr)
        sys.exit(rv)


if __name__ == "__main__":
    main()
