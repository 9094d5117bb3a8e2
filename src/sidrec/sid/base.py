"""The tokenizer protocol and the registry of tokenizer kinds.

Why a protocol: every method (TIGER, DIGER, ACERec, DREAM) needs the same four things from a tokenizer --
fit it once on the catalogue, encode items it never saw (cold items arriving later) without refitting,
decode codes back to a vector (reconstruction diagnostics), and save / load it next to the run. State is
stored as safetensors (tensors, no pickle) plus a JSON with the kind and the settings, so a saved
tokenizer can be inspected and is loaded by the right class.
"""

from __future__ import annotations

import dataclasses
import json
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from sidrec.errors import SidrecError
from sidrec.io import atomic_path, write_json
from sidrec.sid.config import KINDS, TokenizerConfig

STATE_FILE = "tokenizer.safetensors"
META_FILE = "tokenizer.json"
FORMAT_VERSION = 1


def check_input(emb: np.ndarray, dim: int | None = None, source: str = "embeddings") -> np.ndarray:
    """Validate embeddings (2-D, finite, expected width) and return them as contiguous float32."""
    emb = np.asarray(emb)
    if emb.ndim != 2:
        raise SidrecError(f"{source}: expected a 2-D array (items x dim), got shape {emb.shape}")
    if emb.shape[0] == 0:
        raise SidrecError(f"{source}: no rows to tokenize")
    if dim is not None and emb.shape[1] != dim:
        raise SidrecError(f"{source}: the tokenizer was fitted on dimension {dim}, got {emb.shape[1]}")
    if not np.issubdtype(emb.dtype, np.number):
        raise SidrecError(f"{source}: expected numbers, got dtype {emb.dtype}")
    emb = np.ascontiguousarray(emb, dtype=np.float32)
    bad = ~np.isfinite(emb)
    if bad.any():
        rows = np.flatnonzero(bad.any(1))
        raise SidrecError(f"{source}: {len(rows)} rows contain NaN or inf (first: row {rows[0]})")
    return emb


def check_codes(codes: np.ndarray, sizes: list[int], source: str = "codes") -> np.ndarray:
    """Validate an integer code matrix against per-level codebook sizes."""
    codes = np.asarray(codes)
    if codes.ndim != 2 or codes.shape[1] != len(sizes):
        raise SidrecError(f"{source}: expected shape (n, {len(sizes)}), got {codes.shape}")
    if codes.size and not np.issubdtype(codes.dtype, np.integer):
        raise SidrecError(f"{source}: expected integer codes, got dtype {codes.dtype}")
    codes = codes.astype(np.int64, copy=False)
    hi = np.asarray(sizes, dtype=np.int64)
    bad = (codes < 0) | (codes >= hi)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise SidrecError(f"{source}: code {codes[r, c]} at row {r}, level {c + 1} is outside [0, {hi[c]})")
    return codes


