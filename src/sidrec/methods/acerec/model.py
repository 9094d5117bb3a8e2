"""ACERec: long semantic IDs merged by attention (Xia et al., "Unleash the Potential of Long Semantic IDs for
Generative Recommendation"), read top to bottom like the paper's method section.

**Why.** A long OPQ semantic ID (m = 32 codes x K = 256) describes an item far better than a 3-level RQ code,
but feeding 32 tokens per item to a sequence model is too slow, and mean-pooling them ("rigid aggregation")
blurs them. ACERec compresses each item's m code embeddings into k = 4 latent tokens with a small
cross-attention (the Attentive Token Merger), runs the sequence model over those, and predicts the next item
from one extra *intent token* per item. Because the m subspaces of a product quantiser are independent, the
next item is scored per subspace and the whole catalogue is ranked exactly by summing per-code
log-probabilities (:mod:`sidrec.decoding.holistic`): no beam search, no invalid IDs.

**1. Code embeddings.** One table ``E`` of shape (m, K, d): code ``c`` of subspace ``j`` embeds as
``E[j, c] + P[j]`` with a learned per-subspace position embedding ``P[j]``. ``E`` is tied with the output
heads (step 5).

**2. Item summary.** ``s_i = LN(mean)`` of ``mean = mean_j (E[j, c_ij] + P[j])``: one vector per item, used
to build the ATM queries, to initialise the intent token and as the item-level target of ISA. The paper passes
the mean through an MLP; read literally (``summary: residual``, ``LN(mean + MLP(mean))``) the MLP learns one
vector shared by every item within ~100 steps and the three parts that read ``s`` lose the item
(:meth:`ACERec.summarise`; docs/acerec.md).

**3. Attentive Token Merger (ATM).** k queries ``Q_i = Q_0 + reshape(W_q s_i)`` (learned base queries plus a
content-dependent part; ``W_q`` starts at std 0.02 because a large initial query projection collapses the k
latents onto one), cross-attention of ``Q_i`` over the item's m code embeddings, then residual MLP + LayerNorm
-> k latent tokens (compression r = m / k). In this block the item reaches the latents only through the
learned value and output projections, and while the model first learns popularity those keep almost none of it
(item-specific share of the latents .001 on Beauty; docs/acerec.md). ``atm_values: codes`` reads out the code
tokens themselves instead, per head a softmax-weighted mix of the item's code embeddings (no query residual, no
MLP), so a latent is a learned convex combination of the item's codes. Ablations (``merge``): ``mean`` pools
m / k consecutive subspaces per latent (rigid aggregation), ``mlp`` maps the flattened m code embeddings to k
latents with an MLP.

**4. Sequence.** Every history item becomes a block of k latents plus one intent token (initialised from
``s_i`` plus a learned type vector), so L items give L·(k+1) positions; each position also gets a learned
embedding of its item's position counted back from the most recent item, and of its slot inside the block.
Attention is **block-causal**: a position of block b (latent or intent) sees every position of blocks <= b,
its own block included, and nothing of later blocks; padding blocks (histories are left-padded) are never
attended to. The decoder-only Transformer (pre-LN :class:`~sidrec.models.layers.Block`) therefore gives, for
every block t, an intent state that has read items 1..t and no more: **the intent state of block t predicts
item t+1**, so every position of a user sequence is trained in one forward pass (like SASRec). Without the
intent token (ablation ``intent_token: false``) the block is k latents and the prediction state is the mean
of the block's latent states.

**5. Dual-granularity objective.**
- Multi-token prediction (MTP): the prediction state goes through m per-subspace residual heads
  ``h + SiLU(W_j h + b_j)`` with W_j = 0 at init as in RPG, so the state starts in the code-embedding space the
  cosine reads (the paper's LayerNorm + d x d map per subspace lost on Beauty validation, on the one-token design
  and on the full model, and was removed: docs/acerec.md); head j scores the K codes of subspace j by cosine
  against the tied code embeddings ``E[j]``, divided by the temperature gamma:
  ``L_MTP = -(1/m) sum_j log P(c_j = target code)``.
- Item-level semantic alignment (ISA, switch ``isa``): in-batch InfoNCE between the projected prediction
  state and the *next* item's summary ``s_{t+1}``, cosine / tau. The candidates are the distinct target items
  of the batch (an item appearing twice is one candidate, so it is never its own negative); from the logit of
  every negative j we subtract ``beta * log(1 + f_j) / max log(1 + f)`` (f = training frequency; the ``1 +``
  keeps never-seen items finite), so popular negatives are pushed down a little less.
- Optional reconstruction (``recon_weight`` alpha > 0): m per-subspace queries (the position embeddings)
  cross-attend over the k latents and must reproduce the item's code embeddings: ``1 - mean cos``. The
  targets are detached so the loss shapes the latents, not the code table.
- ``L = L_MTP + lambda * L_ISA + alpha * L_recon``.

**Inference.** :meth:`ACERec.log_probs` returns the (B, m, K) per-subspace log-probabilities after the most
recent history item; :class:`~sidrec.decoding.holistic.HolisticScorer` turns them into catalogue scores.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sidrec import precision
from sidrec.errors import SidrecError
from sidrec.methods.acerec.config import MERGES, ACERecConfig
from sidrec.models.layers import Block, MultiHeadAttention

PAPER_FFN_RATIO = 1024 / 448  # the paper's FFN width over its d_model


def ffn_width(d_model: int) -> int:
    """FFN width at the paper's ratio to ``d_model``, rounded to a multiple of 16 (1024 at d 448, 288 at d 128)."""
    return max(16, int(round(d_model * PAPER_FFN_RATIO / 16)) * 16)


