"""Tokenizer diagnostics: is the codebook used, are SIDs unique, how much content do they keep?

Why these numbers: a SID model is only as good as its vocabulary, and the two classic failures are silent.
*Collapse* -- a few codes take most items -- shows up as low utilisation (fraction of codes used) and low
perplexity (``exp`` of the usage entropy: the number of equally-used codes the usage is worth). *Collisions*
-- items sharing a SID -- make items indistinguishable to the recommender. Reconstruction error says how
much of the embedding the codes keep. A level below ``collapse_threshold`` in utilisation or in
perplexity share (perplexity / K) is flagged in the report.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from sidrec.sid.collisions import collision_stats


def level_usage(codes: np.ndarray, sizes: list[int]) -> list[np.ndarray]:
    """Per level, how many items use each code."""
    return [np.bincount(codes[:, lv], minlength=k) for lv, k in enumerate(sizes)]


def usage_stats(counts: np.ndarray) -> dict[str, float]:
    k = len(counts)
    p = counts / max(1, counts.sum())
    nz = p[p > 0]
    entropy = float(-(nz * np.log(nz)).sum())
    return {"codes": k, "used": int((counts > 0).sum()), "utilization": float((counts > 0).mean()),
            "entropy": entropy, "perplexity": float(np.exp(entropy)), "perplexity_share": float(np.exp(entropy) / k),
            "max_share": float(p.max()) if k else 0.0}


def report(codes: np.ndarray, sizes: list[int], resolved: np.ndarray | None = None, emb: np.ndarray | None = None,
           recon: np.ndarray | None = None, collapse_threshold: float = 0.1) -> dict[str, Any]:
    """The ``tokenizer_report.json`` content for unresolved ``codes`` (n, L) and optionally resolved ones."""
    levels = [usage_stats(c) for c in level_usage(codes, sizes)]
    out: dict[str, Any] = {"items": int(len(codes)), "levels": levels,
                           "utilization": [lv["utilization"] for lv in levels],
                           "perplexity": [lv["perplexity"] for lv in levels],
                           "collisions_before": collision_stats(codes).as_dict()}
    if resolved is not None:
        out["collisions_after"] = collision_stats(resolved).as_dict()
        out["sid_length"] = int(resolved.shape[1])
    if emb is not None and recon is not None:
        err = ((emb.astype(np.float64) - recon) ** 2).sum(1)
        out["reconstruction_mse"] = float(err.mean() / emb.shape[1])
        out["reconstruction_rel"] = float(err.sum() / max(1e-12, (emb.astype(np.float64) ** 2).sum()))
    collapsed = [i + 1 for i, lv in enumerate(levels)
                 if lv["utilization"] < collapse_threshold or lv["perplexity_share"] < collapse_threshold]
    out["collapsed_levels"] = collapsed
    out["warnings"] = [f"level {i}: codebook collapse (utilisation {levels[i - 1]['utilization']:.1%}, perplexity "
                       f"{levels[i - 1]['perplexity']:.1f} of {levels[i - 1]['codes']})" for i in collapsed]
    return out


def plot_usage(codes: np.ndarray, sizes: list[int], path: str | Path, title: str = "") -> None:
    """Heat map of per-level code usage (levels x codes, log scale), written atomically as PNG.

    Codes are sorted by usage within each level, so a flat band means balanced usage and a bright left
    edge with a dark tail means collapse.
    """
    plot_usage_panels({title or "code usage per level, log(1 + items)": codes}, sizes, path)


def plot_usage_panels(panels: dict[str, np.ndarray], sizes: list[int], path: str | Path) -> None:
    """One usage heat map per labelled code matrix, stacked on a shared colour scale (e.g. start vs end).

    A shared scale is what makes snapshots comparable: collapse during training shows as the bright left
    edge growing from one panel to the next.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sidrec.io import atomic_path

    width = max(sizes)
    grids = []
    for codes in panels.values():
        grid = np.full((len(sizes), width), np.nan)
        for lv, c in enumerate(level_usage(codes, sizes)):
            grid[lv, :len(c)] = np.sort(c)[::-1]
        grids.append(np.log1p(grid))
    vmax = max(float(np.nanmax(g)) for g in grids)
    fig, axes = plt.subplots(len(grids), 1, figsize=(8, (0.45 * len(sizes) + 1.2) * len(grids)), squeeze=False)
    for ax, (label, grid) in zip(axes[:, 0], zip(panels, grids, strict=True), strict=True):
        im = ax.imshow(grid, aspect="auto", interpolation="nearest", cmap="viridis", vmin=0.0, vmax=vmax)
        ax.set_xlabel("code (sorted by usage)")
        ax.set_ylabel("level")
        ax.set_yticks(range(len(sizes)), [str(i + 1) for i in range(len(sizes))])
        ax.set_title(label)
        fig.colorbar(im, ax=ax, fraction=0.03)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)
