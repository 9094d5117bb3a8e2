"""How much of ACERec's item summary ``s_i`` is item-specific during training, per ``acerec.summary`` form (issue 46).

``s_i`` feeds the intent token, the ATM queries and ISA's target. The *item-specific share* of a set of vectors
``v_i`` is ``sum_i ||v_i - mean(v)||^2 / sum_i ||v_i||^2``: 1 when nothing is shared between items, 0 when every
item gets the same vector. It is measured on the whole catalogue at initialisation and every ``--every`` steps of
training the full ACERec (ATM k = 4, intent token, ISA; ``configs/acerec.yaml``, Beauty with the benchmark run's
OPQ table, the configured batches; AdamW at ``train.lr`` held constant, clipping as configured), for the mean of the
code tokens, for ``s``, for the ATM queries built from it and for the k latents ATM returns (with the ratio of
its attention read-out's norm to the query's it is added to), and how ATM's attention weights spread over the
item's subspaces (:func:`attention_spread`). ``key=value`` settings after the options change
the model (e.g. ``acerec.intent_token=false acerec.isa=false``: ATM alone) and are named in the records.

Usage: python benchmarks/acerec_summary.py [--dataset beauty] [--forms residual ln] [--steps 600] [--table RUN]
       [key=value ...]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from sidrec.config import load_config
from sidrec.data.protocol import LeaveOneOut
from sidrec.methods.registry import get_builder
from sidrec.pipeline import dataset_from_config, seed_everything

from _common import REPO, copy_tokenizer_stage, record, save


def share(v: torch.Tensor) -> float:
    c = v - v.mean(0, keepdim=True)
    return float((c * c).sum() / (v * v).sum().clamp(min=1e-12))


@torch.no_grad()
def attention_spread(merger, xi: torch.Tensor, s: torch.Tensor) -> dict[str, float]:
    """Where the ATM queries look among an item's m code tokens (weights ``p`` (n, heads, k, m)).

    Mean pooling reads every subspace with weight 1 / m; these numbers say how far ATM's softmax is from that:
    ``atm_attn_entropy`` the mean entropy of one latent-head's weights / log m (1 = uniform), ``atm_attn_coverage``
    exp(entropy) / m of the item's weights averaged over its latents and heads (the share of its subspaces its
    latents read at all), ``atm_attn_share`` the item-specific share of the weights (0 = every item looks at
    the same subspaces), ``atm_attn_top_subspace`` the largest mean weight any subspace receives over the catalogue.
    """
    n, m = len(s), xi.shape[1]
    p = merger.attention_weights(xi, s)
    ent = -(p * p.clamp(min=1e-12).log()).sum(-1)
    pm = p.mean((1, 2))
    cover = (-(pm * pm.clamp(min=1e-12).log()).sum(-1)).exp() / m
    return {"atm_attn_entropy": float(ent.mean() / torch.log(torch.tensor(float(m)))),
            "atm_attn_coverage": float(cover.mean()), "atm_attn_share": share(p.reshape(n, -1)),
            "atm_attn_top_subspace": float(pm.mean(0).max())}


@torch.no_grad()
def shares(model) -> dict[str, float]:
    model.eval()
    x = model.code_emb + model.sub_pos.unsqueeze(1)
    mean = x[model.sub_idx, model.item_codes].mean(1)
    s = model.summarise(mean)
    out = {"share_mean": share(mean), "share_s": share(s)}
    merger = model.merger
    if merger.merge == "atm":
        out.update(attention_spread(merger, x[model.sub_idx, model.item_codes], s))
    if merger.merge == "atm" and merger.values == "codes":  # the latents are the normalised read-out itself
        out["share_atm_latents"] = share(merger(x[model.sub_idx, model.item_codes], s).reshape(len(s), -1))
    elif merger.merge == "atm":
        q = merger.queries(s)
        out["share_atm_queries"] = share(q.reshape(len(s), -1))
        # the k latents the sequence model reads, and how large the item's attention read-out is against the
        # (mostly shared) query it is added to before the MLP and the LayerNorm
        xi = x[model.sub_idx, model.item_codes]
        a = merger.attn(q, memory=merger.ln_kv(xi))
        out["share_atm_readout"] = share(a.reshape(len(s), -1))  # the attention's read-out of the item's codes
        z = q + a
        added = merger.mlp(merger.ln_mlp(z))
        out["share_atm_before_mlp"] = share(z.reshape(len(s), -1))  # query + read-out
        out["share_atm_mlp"] = share(added.reshape(len(s), -1))  # what the MLP adds
        out["atm_mlp_to_before_norm"] = float(added.norm(dim=-1).mean() / z.norm(dim=-1).mean())
        out["share_atm_latents"] = share(merger(xi, s).reshape(len(s), -1))
        out["atm_readout_to_query_norm"] = float(a.norm(dim=-1).mean() / q.norm(dim=-1).mean())
    model.train()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="beauty")
    ap.add_argument("--forms", nargs="+", default=["residual", "ln"])
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--every", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--table", default=None, help="a benchmark run whose OPQ table to share (default "
                    "runs/bench/acerec-DATASET-rpg when it is there)")
    args, overrides = ap.parse_known_args()
    tag = "".join(f", {o}" for o in overrides)
    torch.set_num_threads(args.threads)
    files = [REPO / "configs" / "data" / f"{args.dataset}.yaml", REPO / "configs" / "acerec.yaml"]
    if args.dataset == "beauty":
        files.append(REPO / "configs" / "opq-whitened.yaml")
    # the benchmark's OPQ table, when it is there
    src = Path(args.table) if args.table else REPO / "runs" / "bench" / f"acerec-{args.dataset}-rpg"
    recs = []
    for form in args.forms:
        run = REPO / "runs" / "bench" / ("-".join([f"acerec-summary-{args.dataset}-{form}"]
                                                 + [o.split(".")[-1].replace("=", "") for o in overrides]))
        if src.exists():
            copy_tokenizer_stage(src, run)
        cfg = load_config(files, [f"acerec.summary={form}", f"run_dir={run}", f"seed={args.seed}",
                                  "train.progress=false", "tokenizer.progress=false", *overrides])
        seed_everything(cfg.seed)
        ds = dataset_from_config(cfg)
        split = LeaveOneOut.from_dataset(ds, cfg.data.max_len, cfg.data.cold_threshold)
        run.mkdir(parents=True, exist_ok=True)
        task = get_builder("acerec")(cfg, ds, split, run)
        seed_everything(cfg.seed)
        model = task.model
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.train.lr,
                                weight_decay=cfg.train.weight_decay)
        t0 = time.time()
        curve = {0: shares(model)}
        step, epoch = 0, 0
        model.train()
        while step < args.steps:
            for batch in task.train_batches(epoch):
                loss = task.loss(model, batch)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
                opt.step()
                step += 1
                if step % args.every == 0:
                    curve[step] = shares(model)
                    print(form, step, {k: round(v, 3) for k, v in curve[step].items()}, flush=True)
                if step >= args.steps:
                    break
            epoch += 1
        for s, m in curve.items():
            recs.append(record(args.dataset, "acerec", f"summary {form}{tag}, step {s}", "train", "items",
                               {**m, "step": s}, time.time() - t0, args.threads))
    save("acerec_summary", recs)


if __name__ == "__main__":
    main()