def block_causal_mask(valid: torch.Tensor, block: int) -> torch.Tensor:
    """(B, T) item validity -> (B, T*block, T*block) SDPA mask (True = may attend).

    Position p of block b(p) may attend to position q iff b(q) <= b(p) and q's item is not padding; padded
    positions attend to themselves only (no NaN rows; they are never read).
    """
    b, t = valid.shape
    blk = torch.arange(t, device=valid.device).repeat_interleave(block)
    mask = (blk.view(-1, 1) >= blk.view(1, -1)).unsqueeze(0) & valid.repeat_interleave(block, 1).unsqueeze(1)
    return mask | torch.eye(t * block, dtype=torch.bool, device=valid.device).unsqueeze(0)


class AttentiveTokenMerger(nn.Module):
    """m code embeddings (N, m, d) + item summary (N, d) -> k latent tokens (N, k, d)."""

    def __init__(self, d: int, m: int, k: int, n_heads: int, ffn_dim: int, merge: str,
                 values: str = "projected", cosine_scale: float = 0.0) -> None:
        super().__init__()
        if merge not in MERGES:
            raise SidrecError(f"acerec.merge must be one of {', '.join(MERGES)}, got '{merge}'")
        if k > m:
            raise SidrecError(f"acerec.n_latents={k} is larger than the number of subspaces m={m}")
        self.merge, self.m, self.k, self.d = merge, m, k, d
        self.values = values if merge == "atm" else "projected"
        self.ln = nn.LayerNorm(d)
        if merge == "atm":
            self.base_queries = nn.Parameter(torch.randn(k, d) * d**-0.5)
            self.query_proj = nn.Linear(d, k * d)
            nn.init.normal_(self.query_proj.weight, std=0.02)
            nn.init.zeros_(self.query_proj.bias)
            self.ln_kv = nn.LayerNorm(d)
            # codes: the attention averages the code tokens themselves (no value / output projection) and
            # there is no query residual or MLP, so every latent is a weighted mean of the item's codes
            self.attn = MultiHeadAttention(d, n_heads, identity_values=self.values == "codes",
                                           cosine_scale=cosine_scale)
            if self.values != "codes":
                self.ln_mlp = nn.LayerNorm(d)
                self.mlp = nn.Sequential(nn.Linear(d, ffn_dim), nn.GELU(), nn.Linear(ffn_dim, d))
        elif merge == "mlp":
            self.mlp = nn.Sequential(nn.Linear(m * d, ffn_dim), nn.GELU(), nn.Linear(ffn_dim, k * d))

    def kv_table(self, table: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Keys and values (m, K, d) of every code token of a (m, K, d) code-token table.

        Why: the ATM's keys and values depend on the code token alone (LayerNorm and projections are
        per token), and the table E + P has only m x K rows, while a batch embeds ~1,500 items x 32 codes.
        Normalising and projecting the table once per step and gathering the rows is exact and ~6x cheaper.
        """
        if self.merge != "atm":
            return None
        h = self.ln_kv(table)
        return self.attn.k_proj(h), (table if self.values == "codes" else self.attn.values(h))

    def queries(self, summary: torch.Tensor) -> torch.Tensor:
        """The k content-dependent queries (N, k, d) of each item, from its summary."""
        return self.base_queries + self.query_proj(summary).view(len(summary), self.k, self.d)

    def attention_weights(self, x: torch.Tensor, summary: torch.Tensor) -> torch.Tensor:
        """Where each latent looks among the item's m code tokens: (N, heads, k, m), rows summing to 1.

        Why: mean pooling is the special case of uniform weights; ATM trained with dot-product logits drifts to
        one-hot weights on a few subspaces shared by every item (issue 46), which this makes measurable.
        """
        return self.attn.weights(self.queries(summary), self.ln_kv(x))

    def forward(self, x: torch.Tensor, summary: torch.Tensor,
                kv: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """``kv``: the items' gathered rows of :meth:`kv_table` (N, m, d) each; computed from ``x`` if absent."""
        n = x.shape[0]
        if self.merge == "mean":  # rigid aggregation: each latent pools ~m/k consecutive subspaces
            z = torch.stack([g.mean(1) for g in x.tensor_split(self.k, dim=1)], 1)
        elif self.merge == "mlp":
            z = self.mlp(x.reshape(n, self.m * self.d)).view(n, self.k, self.d)
        else:
            q = self.queries(summary)
            a = self.attn
            if kv is None:  # keys read the normalised code tokens; `codes` averages the raw ones
                h = self.ln_kv(x)
                kv = a.k_proj(h), (x if self.values == "codes" else a.values(h))
            read = a.attend(q, a.split_heads(kv[0]), a.split_heads(kv[1]))
            if self.values == "codes":  # per head, softmax(q k^T / sqrt(d_h)) over the item's own code tokens
                z = read
            else:
                z = q + read
                z = z + self.mlp(self.ln_mlp(z))
        return self.ln(z)


