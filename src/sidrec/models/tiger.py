"""TIGER: generative retrieval with semantic IDs (Rajput et al., "Recommender Systems with Generative
Retrieval", NeurIPS 2023), as an encoder-decoder Transformer over SID tokens.

**Items as tokens.** Every item is a tuple of ``L`` codes (TIGER: 3 residual-quantisation levels plus one
code that separates colliding items, so L = 4). Code ``v`` at position ``l`` is its own token: the
vocabulary is the concatenation of the per-position codebooks, implemented as one embedding table where
position ``l`` starts at ``offsets[l]``. Two items that share their first code therefore share a token,
which is how the model transfers what it learns between similar items (and to cold ones).

**Encoder.** Input = [user token] + the flattened SIDs of the most recent ``max_len`` history items
(TIGER: 20), left-padded; padding is masked out of attention. The optional user token is a hashed user id
(2,000 buckets in the paper; ``user_buckets=0`` removes it). Each SID token also gets a learned embedding of
its item's position counted back from the most recent item, so "last item" means the same in every batch.
(The paper's T5 uses relative position buckets; absolute positions from the end are the simpler equivalent
for sequences this short.)

**Decoder.** Input = [BOS, c_1, ..., c_{L-1}] with learned positions; causal self-attention, cross-attention
to the encoder output. The hidden state at position ``l`` predicts code ``c_{l+1}`` through one output
layer over the whole code vocabulary restricted to position ``l``'s slice (equivalent to one head per
position). The training loss is the cross-entropy of the L codes of the next item, averaged over positions.

**Decoding.** :meth:`start_decoding` / :meth:`next_log_probs` implement
:class:`sidrec.decoding.beam.StepDecoder` for the trie-constrained beam search: the encoder runs once per
user, the cross-attention keys/values of each decoder layer are computed once per user and shared by all
beams (beams are folded into the query axis, the memory is never copied), and the decoder's self-attention
keeps a key/value cache reordered by beam parent at each step (``kv_cache=False`` recomputes the short
decoder prefix instead; see docs/tiger.md for the measured difference).

Defaults are the paper's: 4 + 4 layers, d_model 128, 6 heads x 64, FFN 1024, dropout 0.1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sidrec.models.layers import Block


@dataclass
class TIGERConfig:
    """The ``tiger`` config section: model shape (paper defaults) and decoding."""

    d_model: int = 128
    encoder_layers: int = 4
    decoder_layers: int = 4
    n_heads: int = 6
    head_dim: int = 64
    ffn_dim: int = 1024
    dropout: float = 0.1
    user_buckets: int = 2000  # hashed user token; 0 = no user token
    beam: int = 20  # beam width of the constrained search (returns at most this many items)
    eval_batch_users: int = 256  # users decoded together (each with `beam` hypotheses)
    kv_cache: bool = True  # decoder self-attention cache; false = recompute the <= L-token prefix each step


def hash_users(users: torch.Tensor, buckets: int) -> torch.Tensor:
    """Bucket of each user index (Knuth's multiplicative hash: neighbouring ids land far apart)."""
    return (users.long() * 2654435761) % buckets


@dataclass
class DecodeState:
    """Per-batch decoding state: cross-attention keys/values per decoder layer and the self-attention cache."""

    cross_kv: list[tuple[torch.Tensor, torch.Tensor]]  # per layer, (B, heads, S, head_dim)
    memory_mask: torch.Tensor  # (B, 1, S) True = attend
    self_kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None  # per layer, (B*W, heads, t, head_dim)


class TIGER(nn.Module):
    def __init__(self, sizes: list[int], max_len: int, cfg: TIGERConfig) -> None:
        super().__init__()
        d = cfg.d_model
        self.cfg = cfg
        self.sizes = [int(s) for s in sizes]
        self.length = len(self.sizes)
        self.max_len = max_len
        self.vocab = sum(self.sizes)
        self.register_buffer("offsets", torch.tensor([0] + self.sizes[:-1]).cumsum(0), persistent=False)
        self.code_emb = nn.Embedding(self.vocab + 1, d, padding_idx=self.vocab)  # last row = padding
        self.user_emb = nn.Embedding(cfg.user_buckets, d) if cfg.user_buckets > 0 else None
        self.item_pos = nn.Embedding(max_len, d)
        self.dec_pos = nn.Embedding(self.length, d)
        self.bos = nn.Parameter(torch.zeros(d))
        self.drop = nn.Dropout(cfg.dropout)

        def block(cross: bool) -> Block:
            return Block(d, cfg.n_heads, cfg.ffn_dim, cfg.dropout, head_dim=cfg.head_dim, cross=cross)

        self.encoder = nn.ModuleList(block(False) for _ in range(cfg.encoder_layers))
        self.encoder_ln = nn.LayerNorm(d)
        self.decoder = nn.ModuleList(block(True) for _ in range(cfg.decoder_layers))
        self.decoder_ln = nn.LayerNorm(d)
        self.head = nn.Linear(d, self.vocab)
        for emb in (self.code_emb, self.item_pos, self.dec_pos) + ((self.user_emb,) if self.user_emb else ()):
            nn.init.normal_(emb.weight, std=d**-0.5)
        nn.init.normal_(self.bos, std=d**-0.5)
        with torch.no_grad():
            self.code_emb.weight[self.vocab].zero_()

    # ------------------------------------------------------------------ encoder
    def encode(self, history: torch.Tensor, users: torch.Tensor | None = None,
               emb: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """History SIDs (B, T, L), left-padded with -1 -> encoder output (B, S, d) and its validity (B, S).

        ``emb`` (B, T, L, d) replaces the code-embedding lookup (DIGER feeds straight-through mixtures of
        code embeddings so the recommendation loss reaches the tokenizer); ``history`` still gives the mask.
        """
        b, t, length = history.shape
        valid = history >= 0
        if emb is None:
            tok = torch.where(valid, history + self.offsets, torch.full_like(history, self.vocab))
            emb = self.code_emb(tok)
        pos = torch.arange(t - 1, -1, -1, device=history.device).clamp(max=self.max_len - 1)
        x = emb + self.item_pos(pos).view(1, t, 1, -1)
        x, valid = x.view(b, t * length, -1), valid.view(b, t * length)
        if self.user_emb is not None:
            if users is None:
                raise ValueError("this TIGER has a user token: pass the user indices")
            u = self.user_emb(hash_users(users, self.cfg.user_buckets)).unsqueeze(1)
            x = torch.cat([u, x], 1)
            valid = torch.cat([valid.new_ones(b, 1), valid], 1)
        # a row with nothing to attend to would give NaN; let it see one (zero) padding token instead
        valid[:, -1] |= ~valid.any(1)
        x = self.drop(x)
        mask = valid.unsqueeze(1)
        for blk in self.encoder:
            x = blk(x, mask=mask)
        return self.encoder_ln(x), valid

    # ------------------------------------------------------------------ decoder
    def _dec_inputs(self, prefix: torch.Tensor, start: int = 0, emb: torch.Tensor | None = None) -> torch.Tensor:
        """Embeddings of decoder positions ``start..start+t`` for codes ``prefix`` (..., t) (BOS at position 0).

        ``emb`` (..., t, d), only with ``start == 0``, replaces the lookup of the prefix codes' embeddings.
        """
        t = prefix.shape[-1]
        parts = []
        if start == 0:
            parts.append(self.bos.expand(*prefix.shape[:-1], 1, -1))
        if emb is not None and start == 0:
            if t:
                parts.append(emb)
        elif t:
            codes = prefix[..., max(0, start - 1):] if start else prefix
            lv = torch.arange(start - 1 if start else 0, t, device=prefix.device)
            parts.append(self.code_emb(codes + self.offsets[lv]))
        x = torch.cat(parts, -2) if len(parts) > 1 else parts[0]
        pos = torch.arange(start, start + x.shape[-2], device=prefix.device)
        return x + self.dec_pos(pos)

    def decode(self, memory: torch.Tensor, memory_valid: torch.Tensor, prefix: torch.Tensor,
               prefix_emb: torch.Tensor | None = None) -> torch.Tensor:
        """Teacher-forced decoder: codes (B, t) -> hidden states (B, t+1, d) (position l predicts code l)."""
        x = self.drop(self._dec_inputs(prefix, emb=prefix_emb))
        mask = memory_valid.unsqueeze(1)
        for blk in self.decoder:
            x = blk(x, memory=memory, memory_mask=mask, is_causal=True)
        return self.decoder_ln(x)

    def level_logits(self, h: torch.Tensor, level: int) -> torch.Tensor:
        """Logits (..., K_level) of code ``level`` from decoder states (..., d)."""
        lo = int(self.offsets[level])
        hi = lo + self.sizes[level]
        return F.linear(h, self.head.weight[lo:hi], self.head.bias[lo:hi])

    def forward(self, history: torch.Tensor, users: torch.Tensor | None, target: torch.Tensor,
                history_emb: torch.Tensor | None = None, target_emb: torch.Tensor | None = None,
                target_weights: list[torch.Tensor | None] | None = None) -> torch.Tensor:
        """Mean cross-entropy of the target SIDs (B, L) given history SIDs (B, T, L).

        The optional arguments are DIGER's differentiable path: ``history_emb`` (B, T, L, d) and
        ``target_emb`` (B, L, d) replace the code-embedding lookups, and ``target_weights[l]`` (B, K_l), when
        given, is the target distribution of level l (a straight-through one-hot: the loss value is the
        cross-entropy of the hard code, its gradient reaches the soft assignment).
        """
        memory, valid = self.encode(history, users, history_emb)
        h = self.decode(memory, valid, target[:, :-1], None if target_emb is None else target_emb[:, :-1])
        losses = []
        for lv in range(self.length):
            logits = self.level_logits(h[:, lv], lv).float()
            w = target_weights[lv] if target_weights is not None else None
            if w is None:
                losses.append(F.cross_entropy(logits, target[:, lv]))
            else:
                losses.append(-(w.float() * logits.log_softmax(-1)).sum(-1).mean())
        return torch.stack(losses).mean()

    # ------------------------------------------------------------------ incremental decoding (beam search)
    @torch.no_grad()
    def start_decoding(self, history: torch.Tensor, users: torch.Tensor | None = None) -> DecodeState:
        """Encode once; precompute every decoder layer's cross-attention keys/values."""
        memory, valid = self.encode(history, users)
        cross = [blk.cross.project_kv(memory) for blk in self.decoder]  # type: ignore[union-attr]
        return DecodeState(cross, valid.unsqueeze(1))

    @torch.no_grad()
    def next_log_probs(self, state: DecodeState, prefix: torch.Tensor | None,
                       parent: torch.Tensor | None) -> tuple[DecodeState, torch.Tensor]:
        """Log-softmax (B, W, K_t) over code ``t`` for prefixes (B, W, t) (``None`` = step 0, W = 1)."""
        b = state.memory_mask.shape[0]
        if prefix is None:
            prefix = torch.zeros(b, 1, 0, dtype=torch.long, device=state.memory_mask.device)
        t = prefix.shape[2]
        cached = self.cfg.kv_cache and state.self_kv is not None
        if cached:
            assert state.self_kv is not None and parent is not None
            w_prev = state.self_kv[0][0].shape[0] // b
            idx = (parent + torch.arange(b, device=parent.device).unsqueeze(1) * w_prev).view(-1)
            caches: list[tuple[torch.Tensor, torch.Tensor] | None] = [(k[idx], v[idx]) for k, v in state.self_kv]
            x = self._dec_inputs(prefix, start=t)  # the newest position only
        else:
            caches = [None] * len(self.decoder)
            x = self._dec_inputs(prefix)
        new_kv = []
        for blk, kv, cache in zip(self.decoder, state.cross_kv, caches, strict=True):
            x, self_kv = blk.step(x, kv, state.memory_mask, cache)
            new_kv.append(self_kv)
        if self.cfg.kv_cache:
            state.self_kv = new_kv
        h = self.decoder_ln(x[:, :, -1])
        return state, self.level_logits(h, t).float().log_softmax(-1)
