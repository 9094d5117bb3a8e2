"""Render every ``benchmarks/results/*.json`` into the tables of docs/RESULTS.md.

The tables are written between ``<!-- results:start -->`` and ``<!-- results:end -->``; prose outside the
markers is kept. So docs/RESULTS.md can never show a number that no script produced.

First come the protocol tables: one per protocol (``exclude``, ``keep``; a record's ``protocol``), test split, all
users, each row the mean +/- sd over the seeds recorded for (dataset, method, variant), so the two protocols are
never mixed in one table. Only records written since the protocol became one setting (they carry ``seed``, None
for the deterministic content and popularity rankers) enter them; earlier model-alone rows are labelled ``keep``. Records
labelled ``legacy`` (the fusion's former query-item rule) or ``mixed`` (evaluated with seen items excluded but
selected on the other protocol) appear only in the per-file tables.
"""

from __future__ import annotations

import json
import statistics

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
    head = ["dataset", "method", "variant", "protocol", "seed", "split", "subset", *keys, "wall_s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in records:
        row = [r["dataset"], r["method"], r["variant"], r.get("protocol") or "", r.get("seed", ""), r["split"],
               r["subset"]]
        row += [_fmt(r["metrics"].get(k, "")) for k in keys] + [f"{float(r['wall_s']):.1f}"]
        lines.append("| " + " | ".join(str(x) for x in row) + " |")
    machines = sorted({r["machine"] for r in records})
    commands = sorted({r["command"] for r in records})
    dates = sorted({r["date"] for r in records})
    lines += ["", "Machine: " + "; ".join(machines), "", "Produced by: " + ", ".join(f"`{c}`" for c in commands),
              f" ({', '.join(dates)})"]
    return "\n".join(lines)


def _mean_sd(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def protocol_tables(files: dict[str, list[dict]]) -> str:
    """Per protocol: test / all users, R@10 and N@10 (mean +/- sd over seeds), cold N@10, seeds, lambda."""
    out = []
    for protocol, what in (("exclude", "the user's history items removed from every ranking (the headline)"),
                           ("keep", "history items ranked like any item (the TIGER / ACERec papers' protocol)")):
        groups: dict[tuple, dict[str, list]] = {}
        for name, recs in files.items():
            for r in recs:
                if r.get("protocol") != protocol or r["split"] != "test" or r["subset"] not in ("all", "cold"):
                    continue
                if "ndcg@10" not in r["metrics"] or "seed" not in r:  # records written under the one-protocol rule
                    continue
                g = groups.setdefault((r["dataset"], r["method"], r["variant"], name), {"all": [], "cold": [],
                                                                                       "seeds": [], "lambda": []})
                g[r["subset"]].append(r["metrics"])
                if r["subset"] == "all":
                    g["seeds"].append("-" if r["seed"] is None else r["seed"])
                    if r.get("fusion"):
                        f = r["fusion"]
                        lift = f"+{f['cold_lift']:g}" if f.get("grouped") else ""
                        edge = "*" if f.get("at_grid_edge") else ""
                        g["lambda"].append(f"{f['lambda']:g}/{f['lambda_cold']:g}{lift}{edge}")
        lines = [f"### Protocol `{protocol}`: {what}", "",
                 "Test split, all users; mean ± sd over the seeds listed. λ: warm/cold chosen on validation per seed "
                 "(* at the grid's edge).", "",
                 "| dataset | method | variant | R@10 | N@10 | cold N@10 | seeds | λ | file |",
                 "|---|---|---|---|---|---|---|---|---|"]
        for (ds, method, variant, name), g in sorted(groups.items()):
            r10 = _mean_sd([m["recall@10"] for m in g["all"]])
            n10 = _mean_sd([m["ndcg@10"] for m in g["all"]])
            cold = _mean_sd([m["ndcg@10"] for m in g["cold"]]) if g["cold"] else ""
            lines.append(f"| {ds} | {method} | {variant} | {r10} | {n10} | {cold} | "
                         f"{', '.join(str(x) for x in g['seeds'])} | {', '.join(g['lambda'])} | {name} |")
        out.append("\n".join(lines) + "\n")
    return "\n".join(out)


def main() -> None:
    files = {f.name: json.loads(f.read_text()) for f in sorted(RESULTS.glob("*.json"))}
    parts = [protocol_tables(files)]
    for f in sorted(RESULTS.glob("*.json")):
        recs = files[f.name]
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
