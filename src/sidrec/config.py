"""Typed configuration: dataclass schema, YAML layers and dotted command-line overrides.

Why a typed schema instead of free dictionaries: a typo such as ``train.lr_rate=1e-3`` must fail loudly
(naming ``train.lr``) instead of being silently ignored, and a wrong type (``train.epochs=ten``) must fail
before an hour of training. Layers are merged in order: schema defaults -> YAML files (each may name a
``base`` file it extends) -> ``key.sub=value`` overrides. The resolved config is saved in every run
directory so a run can be reproduced from it alone.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sidrec.dream.config import DREAMConfig
from sidrec.errors import SidrecError
from sidrec.methods.acerec.config import ACERecConfig
from sidrec.methods.diger.config import DIGERConfig
from sidrec.methods.sasrec.config import SASRecConfig
from sidrec.methods.tiger.config import TIGERConfig
from sidrec.sid.config import TokenizerConfig


@dataclass
class DataConfig:
    """Where the interactions come from and how they are split."""

    path: str = "synthetic"  # a raw dataset path, a prepared directory, or "synthetic"
    # the reader of data.path (docs/formats.md); auto: detected from the files present
    format: typing.Literal["auto", "prepared", "s3rec", "lcrec", "recbole", "amazon", "tabular"] = "auto"
    name: str = ""  # display name; defaults to the folder name
    max_len: int = 50  # history truncation (most recent items kept)
    cold_threshold: int = 5  # a target is cold when it has <= this many training interactions
    kcore: int = 0  # k-core filtering for raw review dumps (0 = as given)
    synthetic_users: int = 3000  # data.path=synthetic: users generated (sidrec.data.synthetic)
    synthetic_items: int = 600  # data.path=synthetic: items generated, each with a title and text
    synthetic_seed: int = 7  # data.path=synthetic: the generator's seed (fixed apart from seed: one dataset, many runs)
    # value ranges, checked when a config is read (sidrec.config.validate_config)
    RANGES: typing.ClassVar[dict[str, str]] = {"max_len": "> 0", "cold_threshold": ">= 0", "kcore": ">= 0",
        "synthetic_users": "in [1, 1000000]", "synthetic_items": "in [1, 1000000]"}


@dataclass
class FeaturesConfig:
    """Item content -> dense vectors."""

    # text (sentence embedding of the item text), attributes (TF-IDF + SVD of the item fields), npy (features.npy_path);
    # auto: npy when features.npy_path is set, text when any item has a text field, else attributes
    kind: typing.Literal["auto", "text", "attributes", "npy"] = "auto"
    model: str = "all-MiniLM-L6-v2"  # sentence-transformers name or path; the default loads offline
    # auto: every text field the reader provides (title, text, description, brand, categories, keywords,
    # category paths; see sidrec.features.core.AUTO_TEMPLATE); or a format string such as "{title}. {brand}"
    template: str = "auto"
    min_text_coverage: float = 0.95  # text embeddings stop with an error when more items than this lack text
    npy_path: str = ""  # precomputed (n_items, d) array when kind == npy
    svd_dim: int = 128  # attribute features: TF-IDF -> truncated SVD dimension
    batch_size: int = 128  # texts embedded together (memory of the sentence encoder, not a result)
    cache_dir: str = ""  # "" = $SIDREC_CACHE/features (default ~/.cache/sidrec/features; sidrec.io.cache_root)
    # value ranges, checked when a config is read (sidrec.config.validate_config)
    RANGES: typing.ClassVar[dict[str, str]] = {"min_text_coverage": "in [0, 1]", "svd_dim": "> 0",
        "batch_size": "> 0"}


@dataclass
class TrainConfig:
    """The shared trainer (all models)."""

    epochs: int = 200  # most passes over the training rows; early stopping (train.patience) usually ends sooner
    batch_size: int = 256  # training rows per optimiser step
    lr: float = 1e-3  # the peak learning rate of AdamW, reached after the warm-up
    weight_decay: float = 0.0  # AdamW's decoupled weight decay
    warmup_steps: int = 100  # steps of linear warm-up from 0 to train.lr (a stable start for the Transformers)
    min_lr_ratio: float = 0.05  # the floor of the schedule, as a fraction of train.lr
    # after the warm-up: cosine (decay to min_lr_ratio over train.epochs, or over the steps train.max_minutes
    # allows) or plateau (the peak rate, cut by plateau_factor after every plateau_patience validations without
    # improvement, never below min_lr_ratio; an early-stopped run reaches the low rates a cosine sized to 200
    # epochs never does, issue #27) or constant (the peak rate throughout: the SASRec-line peers' plain Adam at one
    # rate, issue 57; with warmup_steps 0 it has no warm-up either)
    schedule: typing.Literal["cosine", "plateau", "constant"] = "cosine"
    plateau_factor: float = 0.5  # schedule=plateau: the rate is multiplied by this at every plateau
    plateau_patience: int = 3  # schedule=plateau: validations without improvement that make a plateau
    grad_clip: float = 1.0  # clip the global gradient norm to this (0 = off): guards against loss spikes
    bf16: typing.Literal["auto", "true", "false"] = "auto"  # auto: bf16 only where the hardware runs it natively
    patience: int = 10  # epochs of no validation improvement (of select_metric) before stopping
    # the validation metric that picks the best epoch and drives early stopping: ndcg@K, recall@K (K one of
    # eval.ks) or mrr. The fusion's lambda is still chosen on NDCG@10. Why a setting: the SASRec-line peers select
    # on validation NDCG@20 (issue 57); sidrec's numbers are selected on ndcg@10
    select_metric: str = "ndcg@10"
    eval_every: int = 1  # validate every this many epochs (the last epoch is always validated)
    eval_users: int = 0  # 0 = all validation users; else a fixed random subset (faster early stopping)
    # wall-clock budget of the whole `train` command (0 = none): set-up, training, the validation at the cap, the
    # fusion choice and the test; the training steps stop early enough for the evaluations after them (their cost
    # per user measured before training and at every validation), so the command ends within ~one evaluation of it
    max_minutes: float = 0.0
    threads: int = 0  # torch intra-op threads, 0 = library default
    # where the run computes: auto (a GPU when one is visible, else the CPU), cpu, cuda or cuda:N; training,
    # evaluation, decoding, fusion and the tokenizers follow it (sidrec.device)
    device: str = "auto"
    # torch.compile the model for training (off: no measured gain on the CPU; docs/gpu.md)
    compile: bool = False
    tensorboard: bool = False  # also log loss and metrics to RUN/tensorboard (needs the tensorboard package)
    progress: bool = True  # progress bars in a terminal (a redirected run prints one line per epoch instead)
    # value ranges, checked when a config is read (sidrec.config.validate_config)
    RANGES: typing.ClassVar[dict[str, str]] = {"epochs": "> 0", "batch_size": "> 0", "lr": "in (0, 10]",
        "weight_decay": "in [0, 1]", "warmup_steps": ">= 0", "min_lr_ratio": "in [0, 1]", "grad_clip": ">= 0",
        "plateau_factor": "in [0, 1]", "plateau_patience": "> 0",
        "patience": "> 0", "eval_every": "> 0", "eval_users": ">= 0", "max_minutes": ">= 0", "threads": ">= 0"}


@dataclass
class EvalConfig:
    """Full-catalogue ranking metrics."""

    ks: list[int] = field(default_factory=lambda: [5, 10, 20, 50])  # the cut-offs K of Recall@K and NDCG@K; must hold 10
    # how the user's own history is ranked, for every method and every fused ranking alike (one rule, applied by
    # the evaluator, the beam search and `recommend`): `exclude` removes every history item from the ranking (the
    # headline: 5-core Amazon sequences never repeat an item, and it is how RecBole, cornac and the strongest ID
    # models evaluate); `keep` ranks history items like any other item (the protocol of the TIGER / ACERec papers).
    # Early stopping and the fusion's lambda are chosen on this protocol's validation metric.
    protocol: typing.Literal["exclude", "keep"] = "exclude"
    # the other protocol, selected from the same training: its own early stopping (patience counted on its own
    # validation metric, frozen once spent, as a separate run's would be), its own fusion and test, written to
    # RUN/<protocol>/ as a complete run folder. Training never reads the protocol (the cosine schedule does not
    # depend on validation; validation draws no random numbers), so the result equals a second run with the same
    # seed at half the cost (tests/test_history_protocol.py checks it). `none`: one protocol per run.
    also_protocol: typing.Literal["none", "exclude", "keep"] = "none"
    batch_size: int = 1024  # users scored together against the full catalogue (memory: users x items scores)
    buckets: list[int] = field(default_factory=lambda: [5, 10, 15, 20])  # upper bounds; last bucket is >20
    # false: a model-selection run stops at validation (no test metrics are computed), so settings are chosen
    # without reading test; the chosen setting is then trained again with test on
    test: bool = True
    # value ranges, checked when a config is read (sidrec.config.validate_config)
    RANGES: typing.ClassVar[dict[str, str]] = {"ks": "> 0", "batch_size": "> 0", "buckets": "> 0"}


@dataclass
class ContentConfig:
    """The content signal: cosine of every item's vector (``features``) to a query built from the user's
    most recent items. Ranks items on its own (``method: content``) and grounds every trained model (``fusion``)."""

    # the query: the last n history items, the item k steps back weighing decay**k (last 3 / decay .3 chosen on
    # validation for the content ranker on Beauty, Sports and Toys and for SASRec's fusion on Beauty; docs/content.md)
    query_items: int = 3
    decay: float = 0.3  # the weight of the item k steps back is decay**k (see content.query_items)
    index: typing.Literal["flat", "ivf"] = "flat"  # top-K search of `sidrec recommend`: exact, or IVF (~1M+ items)
    nlist: int = 0  # ivf: inverted lists (0 = 4 x sqrt(n_items))
    nprobe: int = 16  # ivf: lists visited per query
    # value ranges, checked when a config is read (sidrec.config.validate_config)
    RANGES: typing.ClassVar[dict[str, str]] = {"query_items": "> 0", "decay": "in [0, 1]", "nlist": ">= 0",
        "nprobe": "> 0"}


@dataclass
class FusionConfig:
    """Late fusion: final score = model log-probability + lambda x content similarity (lambda_cold for cold
    items); both chosen on validation after training from these grids, without retraining."""

    # [0] = off. Up to 200: on Toys the beam-search TIGER's best lambda was 50, the edge of the first grid
    lambdas: list[float] = field(default_factory=lambda: [0, 1, 2, 4, 6, 8, 10, 12, 15, 20, 30, 50, 75, 100, 200])
    cold: bool = True  # choose a separate lambda for cold items (<= data.cold_threshold training interactions)
    candidates: int = 100  # beam-search models: the content top-N scored beside the beam's items
    # when the best lambda is the grid's largest, the grid goes on (x2 each time, at most this many times): a best
    # at the edge means the optimum may lie beyond it (three runs chose 200, the top of the grid, issue 56)
    extend: int = 4
    # the grouped fusion's lift of the cold items' share (nats added to the log-odds of "the next item is cold"
    # under the lambda-fused model), chosen on validation after lambda_cold (issue 58)
    cold_lifts: list[float] = field(default_factory=lambda: [-0.5, 0, 0.25, 0.5, 0.75, 1, 1.5, 2, 3])
    # the grouped fusion's weight of log(1 + training interactions) among the cold items (negative: the rarely
    # trained ones first), chosen on validation between lambda_cold and the lift; [0] = off (issue 58)
    cold_freqs: list[float] = field(default_factory=lambda: [-8, -6, -4, -3, -2, -1, -0.5, 0, 0.5, 1])
    # lambda_cold and the cold lift: chosen among the settings whose cold-target validation metric reaches the
    # content ranker's (any setting when none does); false: no floor
    cold_floor: bool = True
    # what lambda_cold and the cold lift maximise (above the floor): balanced = the mean of the warm and the cold
    # users' metric (each population counts as one: the cold share differs between splits and deployments), all =
    # the all-user metric
    cold_objective: typing.Literal["balanced", "all"] = "balanced"
    # the most the cold passes may cost the all-user validation metric, as a fraction of the model alone's: a
    # setting below (1 - cold_max_loss) x the model alone ranks after every one above it, floor or not, so the
    # fused ranking never trades the whole list for its cold targets. 0.05: the exclude choices of issue 58 cost
    # 0-3% on validation (and gained on test, where the cold share is larger); Beauty seed 44 under keep cost 14%
    # and ranked below SASRec alone on test (issue 58, docs/content.md)
    cold_max_loss: float = 0.05
    # value ranges, checked when a config is read (sidrec.config.validate_config)
    RANGES: typing.ClassVar[dict[str, str]] = {"lambdas": ">= 0", "candidates": ">= 0", "extend": ">= 0",
                                                "cold_lifts": "in [-20, 20]", "cold_freqs": "in [-20, 20]",
                                                "cold_max_loss": "in [0, 1]"}


@dataclass
class Config:
    """The whole run configuration; one section per component."""

    method: str = "sasrec"  # the model: sasrec, tiger, diger, acerec or content (sidrec.methods.registry)
    # which measured setting of the method the unset keys take (sidrec/presets/<method>-<size>.yaml): cpu (the
    # CPU-sized backbone, evaluation subset), paper (the paper's sizes, for a GPU), auto (paper where train.device
    # gives a CUDA GPU, else cpu; the run saves what it resolved to) or none (the schema's defaults, no preset)
    size: typing.Literal["auto", "cpu", "paper", "none"] = "auto"
    seed: int = 42  # seeds Python, numpy and torch (and the tokenizer unless tokenizer.seed): a run repeats exactly
    run_dir: str = ""  # the run folder the results are written to; "" = runs/<dataset>-<method>-<timestamp>
    data: DataConfig = field(default_factory=DataConfig)
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    sasrec: SASRecConfig = field(default_factory=SASRecConfig)
    tiger: TIGERConfig = field(default_factory=TIGERConfig)
    diger: DIGERConfig = field(default_factory=DIGERConfig)
    acerec: ACERecConfig = field(default_factory=ACERecConfig)
    dream: DREAMConfig = field(default_factory=DREAMConfig)
    content: ContentConfig = field(default_factory=ContentConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)


def _all_keys(cls: type, prefix: str = "") -> list[str]:
    keys: list[str] = []
    for f in dataclasses.fields(cls):
        t = _resolve(cls, f.name)
        name = f"{prefix}{f.name}"
        keys.append(name)
        if dataclasses.is_dataclass(t):
            keys.extend(_all_keys(t, name + "."))
    return keys


def _resolve(cls: type, name: str) -> Any:
    return typing.get_type_hints(cls)[name]


def _unknown_key(key: str) -> SidrecError:
    valid = _all_keys(Config)
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return SidrecError(f"unknown config key '{key}'{hint}")


_INT_LIMIT = 2**63


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check/convert one value against its declared type; raise a SidrecError naming the key."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(value, args[0], key)
    if tp is Any:
        return value
    if origin is typing.Literal:
        choices = typing.get_args(tp)
        if isinstance(value, bool):  # YAML reads true/false as booleans; these settings spell them as words
            value = "true" if value else "false"
        if str(value).lower() not in choices:
            close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise SidrecError(f"config key '{key}': expected one of {', '.join(map(str, choices))}, got {value!r}{hint}")
        return str(value).lower()
    if origin is list:
        (inner,) = typing.get_args(tp)
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, list | tuple):
            raise SidrecError(f"config key '{key}': expected a list, got {value!r}")
        return [_coerce(v, inner, key) for v in value]
    if origin is dict:
        if not isinstance(value, dict):
            raise SidrecError(f"config key '{key}': expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in {"true", "false", "yes", "no", "1", "0"}:
            return value.lower() in {"true", "yes", "1"}
        raise SidrecError(f"config key '{key}': expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            else:
                raise SidrecError(f"config key '{key}': expected an integer, got {value!r}")
        if not -_INT_LIMIT <= value < _INT_LIMIT:  # numpy and torch take 64-bit integers; beyond, a traceback
            raise SidrecError(f"config key '{key}': expected an integer of at most 64 bits (|value| < 2^63), "
                              f"got {value}")
        return value
    if tp is float:
        if isinstance(value, bool):
            raise SidrecError(f"config key '{key}': expected a number, got {value!r}")
        number: float | None = None
        if isinstance(value, int | float):
            number = float(value)
        elif isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                pass
        if number is None:
            raise SidrecError(f"config key '{key}': expected a number, got {value!r}")
        if not math.isfinite(number):  # lr=inf trains a NaN model; no setting means infinity
            raise SidrecError(f"config key '{key}': expected a finite number, got {value!r}")
        return number
    if tp is str:
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            return str(value)
        hint = ""
        if isinstance(value, dict | list | bool) or value is None:  # YAML read `{title}` as a mapping, `no` as false
            hint = "; the value was read as YAML, quote it to make it a string"
        raise SidrecError(f"config key '{key}': expected a string, got {value!r}{hint}")
    return value


# Settings measured worse and removed (the project keeps one mechanism per variant), with the value the code now
# always uses and where the measurement is. Why kept here: a run's config.yaml saves every key, so the runs trained
# while such a setting existed name it; they still load when they used what the code now does, and a run that used
# the removed value gets one line saying so instead of "unknown key".
RETIRED: dict[str, tuple[str, str]] = {
    "acerec.head": ("residual", "docs/acerec.md"),  # `linear` lost twice (issue 46, removed at 356e9ab)
}

# Settings renamed: old key -> (new key's name in the same section, how the old value maps to the new one). A run
# trained before the rename names the old key in its config.yaml and still loads.
RENAMED: dict[str, tuple[str, dict[str, str]]] = {
    "eval.exclude_history": ("protocol", {"true": "exclude", "false": "keep"}),
}


def _apply(obj: Any, data: dict[str, Any], prefix: str = "") -> None:
    """Recursively set fields of dataclass ``obj`` from a nested dict, validating keys and types."""
    if not isinstance(data, dict):
        raise SidrecError(f"config section '{prefix.rstrip('.') or '<root>'}' must be a mapping")
    names = {f.name for f in dataclasses.fields(obj)}
    for key, value in data.items():
        full = f"{prefix}{key}"
        if key not in names and full in RETIRED:
            kept, doc = RETIRED[full]
            if str(value).lower() == kept:
                continue
            raise SidrecError(f"config key '{full}: {value}' was removed after it was measured worse ({doc}); this "
                              f"version always uses '{kept}', so a run trained with '{value}' cannot be rebuilt")
        if key not in names and full in RENAMED:
            new, values = RENAMED[full]
            if str(value).lower() not in values:
                raise SidrecError(f"config key '{full}' (now '{prefix}{new}'): expected one of {sorted(values)}, "
                                  f"got {value!r}")
            key, full, value = new, f"{prefix}{new}", values[str(value).lower()]
        if key not in names:
            raise _unknown_key(full)
        tp = _resolve(type(obj), key)
        if dataclasses.is_dataclass(tp):
            _apply(getattr(obj, key), value or {}, full + ".")
        else:
            setattr(obj, key, _coerce(value, tp, full))


# ---------------------------------------------------------------------------------------------- value checks
# Choices are ``Literal`` types on the fields; value ranges sit beside the fields too, in each section's ``RANGES``
# (field name -> one of the range names below). Why checked here and not in each consumer: a nonsense value
# (batch_size 0, dropout 1.5) must fail when the config is read, naming the key, before a dataset is loaded or a
# run directory touched. tests/test_config.py checks that every numeric setting of every section has a range or is
# listed in ``_UNCHECKED``.
_POS, _NONNEG, _UNIT, _UNIT_OPEN, _AT_LEAST_1 = "> 0", ">= 0", "in [0, 1]", "in [0, 1)", ">= 1"
# a learning rate above 10 is never meant (AdamW's useful range is ~1e-5..1e-1) and 1e308 overflows in the optimizer;
# the embedded synthetic data is generated user by user: beyond a million users or items it would run for hours
_RATE, _RATE0, _SYNTH = "in (0, 10]", "in [0, 10]", "in [1, 1000000]"
# seeds go to numpy's legacy seeding (np.random.seed), which takes 0 .. 2^32-1 and raises on anything else
_SEED = "in [0, 4294967295]"
# the grouped fusion's cold lift is in nats of log-odds and may be negative; beyond +-20 (a factor of 5e8) it only
# ever means "content alone" or "model alone", which lambda_cold and lambda already say
_LIFT = "in [-20, 20]"
_RANGE_TESTS = {_POS: lambda v: v > 0, _NONNEG: lambda v: v >= 0, _UNIT: lambda v: 0 <= v <= 1,
                _UNIT_OPEN: lambda v: 0 <= v < 1, _AT_LEAST_1: lambda v: v >= 1, _RATE: lambda v: 0 < v <= 10,
                _RATE0: lambda v: 0 <= v <= 10, _SYNTH: lambda v: 1 <= v <= 1_000_000,
                _SEED: lambda v: 0 <= v <= 2**32 - 1, _LIFT: lambda v: -20 <= v <= 20}
_SEEDS = {"seed", "data.synthetic_seed", "tokenizer.seed"}
# numeric keys any value of which is meaningful (a negative lambda_kd means "derive it"; the CPDE gate's offset delta
# is in nats and may be negative)
_UNCHECKED = {"dream.lambda_kd", "dream.update_delta"}


def _rule_for(key: str) -> str | None:
    """The range of dotted setting ``key``, from the ``RANGES`` of the section that declares it."""
    if key in _SEEDS:
        return _SEED
    if key in _UNCHECKED:
        return None
    cls: Any = Config
    *path, last = key.split(".")
    for part in path:
        cls = typing.get_type_hints(cls).get(part)
        if cls is None or not dataclasses.is_dataclass(cls):
            return None
    return getattr(cls, "RANGES", {}).get(last)


def _check_value(key: str, value: Any, rule: Any) -> None:
    values = value if isinstance(value, list) else [value]
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int | float):
            continue
        ok = _RANGE_TESTS[rule](v)
        if not ok or v != v:  # NaN fails every range
            what = "every value " if isinstance(value, list) else ""
            raise SidrecError(f"config key '{key}': {what}must be {rule}, got {v!r}")


def _leaves(obj: Any, prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if dataclasses.is_dataclass(v):
            out.extend(_leaves(v, f"{prefix}{f.name}."))
        else:
            out.append((f"{prefix}{f.name}", v))
    return out


DEVICE_SETTING = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")  # train.device / tokenizer.device


def validate_config(cfg: Config) -> None:
    """Check every value against its section's ``RANGES``; the error names the key."""
    for key, value in _leaves(cfg):
        rule = _rule_for(key)
        if rule is not None:
            _check_value(key, value, rule)
    if not cfg.data.path.strip():
        raise SidrecError("config key 'data.path': empty; name a dataset file or folder, or 'synthetic'")
    if 10 not in cfg.eval.ks:  # the fusion choice reads NDCG@10
        raise SidrecError(f"config key 'eval.ks': must include 10 (checkpoints are chosen on NDCG@10), got {cfg.eval.ks}")
    m = re.fullmatch(r"(ndcg|recall)@(\d+)|mrr", cfg.train.select_metric)
    if m is None or (m.group(2) is not None and int(m.group(2)) not in cfg.eval.ks):
        raise SidrecError(f"config key 'train.select_metric': expected ndcg@K or recall@K with K in eval.ks "
                          f"{cfg.eval.ks}, or mrr; got '{cfg.train.select_metric}'")
    if cfg.method in ("tiger", "diger") and cfg.tiger.beam < 10:
        raise SidrecError(f"config key 'tiger.beam': at least 10 (checkpoints are chosen on NDCG@10 of the beam's "
                          f"item list, which holds at most tiger.beam items), got {cfg.tiger.beam}")
    if cfg.eval.also_protocol != "none":
        if cfg.eval.also_protocol == cfg.eval.protocol:
            raise SidrecError(f"config key 'eval.also_protocol': '{cfg.eval.also_protocol}' is the run's own protocol; "
                              "name the other one or 'none'")
        for key, bad, why in (("train.schedule", cfg.train.schedule == "plateau", "the plateau schedule's cuts follow "
                               "the run's own validation, so the other protocol's training would differ"),
                              ("train.max_minutes", cfg.train.max_minutes > 0, "a minute cap's stop depends on the "
                               "day's CPU, not on either protocol's validation")):
            if bad:
                raise SidrecError(f"config key 'eval.also_protocol': cannot be used with '{key}' ({why})")
    for key, value in (("train.device", cfg.train.device), ("tokenizer.device", cfg.tokenizer.device)):
        if not DEVICE_SETTING.match(str(value)):
            raise SidrecError(f"config key '{key}': expected auto, cpu, cuda or cuda:N, got '{value}'")
    from sidrec.methods.registry import check_method  # names only: no method code is imported

    check_method(cfg.method, "config key 'method': ")


