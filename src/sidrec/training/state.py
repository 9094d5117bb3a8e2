"""Resume state without pickle: optimizer, scheduler and RNG states as safetensors + JSON.

Why not ``torch.save``: a ``checkpoints/last.state.pt`` is a pickle, and unpickling a file someone handed you
(a shared run directory, a downloaded checkpoint) runs whatever code it names. The state is a tree of dicts,
lists, tuples, numbers, strings, tensors and numpy arrays; :func:`save_state` stores every tensor in a
safetensors file and the rest of the tree as JSON in the same file's metadata, so loading can only ever
build data, never call code. :func:`load_state` checks that the file is complete and ours before anything
is handed back; the trainer then validates each field against the run it resumes.

Runs of the first release wrote a pickled ``last.state.pt``; it is refused by name, never unpickled.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sidrec.errors import SidrecError
from sidrec.io import atomic_path

STATE_FILE = "last.state.safetensors"
LEGACY_STATE_FILE = "last.state.pt"
_META_KEY = "sidrec_resume_state"
_FORMAT = 1


def _encode(obj: Any, tensors: dict[str, torch.Tensor], path: str) -> Any:
    """A JSON-able copy of ``obj`` whose tensors are moved to ``tensors`` (named by their tree path)."""
    if isinstance(obj, torch.Tensor):
        key = path or "root"
        tensors[key] = obj.detach().cpu().contiguous()
        return {"__tensor__": key}
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": obj.tolist(), "dtype": str(obj.dtype)}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, bool | int | float | str) or obj is None:
        return obj
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, tensors, f"{path}.{i}") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, tensors, f"{path}.{i}") for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj) and not any(k.startswith("__") for k in obj):
            return {k: _encode(v, tensors, f"{path}.{k}") for k, v in obj.items()}
        # optimizer state is keyed by parameter index (int): keep the key type
        return {"__items__": [[_encode(k, tensors, f"{path}.k{i}"), _encode(v, tensors, f"{path}.{i}")]
                              for i, (k, v) in enumerate(obj.items())]}
    raise TypeError(f"resume state at '{path}': cannot store a {type(obj).__name__}")


def _decode(obj: Any, tensors: dict[str, torch.Tensor], where: str) -> Any:
    if isinstance(obj, list):
        return [_decode(v, tensors, where) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__tensor__" in obj:
        key = obj["__tensor__"]
        if key not in tensors:
            raise SidrecError(f"{where}: incomplete resume state (tensor '{key}' is missing)")
        return tensors[key]
    if "__ndarray__" in obj:
        try:
            return np.asarray(obj["__ndarray__"], dtype=np.dtype(str(obj.get("dtype"))))
        except (TypeError, ValueError) as exc:
            raise SidrecError(f"{where}: malformed array in resume state ({exc})") from None
    if "__tuple__" in obj:
        return tuple(_decode(v, tensors, where) for v in obj["__tuple__"])
    if "__items__" in obj:
        items = obj["__items__"]
        if not isinstance(items, list) or not all(isinstance(p, list) and len(p) == 2 for p in items):
            raise SidrecError(f"{where}: malformed mapping in resume state")
        return {_decode(k, tensors, where): _decode(v, tensors, where) for k, v in items}
    return {k: _decode(v, tensors, where) for k, v in obj.items()}


def save_state(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` (a tree of plain data, tensors and numpy arrays) atomically, without pickle."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    tree = _encode(state, tensors, "")
    meta = {_META_KEY: json.dumps({"format": _FORMAT, "state": tree})}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


def load_state(path: str | Path) -> dict[str, Any]:
    """Read a file written by :func:`save_state`; a truncated or foreign file is a one-line error."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise SidrecError(f"{path}: unreadable resume state, truncated or not written by sidrec "
                          f"({str(exc).splitlines()[0][:160]})") from None
    if _META_KEY not in meta:
        raise SidrecError(f"{path}: not a sidrec resume state (no '{_META_KEY}' metadata)")
    try:
        doc = json.loads(meta[_META_KEY])
    except json.JSONDecodeError as exc:
        raise SidrecError(f"{path}: corrupt resume state metadata ({exc.msg})") from None
    if not isinstance(doc, dict) or doc.get("format") != _FORMAT or not isinstance(doc.get("state"), dict):
        raise SidrecError(f"{path}: unsupported resume state format (expected format {_FORMAT})")
    return _decode(doc["state"], tensors, str(path))


def require(state: dict[str, Any], path: str | Path, key: str, kind: type | tuple[type, ...]) -> Any:
    """``state[key]`` checked for presence and type; a missing or wrong field names the file and the field."""
    if key not in state:
        raise SidrecError(f"{path}: incomplete resume state (no '{key}')")
    value = state[key]
    if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        raise SidrecError(f"{path}: resume state field '{key}' has the wrong type (bool)")
    if not isinstance(value, kind):
        raise SidrecError(f"{path}: resume state field '{key}' has the wrong type ({type(value).__name__})")
    return value