class ACERec(nn.Module):
    """ATM + intent tokens + block-causal Transformer over a catalogue with fixed long SIDs.

    ``item_codes`` (n_items, m) are the items' SIDs; ``codebook_size`` is K, or one size per subspace (the
    tables are padded to the largest and the codes beyond a subspace's size get probability 0); ``item_freq``
    (n_items,) training frequencies for ISA's popularity correction. Both are non-persistent buffers (rebuilt
    from the run's SID table and data split, never stored in checkpoints).
    """

    def __init__(self, item_codes: torch.Tensor, codebook_size: int | list[int], max_len: int, cfg: ACERecConfig,
                 item_freq: np.ndarray | torch.Tensor | None = None) -> None:
        super().__init__()
        codes = torch.as_tensor(item_codes, dtype=torch.long)
        sizes = [int(codebook_size)] * codes.shape[-1] if isinstance(codebook_size, int) else list(codebook_size)
        if codes.dim() != 2 or len(sizes) != codes.shape[1] or (codes < 0).any() or (codes >= torch.tensor(sizes)).any():
            raise SidrecError(f"ACERec needs (n_items, m) codes below the codebook sizes {sizes}; "
                              f"got shape {tuple(codes.shape)}")
        n_items, m = codes.shape
        d, k = cfg.d_model, cfg.n_latents
        if cfg.ffn_dim <= 0:
            cfg = dataclasses.replace(cfg, ffn_dim=ffn_width(d))
        codebook_size = max(sizes)
        self.cfg, self.n_items, self.m, self.K, self.k, self.max_len = cfg, n_items, m, codebook_size, k, max_len
        self.register_buffer("code_valid", torch.arange(codebook_size).view(1, -1) < torch.tensor(sizes).view(-1, 1),
                             persistent=False)
        self.block = k + 1 if cfg.intent_token else k
        self.partial_subspaces = [j for j, size in enumerate(sizes) if size < codebook_size]  # held on the host
        self.register_buffer("item_codes", codes, persistent=False)
        f = torch.zeros(n_items) if item_freq is None else torch.as_tensor(item_freq, dtype=torch.float32)
        logf = torch.log1p(f.clamp(min=0))
        self.register_buffer("pop", logf / logf.max().clamp(min=1e-12), persistent=False)
        self.register_buffer("sub_idx", torch.arange(m), persistent=False)

        # 1. code embeddings (tied with the MTP heads) and per-subspace positions
        self.code_emb = nn.Parameter(torch.randn(m, codebook_size, d) * d**-0.5)
        self.sub_pos = nn.Parameter(torch.randn(m, d) * d**-0.5)
        # 2. item summary
        # built only where something reads s (the ATM queries, the intent token, ISA): a parameter that gets no
        # gradient makes DistributedDataParallel refuse the model, and computing s would be wasted work
        self.uses_summary = cfg.merge == "atm" or cfg.intent_token or (cfg.isa and cfg.isa_weight > 0)
        if self.uses_summary:
            self.summary_norm = nn.LayerNorm(d)
            if cfg.summary != "ln":
                self.summary_mlp = nn.Sequential(nn.Linear(d, cfg.ffn_dim), nn.GELU(), nn.Linear(cfg.ffn_dim, d))
                # s starts as LN(mean of the code tokens): in the code-embedding space
                nn.init.zeros_(self.summary_mlp[2].weight)
                nn.init.zeros_(self.summary_mlp[2].bias)
        # 3. attentive token merger
        self.merger = AttentiveTokenMerger(d, m, k, cfg.n_heads, cfg.ffn_dim, cfg.merge, cfg.atm_values,
                                           cfg.atm_cosine_scale)
        # 4. intent token, positions, backbone
        self.intent_type = nn.Parameter(torch.zeros(d)) if cfg.intent_token else None
        self.item_pos = nn.Embedding(max_len, d)
        self.slot_emb = nn.Embedding(self.block, d)
        nn.init.normal_(self.item_pos.weight, std=d**-0.5)
        nn.init.normal_(self.slot_emb.weight, std=d**-0.5)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(d, cfg.n_heads, cfg.ffn_dim, cfg.dropout)
                                    for _ in range(cfg.n_layers))
        self.ln = nn.LayerNorm(d)
        # 5. heads: MTP (per-subspace projections, tied code embeddings), ISA projection, reconstruction
        # identity at init: the state is read against the code table as it is
        self.heads = nn.Parameter(torch.zeros(m, d, d))
        self.head_bias = nn.Parameter(torch.zeros(m, 1, d))
        self.isa_proj = nn.Linear(d, d) if cfg.isa and cfg.isa_weight > 0 else None
        self.recon = MultiHeadAttention(d, cfg.n_heads) if cfg.recon_weight > 0 else None

    # ------------------------------------------------------------------ items -> tokens
    def code_tokens(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes (..., m) -> code embeddings plus subspace positions (..., m, d)."""
        return self.code_emb[self.sub_idx, codes] + self.sub_pos

    def items(self, codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Codes (N, m) -> code tokens (N, m, d), summaries s_i (N, d), latents (N, k, d).

        The code-token table E + P (m, K, d), its LayerNorm and the ATM's key/value projections are computed
        once per call and gathered per item (:meth:`AttentiveTokenMerger.kv_table`), not once per item x code.
        """
        table = self.code_emb + self.sub_pos.unsqueeze(1)  # (m, K, d)
        x = table[self.sub_idx, codes]
        s = x.mean(1)  # read by nothing when not uses_summary
        if self.uses_summary:
            s = self.summarise(s)
        kv = self.merger.kv_table(table)
        if kv is not None:
            kv = (kv[0][self.sub_idx, codes], kv[1][self.sub_idx, codes])
        return x, s, self.merger(x, s, kv)

    def summarise(self, mean: torch.Tensor) -> torch.Tensor:
        """The item summary s_i from the mean of each item's code tokens (N, d), by ``acerec.summary``.

        ``ln`` (the default) is ``LN(mean)``: only the LayerNorm's bias is shared by every item. ``residual``,
        ``LN(mean + MLP(mean))``, reads the paper's "mean through an MLP" literally and loses the item: the mean
        of 32 code tokens is small (norm ~.24 at d 128), the MLP's first-layer bias dominates its input, and
        while popularity is what the model learns first the MLP adds a nearly item-independent vector several
        times the mean's norm, which the LayerNorm leaves little of the item in (Beauty: item-specific share
        of s .42 -> .001 in 100 steps; feeding the MLP a normalised mean collapsed the same way and was removed;
        issue 46, docs/lab/acerec.md).
        """
        if self.cfg.summary == "ln":
            return self.summary_norm(mean)
        return self.summary_norm(mean + self.summary_mlp(mean))

    # ------------------------------------------------------------------ sequence
    def sequence(self, latents: torch.Tensor, summary: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Per-item latents (B, T, k, d), summaries (B, T, d), validity (B, T) -> prediction states (B, T, d).

        The state of block t depends on items <= t only (block-causal mask) and predicts item t+1.
        """
        b, t = valid.shape
        x, mask = self._tokens(latents, summary, valid)
        for blk in self.blocks:
            x = blk(x, mask=mask)
        h = self.ln(x).view(b, t, self.block, -1)
        return h[:, :, -1] if self.cfg.intent_token else h.mean(2)

    def _tokens(self, latents: torch.Tensor, summary: torch.Tensor,
                valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The Transformer input (B, T*block, d): latents (+ intent token) with positions, and its mask."""
        b, t = valid.shape
        parts = [latents]
        if self.cfg.intent_token:
            parts.append((summary + self.intent_type).unsqueeze(2))
        x = torch.cat(parts, 2)  # (B, T, block, d)
        pos = torch.arange(t - 1, -1, -1, device=valid.device).clamp(max=self.max_len - 1)
        x = x + self.item_pos(pos).view(1, t, 1, -1) + self.slot_emb.weight.view(1, 1, self.block, -1)
        x = self.drop(x * valid.view(b, t, 1, 1)).reshape(b, t * self.block, -1)
        return x, block_causal_mask(valid, self.block)

    def encode_codes(self, codes: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """History given as codes (B, T, m) with validity (B, T) -> prediction states (B, T, d)."""
        b, t, m = codes.shape
        _, s, z = self.items(codes.masked_fill(~valid.unsqueeze(-1), 0).view(b * t, m))
        return self.sequence(z.view(b, t, self.k, -1), s.view(b, t, -1), valid)

    def encode(self, seq: torch.Tensor) -> torch.Tensor:
        """Left-padded item indices (B, T), -1 = padding -> prediction states (B, T, d)."""
        valid = seq >= 0
        return self.encode_codes(self.item_codes[seq.clamp(min=0)], valid)

    # ------------------------------------------------------------------ heads
    def code_logits(self, h: torch.Tensor) -> torch.Tensor:
        """Prediction states (N, d) -> per-subspace code logits (N, m, K): cosine to the tied E[j] / gamma."""
        return self.subspace_logits(h).transpose(0, 1)

    def subspace_logits(self, h: torch.Tensor) -> torch.Tensor:
        """:meth:`code_logits` laid out subspace-major, (m, N, K): the layout the batched matmuls produce, so
        the training loss reads it without copying (N x m x K is the largest tensor of a step)."""
        q = h.unsqueeze(0) + F.silu(torch.einsum("nd,mde->mne", h, self.heads) + self.head_bias)
        q = F.normalize(q, dim=-1)
        e = F.normalize(self.code_emb, dim=-1)
        logits = torch.bmm(q, e.transpose(1, 2)) / self.cfg.gamma
        # only subspaces with unused code slots (the collision code's) are masked, in place: the division's
        # output is not needed by any backward
        for j in self.partial_subspaces:
            logits[j].masked_fill_(~self.code_valid[j], float("-inf"))
        return logits

    @torch.no_grad()
    def log_probs(self, seq: torch.Tensor, items: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """Per-subspace log-probabilities (B, m, K) of the item following each left-padded history (B, T).

        Inference computes only what the answer depends on: with ``items`` (:meth:`item_table`, the summaries
        and latents of the whole catalogue, computed once per evaluation) no item is merged again per user,
        and the last layer runs its queries for the most recent block only (the only state that is read).
        """
        if items is None:
            h = self.encode(seq)[:, -1]
        else:
            s_all, z_all = items
            idx = seq.clamp(min=0)
            h = self.last_state(z_all[idx], s_all[idx], seq >= 0)
        # the read-out runs in fp32 even under bf16 autocast: cosine logits / gamma reach ~1/gamma, where bf16's
        # spacing is a quarter of a nat, and an item's score is a sum of m such terms -- items whose codes differ
        # in one subspace (e.g. only the collision code) then tie (measured: 6.9% of top-10 slots on 4-code
        # IDs in bf16, 0.01% with this fp32 read-out). It is one (B, d) x (d, m*K) product per user batch.
        with precision.fp32(h.device):
            return self.code_logits(h.float()).log_softmax(-1)

    @torch.no_grad()
    def item_table(self, chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
        """Summaries (N, d) and latents (N, k, d) of every catalogue item (eval mode: deterministic)."""
        s_parts, z_parts = [], []
        for lo in range(0, self.n_items, chunk):
            _, s, z = self.items(self.item_codes[lo:lo + chunk])
            s_parts.append(s)
            z_parts.append(z)
        return torch.cat(s_parts), torch.cat(z_parts)

    def last_state(self, latents: torch.Tensor, summary: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """The prediction state (B, d) after the most recent item: :meth:`sequence`'s last row, cheaper.

        All layers but the last run as in :meth:`sequence`; the last one computes queries for the final block
        only. Under the block-causal mask the final block sees every valid position, so this is exact.
        """
        x, mask = self._tokens(latents, summary, valid)
        for blk in self.blocks[:-1]:
            x = blk(x, mask=mask)
        last = self.blocks[-1]
        hn = last.ln1(x)
        q = x[:, -self.block:]
        q = q + last.drop(last.attn(hn[:, -self.block:], memory=hn, mask=mask[:, -self.block:]))
        q = q + last.drop(last.ffn(last.ln2(q)))
        h = self.ln(q)
        return h[:, -1] if self.cfg.intent_token else h.mean(1)

    # ------------------------------------------------------------------ training
    def forward(self, seq: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Loss of left-padded histories (B, T) whose position t is followed by ``target[:, t]`` (-1 = none).

        Items are embedded once per distinct item of the batch (histories and targets together), then
        gathered into the sequence; the ISA candidates are the batch's distinct targets.
        """
        valid, tmask = seq >= 0, target >= 0
        uniq, inv = torch.unique(torch.cat([seq[valid], target[tmask]]), return_inverse=True)
        x_u, s_u, z_u = self.items(self.item_codes[uniq])
        b, t = seq.shape
        slot = torch.zeros(b, t, dtype=torch.long, device=seq.device)
        slot.masked_scatter_(valid, inv)  # the first valid.sum() entries of inv are the histories' (no host read)
        h = self.sequence(z_u[slot], s_u[slot], valid)[tmask]  # (N, d), one row per (position, next item)
        tgt = target[tmask]
        mtp = F.cross_entropy(self.subspace_logits(h).float().flatten(0, 1), self.item_codes[tgt].t().flatten())
        parts = {"mtp": mtp.detach()}
        loss = mtp
        if self.isa_proj is not None:
            parts["isa"] = self.isa_loss(h, tgt, uniq, s_u)
            loss = loss + self.cfg.isa_weight * parts["isa"]
        if self.recon is not None:
            parts["recon"] = self.recon_loss(x_u, z_u)
            loss = loss + self.cfg.recon_weight * parts["recon"]
        # the terms, unweighted, for the trainer's epoch log (read against the unigram code entropy)
        self.loss_parts = {k: v.detach() for k, v in parts.items()}
        return loss

    def isa_loss(self, h: torch.Tensor, tgt: torch.Tensor, uniq: torch.Tensor, s_u: torch.Tensor) -> torch.Tensor:
        """In-batch InfoNCE between projected states (N, d) and the summaries of their next items."""
        cand, label = torch.unique(tgt, return_inverse=True)
        s = F.normalize(s_u[torch.searchsorted(uniq, cand)], dim=-1)
        assert self.isa_proj is not None
        u = F.normalize(self.isa_proj(h), dim=-1)
        logits = (u @ s.t()).float() / self.cfg.isa_tau
        neg = torch.ones_like(logits, dtype=torch.bool).scatter_(1, label.view(-1, 1), False)
        logits = logits - self.cfg.pop_beta * self.pop[cand].view(1, -1) * neg
        return F.cross_entropy(logits, label)

    def recon_loss(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """1 - mean cosine between the code tokens (N, m, d) and their reconstruction from the latents (N, k, d)."""
        assert self.recon is not None
        q = self.sub_pos.unsqueeze(0).expand(len(z), -1, -1)
        rec = self.recon(q, memory=z)
        return 1 - F.cosine_similarity(rec.float(), x.detach().float(), dim=-1).mean()