class Tokenizer(ABC):
    """Maps item embeddings (n, d) to code matrices (n, L).

    Subclasses implement ``_fit``, ``_encode``, ``_decode``, ``_state`` and ``_load_state``; the base class
    validates inputs and does the saving so every kind reports bad input the same way.
    """

    kind: ClassVar[str] = ""

    def __init__(self, cfg: TokenizerConfig) -> None:
        self.cfg = cfg
        self.dim: int | None = None

    # ------------------------------------------------------------------ public API
    @property
    def seed(self) -> int:
        return 0 if self.cfg.seed is None else int(self.cfg.seed)

    @property
    @abstractmethod
    def codebook_sizes(self) -> list[int]:
        """Number of codes at each position of the (unresolved) SID."""

    @property
    def n_levels(self) -> int:
        return len(self.codebook_sizes)

    @property
    def fitted(self) -> bool:
        return self.dim is not None

    def fit(self, embeddings: np.ndarray) -> Tokenizer:
        """Learn the codebooks from the catalogue's embeddings (deterministic for a given seed)."""
        emb = check_input(embeddings, source=f"{self.kind} fit embeddings")
        smallest = min(self.codebook_sizes)
        if emb.shape[0] < smallest:
            raise SidrecError(
                f"{self.kind}: {emb.shape[0]} items are fewer than the {smallest} codes of a codebook; "
                "use smaller tokenizer.codebook_sizes / subspace_codes or more items"
            )
        self.dim = int(emb.shape[1])
        self._fit(emb)
        return self

    def encode(self, embeddings: np.ndarray) -> np.ndarray:
        """Codes (n, L) int64 for any items, including ones never seen at fit time."""
        self._require_fitted()
        emb = check_input(embeddings, self.dim, source=f"{self.kind} encode embeddings")
        codes = np.asarray(self._encode(emb), dtype=np.int64)
        return codes

    def fit_encode(self, embeddings: np.ndarray) -> np.ndarray:
        """Fit, then return the codes of the fitted items (what the SID table is built from)."""
        return self.fit(embeddings).encode(embeddings)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """Reconstruct embeddings (n, d) from codes; used for reconstruction diagnostics."""
        self._require_fitted()
        codes = check_codes(codes, self.codebook_sizes, source=f"{self.kind} decode codes")
        return np.asarray(self._decode(codes), dtype=np.float32)

    def residual_space(self, embeddings: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        """The vectors the residual quantiser reads for these items and its per-level codebooks.

        Why: a model that refines the SIDs (DREAM's CART) must start *at* the static SIDs; it can only do so in
        the space where they were assigned (nearest codeword, residual by residual). Kinds without residual
        codebooks in one space (PQ/OPQ) say so.
        """
        raise SidrecError(f"the {self.kind} tokenizer has no residual codebooks to start from "
                          "(dream.cart.space=base needs an rqvae or rqkmeans run; otherwise dream.cart.space=embedding)")

    def save(self, directory: str | Path) -> None:
        """Write ``tokenizer.json`` + ``tokenizer.safetensors`` into ``directory`` (atomically, as a whole)."""
        self._require_fitted()
        tensors = {k: v.detach().cpu().contiguous() if isinstance(v, torch.Tensor) else torch.from_numpy(
            np.ascontiguousarray(v)) for k, v in self._state().items()}
        meta = {
            "format_version": FORMAT_VERSION,
            "kind": self.kind,
            "dim": self.dim,
            "codebook_sizes": self.codebook_sizes,
            "settings": dataclasses.asdict(self.cfg),
            "extra": self._meta(),
        }
        with atomic_path(directory, is_dir=True) as tmp:
            save_file(tensors, str(tmp / STATE_FILE))
            write_json(tmp / META_FILE, meta)

    @classmethod
    def load(cls, directory: str | Path) -> Tokenizer:
        """Load a saved tokenizer; loading one of another kind through a subclass is a SidrecError."""
        meta, tensors = _read(directory)
        kind = meta.get("kind")
        _import_kind(kind)
        target = _REGISTRY.get(kind) if cls is Tokenizer else cls
        if target is None or (cls is not Tokenizer and kind != cls.kind):
            want = cls.kind if cls is not Tokenizer else "one of " + ", ".join(_REGISTRY)
            raise SidrecError(f"{directory}: saved tokenizer is of kind '{kind}', expected {want}")
        cfg = _config_from(meta.get("settings", {}), directory)
        tok = target(cfg)
        tok.dim = int(meta["dim"])
        tok._load_state(tensors, meta.get("extra", {}))
        return tok

    # ------------------------------------------------------------------ for subclasses
    @abstractmethod
    def _fit(self, emb: np.ndarray) -> None: ...

    @abstractmethod
    def _encode(self, emb: np.ndarray) -> np.ndarray: ...

    @abstractmethod
    def _decode(self, codes: np.ndarray) -> np.ndarray: ...

    @abstractmethod
    def _state(self) -> dict[str, Any]: ...

    @abstractmethod
    def _load_state(self, tensors: dict[str, torch.Tensor], extra: dict[str, Any]) -> None: ...

    def _meta(self) -> dict[str, Any]:
        return {}

    def _require_fitted(self) -> None:
        if not self.fitted:
            raise SidrecError(f"{self.kind} tokenizer is not fitted; call fit() or load() first")


def _read(directory: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    d = Path(directory)
    meta_path, state_path = d / META_FILE, d / STATE_FILE
    if not meta_path.exists() or not state_path.exists():
        raise SidrecError(f"{d}: not a saved tokenizer (needs {META_FILE} and {STATE_FILE})")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as exc:
        raise SidrecError(f"{meta_path}: invalid JSON ({exc.msg})") from None
    if meta.get("format_version") != FORMAT_VERSION:
        raise SidrecError(f"{meta_path}: unsupported format_version {meta.get('format_version')!r}")
    return meta, load_file(str(state_path))


def _config_from(settings: dict[str, Any], where: str | Path) -> TokenizerConfig:
    names = {f.name for f in dataclasses.fields(TokenizerConfig)}
    unknown = set(settings) - names
    if unknown:
        raise SidrecError(f"{where}: saved tokenizer settings have unknown keys {sorted(unknown)}")
    return TokenizerConfig(**settings)


_REGISTRY: dict[str, type[Tokenizer]] = {}


def register(cls: type[Tokenizer]) -> type[Tokenizer]:
    """Class decorator: make a tokenizer kind available to :func:`build_tokenizer` and :func:`load_tokenizer`."""
    _REGISTRY[cls.kind] = cls
    return cls


_MODULES = {"rqkmeans": "sidrec.sid.rqkmeans", "rqvae": "sidrec.sid.rqvae", "opq": "sidrec.sid.opq",
            "pq": "sidrec.sid.opq"}


def _import_kind(kind: Any) -> None:
    """Import the module of one tokenizer kind (its ``@register`` runs on import); unknown kinds are ignored."""
    import importlib

    if isinstance(kind, str) and kind in _MODULES:
        importlib.import_module(_MODULES[kind])


def build_tokenizer(cfg: TokenizerConfig) -> Tokenizer:
    """An unfitted tokenizer of ``cfg.kind``."""
    _import_kind(cfg.kind)
    if cfg.kind not in _REGISTRY:
        raise SidrecError(f"unknown tokenizer.kind '{cfg.kind}' (choose from {', '.join(KINDS)})")
    if cfg.collisions not in ("append", "refuse"):
        raise SidrecError(f"tokenizer.collisions must be 'append' or 'refuse', got '{cfg.collisions}'")
    return _REGISTRY[cfg.kind](cfg)


def load_tokenizer(directory: str | Path) -> Tokenizer:
    """Load a saved tokenizer of whatever kind it is."""
    meta, _ = _read(directory)
    _import_kind(meta.get("kind"))
    return Tokenizer.load(directory)