def only_overrides(command: str, overrides: list[str] | None, allowed: tuple[str, ...]) -> None:
    """Refuse an override that ``command`` would not read (``allowed``: key prefixes such as ``"dream."`` or whole
    keys such as ``"seed"``): a setting silently ignored looks applied."""
    for text in overrides or []:
        key = parse_override(text)[0]
        if not any(key == a or (a.endswith(".") and key.startswith(a)) for a in allowed):
            names = ", ".join(a + "*" if a.endswith(".") else a for a in allowed)
            raise SidrecError(f"sidrec {command} does not read '{key}' (it reads only {names}); drop the override")


def parse_override(text: str) -> tuple[str, Any]:
    """Split ``a.b=value``; the value is parsed as YAML (so 3e-4, true, [5,10] work)."""
    if "=" not in text:
        raise SidrecError(f"override '{text}' must look like key.sub=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    if isinstance(value, str) and _looks_float(value):
        value = float(value)
    return key, value


def _looks_float(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return any(c in s.lower() for c in "e.") and not s.lower().startswith(("inf", "nan"))


def _nest(key: str, value: Any) -> dict[str, Any]:
    parts = key.split(".")
    out: dict[str, Any] = {parts[-1]: value}
    for p in reversed(parts[:-1]):
        out = {p: out}
    return out


# Path settings a config file may name, resolved relative to the folder of the file that names them (so a
# config works from any working directory). On the command line they stay relative to the working directory.
# features.cache_dir and run_dir stay relative to the working directory (outputs of the current job).
FILE_RELATIVE_KEYS = (("data", "path"), ("features", "npy_path"))
# resolved path -> (as written, config file): lets a "not found" name the file and the folder it was relative to
_PATH_ORIGINS: dict[str, tuple[str, str]] = {}


def _resolve_paths(data: dict[str, Any], path: Path) -> None:
    for section, key in FILE_RELATIVE_KEYS:
        sec = data.get(section)
        raw = sec.get(key) if isinstance(sec, dict) else None
        if not isinstance(raw, str) or not raw or raw == "synthetic" or Path(raw).expanduser().is_absolute():
            continue
        here = (path.parent / raw).resolve()
        if not here.exists() and Path(raw).exists():
            # configs written before paths were file-relative (a run's config.yaml saved by an older sidrec
            # holds paths relative to the working directory it ran in)
            here = Path(raw).resolve()
        sec[key] = str(here)
        _PATH_ORIGINS[str(here)] = (raw, str(path))


def describe_path(value: str) -> str:
    """``value`` with where it came from: the config file and its folder, or the working directory."""
    if value in _PATH_ORIGINS:
        raw, file = _PATH_ORIGINS[value]
        return f"'{raw}' (in {file}, relative to its folder {Path(file).parent}; i.e. {value})"
    if not Path(value).expanduser().is_absolute():
        return f"'{value}' (relative to the working directory {Path.cwd()})"
    return f"'{value}'"


class _DuplicateKey(Exception):
    """A key given twice in one mapping of a config file (raised while composing, reported by :func:`_read_yaml`)."""

    def __init__(self, key: str, first: int, second: int) -> None:
        super().__init__(key)
        self.key, self.first, self.second = key, first, second


class _ConfigLoader(yaml.SafeLoader):
    """PyYAML's safe loader without aliases and without duplicate keys.

    Aliases: ``*name`` lets a 1 kB file expand to gigabytes (a "billion laughs" config hung ``sidrec train``), and no
    setting needs one. Duplicate keys: YAML keeps the last, so a section written twice (``train:`` ... ``train:``)
    silently dropped the first block's settings (``epochs: 1`` became the default 200).
    """

    def compose_node(self, parent: Any, index: Any) -> Any:  # type: ignore[override]
        if self.check_event(yaml.events.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(None, None, "YAML aliases (*name) are not allowed in config files",
                                              event.start_mark)
        return super().compose_node(parent, index)

    def construct_document(self, node: Any) -> Any:  # type: ignore[override]
        _refuse_duplicates(node, "")
        return super().construct_document(node)


def _refuse_duplicates(node: Any, prefix: str) -> None:
    """Raise :class:`_DuplicateKey` for the first key that a mapping under ``node`` names twice (dotted path)."""
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                key, line = f"{prefix}{key_node.value}", key_node.start_mark.line + 1
                if key in seen:
                    raise _DuplicateKey(key, seen[key], line)
                seen[key] = line
                _refuse_duplicates(value_node, key + ".")
            else:
                _refuse_duplicates(value_node, prefix)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _refuse_duplicates(item, prefix)


def _read_yaml(path: Path, seen: set[Path]) -> list[dict[str, Any]]:
    path = path.resolve()
    if path in seen:
        raise SidrecError(f"{path}: config 'base' chain loops back to this file")
    seen.add(path)
    if not path.exists():
        raise SidrecError(f"{path}: config file not found")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_ConfigLoader) or {}  # noqa: S506 - safe loader
    except UnicodeDecodeError as exc:
        raise SidrecError(f"{path}: not a UTF-8 text file (byte {exc.start}: {exc.reason})") from None
    except RecursionError:
        raise SidrecError(f"{path}: nested too deeply to be a config file") from None
    except _DuplicateKey as dup:
        raise SidrecError(f"{path}:{dup.second}: duplicate key '{dup.key}' (first at line {dup.first}); YAML would keep "
                          "only the last one and silently drop the other: merge them into one") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise SidrecError(f"{path}{line}: invalid YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(data, dict):
        raise SidrecError(f"{path}: a config file must be a mapping of sections")
    _resolve_paths(data, path)
    layers: list[dict[str, Any]] = []
    base = data.pop("base", None)
    if base is not None and not (isinstance(base, str) or (isinstance(base, list)
                                                           and all(isinstance(b, str) for b in base))):
        raise SidrecError(f"{path}: 'base' must name a config file or a list of them, got {base!r}")
    for b in [base] if isinstance(base, str) else (base or []):
        layers.extend(_read_yaml((path.parent / b), seen))
    layers.append(data)
    return layers


PRESETS = Path(__file__).parent / "presets"


def gpu_visible() -> bool:
    """Whether this machine trains on a CUDA GPU by default, answered without importing torch (``import sidrec``
    and the config loader stay torch-free): torch's own answer when torch is already imported; otherwise a torch
    built with CUDA (its ``version.py`` read as text) and an NVIDIA GPU the driver lists, unless
    ``CUDA_VISIBLE_DEVICES`` hides them all. Why both: a driver beside a CPU-only torch still trains on the CPU."""
    import importlib.util
    import os
    import sys

    if "torch" in sys.modules:
        return bool(sys.modules["torch"].cuda.is_available())
    if os.environ.get("CUDA_VISIBLE_DEVICES", "unset").strip() in ("", "-1"):
        return False
    gpus = Path("/proc/driver/nvidia/gpus")
    if not gpus.is_dir() or not any(gpus.iterdir()):
        return False
    spec = importlib.util.find_spec("torch")
    version = Path(next(iter(spec.submodule_search_locations or []), "")) / "version.py" if spec else None
    if version is None or not version.is_file():
        return False
    return re.search(r"^cuda\b[^=]*=\s*['\"]", version.read_text(encoding="utf-8"), re.M) is not None


def resolve_size(size: str, device: str) -> str:
    """``size: auto`` -> ``paper`` when the run will train on a CUDA GPU, else ``cpu``; other sizes as given."""
    if size != "auto":
        return size
    if device == "cpu":
        return "cpu"
    return "paper" if device.startswith("cuda") or gpu_visible() else "cpu"


def preset_file(method: str, size: str) -> Path | None:
    """The preset of ``method`` at ``size`` (``sidrec/presets/<method>-<size>.yaml``), or None when the method has
    none (SASRec and the content ranker have one setting for every device) or ``size`` is ``none``."""
    path = PRESETS / f"{method}-{size}.yaml"
    return path if size != "none" and path.is_file() else None


def load_config(files: list[str | Path] | None = None, overrides: list[str] | None = None) -> Config:
    """Build a validated :class:`Config`: the schema's defaults, then the method's preset for the resolved
    ``size`` (:func:`preset_file`), then the YAML files, then the ``key=value`` overrides (applied in order).

    Why the preset sits under the files: ``method: tiger`` alone must give the setting that works on this
    machine (the paper's encoder-decoder evaluated on every user took 9 minutes an epoch on a 2-core CPU), while
    every key a file or override names still wins. The method and size are read from the files and overrides
    first, so a preset never depends on the order of the layers.
    """
    layers = [layer for f in files or [] for layer in _read_yaml(Path(f), set())]
    probe = _layered(Config(), layers, overrides)
    size = resolve_size(probe.size, probe.train.device)
    cfg = Config()
    preset = preset_file(probe.method, size)
    if preset is not None:
        for layer in _read_yaml(preset, set()):
            _apply(cfg, layer)
    cfg = _layered(cfg, layers, overrides)
    cfg.size = size  # type: ignore[assignment]  # the run saves the size it resolved to: a resume elsewhere is the same
    validate_config(cfg)
    return cfg


def _layered(cfg: Config, layers: list[dict[str, Any]], overrides: list[str] | None) -> Config:
    """``cfg`` with the file layers and then the overrides applied (the values are checked when applied)."""
    for layer in layers:
        _apply(cfg, layer)
    for ov in overrides or []:
        key, value = parse_override(ov)
        try:
            _apply(cfg, _nest(key, value))
        except SidrecError as exc:
            if "quote it" not in str(exc):
                raise
            raw = ov.split("=", 1)[1]
            raise SidrecError(f"{exc}: write the override as '{key}=\"{raw}\"' (the outer single quotes keep the "
                              "shell from removing the inner double quotes)") from None
    return cfg


def config_to_dict(cfg: Config) -> dict[str, Any]:
    """Plain nested dict of the resolved config."""
    return dataclasses.asdict(cfg)


def render_config(cfg: Config, descriptions: dict[str, str] | None = None) -> str:
    """The resolved config as YAML with every key of every section; a value that differs from the schema
    default says the default in a comment (``sidrec config show``). Loading the output gives the same config.

    ``descriptions`` (dotted key -> text): every key also gets its description as comment lines above it and its
    default beside it (``sidrec config show --explain`` passes :func:`sidrec.config_docs.descriptions`, the comments
    of the dataclasses; a parameter, not an import, so that the two modules do not import each other); the output
    is still a loadable config file."""
    import json
    import textwrap

    def scalar(v: Any) -> str:
        return json.dumps(v)  # JSON scalars and lists are YAML; strings come out quoted, so '{title}' stays one

    lines: list[str] = []
    explain = descriptions is not None
    about = descriptions or {}

    def emit(obj: Any, default: Any, depth: int, prefix: str) -> None:
        pad = "  " * depth
        for f in dataclasses.fields(obj):
            v, dv = getattr(obj, f.name), getattr(default, f.name)
            key = prefix + f.name
            if explain:
                lines.extend(textwrap.wrap(about.get(key, ""), 118 - len(pad), initial_indent=pad + "# ",
                                           subsequent_indent=pad + "# ", break_on_hyphens=False))
            if dataclasses.is_dataclass(v):
                lines.append(f"{pad}{f.name}:")
                emit(v, dv, depth + 1, key + ".")
            else:
                note = f"  # default: {scalar(dv)}" if explain or v != dv else ""
                lines.append(f"{pad}{f.name}: {scalar(v)}{note}")

    emit(cfg, Config(), 0, "")
    return "\n".join(lines) + "\n"


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config as YAML (atomically)."""
    from sidrec.io import write_text

    write_text(path, yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
