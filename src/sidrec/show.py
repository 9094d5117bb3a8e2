"""Recommendations a person can read: each item with its title (or another field), the history echoed the same way,
and the score named for what it is.

Why: a list of ASINs and unlabelled numbers cannot be judged by eye, which is the first thing a new user does with a
trained model; and a score whose kind is unknown (a logit? a cosine?) invites comparisons that mean nothing.
"""

from __future__ import annotations

import html
from typing import Any

from rich.table import Table

from sidrec.errors import SidrecError

# the field shown by default: the first of these any item has
LABEL_FIELDS = ("title", "text", "keywords", "description", "brand", "categories")
HISTORY_SHOWN = 10  # the history's last items echoed; earlier ones are counted


def label_field(ds: Any, field: str | None = None) -> str | None:
    """The item field to show: ``field`` when given (it must exist), else the first of :data:`LABEL_FIELDS` any
    item has a value for; ``None`` when the dataset has no text at all."""
    if field:
        if field not in ds.items:
            known = ", ".join(f for f in ds.items) or "none"
            raise SidrecError(f"--show {field}: dataset '{ds.name}' has no item field '{field}' (its fields: {known})")
        return field
    cov = ds.field_coverage()
    return next((f for f in LABEL_FIELDS if cov.get(f, 0) > 0), None)


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list | tuple):
        return ", ".join(t for t in (_text(v) for v in value) if t)
    return " ".join(html.unescape(str(value)).split())


def item_labels(ds: Any, field: str | None) -> dict[str, str]:
    """Original item id -> the text of ``field`` ('' where the item has none, or no field)."""
    if field is None:
        return {}
    return {iid: _text(v) for iid, v in zip(ds.item_ids, ds.items[field], strict=True)}


def score_name(task: Any) -> str:
    """What a recommendation's score is, from the run's method and its content fusion."""
    if task.cfg.method == "content":
        return "cosine"
    f = getattr(task, "fusion", None)
    if f is not None and not f.off:
        if f.grouped:  # cold items re-ranked as a group (issue 58): the score is the grouped fusion's
            return f"grouped fusion of log-probability and cosine ({f.name()})"
        lam = f"{f.lam:g}" if f.lam == f.lam_cold else f"{f.lam:g}, cold {f.lam_cold:g}"
        return f"log-probability + {lam} x cosine"
    return "logit" if getattr(task, "logits_unnormalised", False) else "log-probability"


def records(recs: list[tuple[str, float | None]], labels: dict[str, str], field: str | None) -> list[dict[str, Any]]:
    """``[{"rank", "item", "score", FIELD}]``: ids and scores kept, the label added (when there is a field); a
    history's items (score ``None``) get no score."""
    return [{"rank": r, "item": item, **({"score": score} if score is not None else {}),
             **({field: labels.get(item, "")} if field else {})} for r, (item, score) in enumerate(recs, 1)]


def history_table(name: str, history: list[str], labels: dict[str, str], field: str | None) -> Table:
    """The history's last :data:`HISTORY_SHOWN` items, oldest first, labelled like the recommendations."""
    shown = history[-HISTORY_SHOWN:]
    earlier = len(history) - len(shown)
    t = Table(title=f"history of {name} (oldest first{f'; {earlier} earlier items not shown' if earlier else ''})")
    t.add_column("#", justify="right")
    t.add_column("item", no_wrap=True)
    if field:
        t.add_column(field, overflow="fold")
    for n, item in enumerate(shown, earlier + 1):
        t.add_row(str(n), item, *([labels.get(item, "")] if field else []))
    return t


def recommendation_table(name: str, recs: list[tuple[str, float]], labels: dict[str, str], field: str | None,
                         score: str) -> Table:
    """Rank, item id, its label, and the score under its own name."""
    t = Table(title=f"top-{len(recs)} for {name}")
    t.add_column("rank", justify="right")
    t.add_column("item", no_wrap=True)
    if field:
        t.add_column(field, overflow="fold")
    t.add_column(score, justify="right")
    for r, (item, s) in enumerate(recs, 1):
        t.add_row(str(r), item, *([labels.get(item, "")] if field else []), f"{s:.4f}")
    return t
