"""Render every ``benchmarks/results/*.json`` into the tables of docs/RESULTS.md.

The tables are written between ``<!-- results:start -->`` and ``<!-- results:end -->``; prose outside the
markers is kept. So docs/RESULTS.md can never show a number that no script produced.
"""

from __future__ import annotations

import json

from sidrec.io import write_text

from _common import REPO, RESULTS

DOC = REPO / "docs" / "RESULTS.md"
START, END = "<!-- results:start -->", "<!-- results:end -->"
# preferred metric order; anything else follows alphabetically
ORDER = ["users", "items", "interactions", "test_users_cold", "test_users_warm", "recall@5", "ndcg@5", "recall@10",
         "ndcg@10", "recall@20", "ndcg@20", "recall@50", "ndcg@50", "mrr", "tied@10", "n_users"]
SKIP = {"seq_len_mean"}


def _fmt(v: object) -> str:
    if isinstance(v, float):
        if v == int(v) and abs(v) >= 100:
            return f"{int(v):,}"
        return f"{v:.4f}" if abs(v) < 10 else f"{v:.1f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def table(records: list[dict]) -> str:
    keys: list[str] = []
    for r in records:
        for k in r["metrics"]:
            if k not in keys and k not in SKIP:
                keys.append(k)
    keys.sort(key=lambda k: (ORDER.index(k) if k in ORDER else len(ORDER), k))
    head = ["dataset", "method", "variant", "split", "subset", *keys, "wall_s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in records:
        row = [r["dataset"], r["method"], r["variant"], r["split"], r["subset"]]
        row += [_fmt(r["metrics"].get(k, "")) for k in keys] + [f"{float(r['wall_s']):.1f}"]
        lines.append("| " + " | ".join(str(x) for x in row) + " |")
    machines = sorted({r["machine"] for r in records})
    commands = sorted({r["command"] for r in records})
    dates = sorted({r["date"] for r in records})
    lines += ["", "Machine: " + "; ".join(machines), "", "Produced by: " + ", ".join(f"`{c}`" for c in commands),
              f" ({', '.join(dates)})"]
    return "\n".join(lines)


def main() -> None:
    parts = []
    for f in sorted(RESULTS.glob("*.json")):
        recs = json.loads(f.read_text())
        if recs:
            parts.append(f"### `{f.relative_to(REPO)}`\n\n{table(recs)}\n")
    body = "\n".join(parts)
    doc = DOC.read_text() if DOC.exists() else f"# Results\n\n{START}\n{END}\n"
    if START not in doc:
        doc += f"\n{START}\n{END}\n"
    pre, rest = doc.split(START, 1)
    post = rest.split(END, 1)[1] if END in rest else ""
    write_text(DOC, f"{pre}{START}\n\n{body}\n{END}{post}")
    print(f"wrote {DOC}")


if __name__ == "__main__":
    main()
