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

**Two architectures** over one shared base (:class:`TIGERBase`: vocabulary, user token, positions, read-out,
loss): :class:`TIGEREncDec` is the paper's; :class:`TIGERDecoder` (``tiger.arch=decoder``) runs one causal
stack over [user] + history tokens + the generated codes, so one pass over a window trains every item in it
and the beam search reads the history's keys / values once per user. :func:`TIGER` builds the one the config
names; both keep the same weight names.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sidrec.methods.tiger.config import TIGERConfig
from sidrec.models.layers import Block, causal_padding_mask


def hash_users(users: torch.Tensor, buckets: int) -> torch.Tensor:
    """Bucket of each user index (Knuth's multiplicative hash: neighbouring ids land far apart)."""
    return (users.long() * 2654435761) % buckets


@dataclass
class DecodeState:
    """Per-batch decoding state: cross-attention keys/values per decoder layer and the self-attention cache."""

    cross_kv: list[tuple[torch.Tensor, torch.Tensor]]  # per layer, (B, heads, S, head_dim)
    memory_mask: torch.Tensor  # (B, 1, S) True = attend
    self_kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None  # per layer, (B*W, heads, t, head_dim)


@dataclass
class CausalDecodeState:
    """Decoding state of ``arch=decoder``: the history's keys/values per layer, shared by all beams of a user,
    the per-beam keys/values of the codes generated so far, and the first code's log-probabilities."""

    ctx_kv: list[tuple[torch.Tensor, torch.Tensor]]  # per layer, (B, heads, S, head_dim)
    ctx_valid: torch.Tensor  # (B, S) True = attend
    first: torch.Tensor  # (B, 1, K_0) log-probabilities of the first code
    gen_kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None  # per layer, (B, W, heads, t, head_dim)


class TIGERBase(nn.Module):
    """What both TIGER architectures share: the SID vocabulary (one embedding table over every position's
    codes), the optional hashed user token, item positions counted back from the newest item, per-level
    read-out (tied or not) and the loss over a target item's codes. :func:`TIGER` builds the one the config names."""

    causal = False  # True: one causal stack over history + generated codes (TIGERDecoder)

    def __init__(self, sizes: list[int], max_len: int, cfg: TIGERConfig) -> None:
        super().__init__()
        d = cfg.d_model
        self.cfg = cfg
        self.sizes = [int(s) for s in sizes]
        self.length = len(self.sizes)
        self.max_len = max_len
        self.vocab = sum(self.sizes)
        self.starts = [sum(self.sizes[:lv]) for lv in range(self.length)]  # host copy: no device read per step
        self.register_buffer("offsets", torch.tensor(self.starts), persistent=False)
        self.code_emb = nn.Embedding(self.vocab + 1, d, padding_idx=self.vocab)  # last row = padding
        self.user_emb = nn.Embedding(cfg.user_buckets, d) if cfg.user_buckets > 0 else None
        # item positions count back from the most recent item; the causal stack also gives the item being
        # generated a position (0), so its history starts at 1
        self.item_pos = nn.Embedding(max_len + 1 if self.causal else max_len, d)
        self.dec_pos = nn.Embedding(self.length, d)  # encdec: decoder position; decoder: SID level of a token
        self.drop = nn.Dropout(cfg.dropout)
        self._build_stacks()  # here, so every weight draws from the seeded generator in the same order as before
        self.decoder_ln = nn.LayerNorm(d)
        # tied: a code's logit is the state's dot product with that code's input embedding, so a codeword the
        # tokenizer moves (DIGER) moves the input and the output side together
        self.head = None if cfg.tie_head else nn.Linear(d, self.vocab)
        for emb in (self.code_emb, self.item_pos, self.dec_pos) + ((self.user_emb,) if self.user_emb else ()):
            nn.init.normal_(emb.weight, std=d**-0.5)
        if isinstance(getattr(self, "bos", None), nn.Parameter):
            nn.init.normal_(self.bos, std=d**-0.5)
        with torch.no_grad():
            self.code_emb.weight[self.vocab].zero_()

    def _build_stacks(self) -> None:
        """The architecture's Transformer blocks (``encoder`` / ``decoder``)."""
        raise NotImplementedError

    def _block(self, cross: bool) -> Block:
        c = self.cfg
        return Block(c.d_model, c.n_heads, c.ffn_dim, c.dropout, head_dim=c.head_dim, cross=cross)

    def level_logits(self, h: torch.Tensor, level: int) -> torch.Tensor:
        """Logits (..., K_level) of code ``level`` from decoder states (..., d)."""
        lo = self.starts[level]
        hi = lo + self.sizes[level]
        if self.head is None:
            return F.linear(h, self.code_emb.weight[lo:hi])
        return F.linear(h, self.head.weight[lo:hi], self.head.bias[lo:hi])

    def forward(self, history: torch.Tensor, users: torch.Tensor | None, target: torch.Tensor | None,
                history_emb: torch.Tensor | None = None, target_emb: torch.Tensor | None = None,
                target_weights: list[torch.Tensor | None] | None = None) -> torch.Tensor:
        """Mean cross-entropy of the target SIDs (B, L) given history SIDs (B, T, L).

        ``target=None`` (``arch=decoder`` only): ``history`` is a window of items and every item in it after
        the first is a target (:meth:`forward_sequence`); routed through ``forward`` so DDP sees the call.

        The optional arguments are DIGER's differentiable path: ``history_emb`` (B, T, L, d) and
        ``target_emb`` (B, L, d) replace the code-embedding lookups, and ``target_weights[l]`` (B, K_l), when
        given, is the target distribution of level l (a straight-through one-hot: the loss value is the
        cross-entropy of the hard code, its gradient reaches the soft assignment).
        """
        if target is None:
            return self.forward_sequence(history, users, history_emb, target_weights)
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

    def _with_user(self, x: torch.Tensor, valid: torch.Tensor, users: torch.Tensor | None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.user_emb is None:
            return x, valid
        if users is None:
            raise ValueError("this TIGER has a user token: pass the user indices")
        u = self.user_emb(hash_users(users, self.cfg.user_buckets)).unsqueeze(1)
        return torch.cat([u, x], 1), torch.cat([valid.new_ones(len(valid), 1), valid], 1)

    def forward_sequence(self, window: torch.Tensor, users: torch.Tensor | None, emb: torch.Tensor | None = None,
                         weights: list[torch.Tensor | None] | None = None) -> torch.Tensor:
        raise ValueError("forward_sequence needs tiger.arch=decoder")



class TIGEREncDec(TIGERBase):
    """The paper's encoder-decoder: the encoder reads [user] + history SIDs, the decoder generates the next
    item's codes with cross-attention to it."""

    def _build_stacks(self) -> None:
        c = self.cfg
        self.bos = nn.Parameter(torch.zeros(c.d_model))
        self.encoder = nn.ModuleList(self._block(False) for _ in range(c.encoder_layers))
        self.encoder_ln = nn.LayerNorm(c.d_model)
        self.decoder = nn.ModuleList(self._block(True) for _ in range(c.decoder_layers))

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
        x, valid = self._with_user(x.view(b, t * length, -1), valid.view(b, t * length), users)
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
        """Teacher-forced decoder: codes (B, t) -> hidden states (B, t+1, d) (position l predicts code l).
        """
        x = self.drop(self._dec_inputs(prefix, emb=prefix_emb))
        mask = memory_valid.unsqueeze(1)
        for blk in self.decoder:
            x = blk(x, memory=memory, memory_mask=mask, is_causal=True)
        return self.decoder_ln(x)

    def decode_hypotheses(self, memory: torch.Tensor, memory_valid: torch.Tensor, prefixes: torch.Tensor
                          ) -> torch.Tensor:
        """Teacher-forced states (B, W, t+1, d) of W code prefixes (B, W, t) per encoded row (DREAM's votes).

        The memory is repeated per hypothesis (the decoder is short).
        """
        b, w, t = prefixes.shape
        h = self.decode(memory.repeat_interleave(w, 0), memory_valid.repeat_interleave(w, 0),
                        prefixes.reshape(b * w, t))
        return h.view(b, w, t + 1, -1)

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


class TIGERDecoder(TIGERBase):
    """``tiger.arch=decoder``: one causal stack over [user] + history SID tokens + the generated codes; the state
    at each token predicts the next token, so one pass over a window trains every item in it."""

    causal = True

    def _build_stacks(self) -> None:
        c = self.cfg
        self.encoder = nn.ModuleList()  # kept (empty) so both architectures' weights share their names
        self.decoder = nn.ModuleList(self._block(False) for _ in range(c.layers or c.encoder_layers + c.decoder_layers))

    def encode(self, history: torch.Tensor, users: torch.Tensor | None = None,
               emb: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The embedded [user] + history tokens (B, S, d) and their validity: the "memory" :meth:`decode` reads."""
        return self._context(history, users, emb)

    def decode(self, context: torch.Tensor, valid: torch.Tensor, prefix: torch.Tensor,
               prefix_emb: torch.Tensor | None = None) -> torch.Tensor:
        """Teacher-forced: the causal stack over history + prefix codes (B, t); the state at the history's last
        token predicts the first code (returns (B, t+1, d))."""
        b, s = valid.shape
        t = prefix.shape[-1]
        if t:
            pe = prefix_emb if prefix_emb is not None else self.code_emb(prefix + self.offsets[:t])
            pe = pe + self.item_pos.weight[0] + self.dec_pos.weight[:t]
            context, valid = torch.cat([context, pe], 1), torch.cat([valid, valid.new_ones(b, t)], 1)
        return self._stack(context, valid)[:, s - 1:]

    def decode_hypotheses(self, memory: torch.Tensor, memory_valid: torch.Tensor, prefixes: torch.Tensor
                          ) -> torch.Tensor:
        """Teacher-forced states (B, W, t+1, d) of W code prefixes (B, W, t) per encoded row (DREAM's votes).

        The history runs through the causal stack once and each prefix attends to its keys / values plus its own
        tokens (the beam search's two-part attention, here with gradients), instead of W copies of history +
        prefix: W-fold less work on the long part.
        """
        b, w, t = prefixes.shape
        x, kv = self._history_pass(self.drop(memory), memory_valid)
        first = self.decoder_ln(x[:, -1]).unsqueeze(1).unsqueeze(1).expand(b, w, 1, -1)
        if not t:
            return first
        y, _ = self._prefix_pass(self.drop(self._prefix_tokens(prefixes, torch.arange(t, device=prefixes.device))),
                                 kv, memory_valid)
        return torch.cat([first, self.decoder_ln(y)], 2)

    # ------------------------------------------------------------------ the stack over history tokens
    def _tokens(self, codes: torch.Tensor, first_pos: int, emb: torch.Tensor | None = None) -> torch.Tensor:
        """Embeddings (B, T, L, d) of item codes (B, T, L) (-1 = padding) whose newest item has position
        ``first_pos``: code + level + position-from-the-newest embeddings."""
        t = codes.shape[1]
        if emb is None:
            tok = torch.where(codes >= 0, codes + self.offsets, torch.full_like(codes, self.vocab))
            emb = self.code_emb(tok)
        pos = torch.arange(first_pos + t - 1, first_pos - 1, -1, device=codes.device).clamp(max=self.max_len)
        level = self.dec_pos.weight[: codes.shape[2]].view(1, 1, -1, emb.shape[-1])
        return emb + self.item_pos(pos).view(1, t, 1, -1) + level

    def _context(self, history: torch.Tensor, users: torch.Tensor | None, emb: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """[user token] + history SID tokens (B, S, d) as the causal stack reads them, and their validity."""
        b, t, length = history.shape
        x = self._tokens(history, 1, emb).reshape(b, t * length, -1)
        x, valid = self._with_user(x, (history >= 0).reshape(b, t * length), users)
        valid = valid.clone()
        valid[:, -1] |= ~valid.any(1)  # an empty history still has one (zero) token to read from
        return x, valid

    def _stack(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        x = self.drop(x)
        mask = causal_padding_mask(valid)
        for blk in self.decoder:
            x = blk(x, mask=mask)
        return self.decoder_ln(x)

    def forward_sequence(self, window: torch.Tensor, users: torch.Tensor | None, emb: torch.Tensor | None = None,
                         weights: list[torch.Tensor | None] | None = None) -> torch.Tensor:
        """Mean cross-entropy of every item's codes in windows of item SIDs (B, n, L), left-padded with -1.

        One causal pass learns every item that has at least one item before it: the state at each token
        predicts the next token (the last code of item j predicts the first code of item j+1), exactly the
        factorisation the beam search decodes with. This is what makes ``arch=decoder`` cheap: a user's
        history is encoded once per window, not once per prefix.

        DIGER's differentiable path, as in :meth:`forward`: ``emb`` (B, n, L, d) replaces the code-embedding
        lookups and ``weights[l]`` (B, n, K_l), when given, is level l's target distribution of every item.
        """
        b, n, length = window.shape
        item_ok = window[..., 0] >= 0
        x = self._tokens(window, 0, emb).reshape(b, n * length, -1)
        x, valid = self._with_user(x, item_ok.repeat_interleave(length, 1), users)
        h = self._stack(x, valid)
        off = 1 if self.user_emb is not None else 0  # state ``off + p - 1`` predicts flat token p
        has_prev = torch.zeros_like(item_ok)
        has_prev[:, 1:] = item_ok[:, 1:] & item_ok[:, :-1]
        m = has_prev[:, 1:]
        total = h.new_zeros((), dtype=torch.float32)
        for lv in range(length):
            # flat token (item j, level lv) sits at state off + j*L + lv and is predicted by the state before it
            start = off - 1 + lv + length
            hs = h[:, start: start + length * (n - 1): length]  # items j = 1..n-1
            logits = self.level_logits(hs[m], lv).float()
            w = weights[lv] if weights is not None else None
            if w is None:
                total = total + F.cross_entropy(logits, window[:, 1:, lv][m], reduction="sum")
            else:
                total = total - (w[:, 1:][m].float() * logits.log_softmax(-1)).sum()
        count = has_prev.sum() * length
        return total / count.clamp(min=1)

    def _history_pass(self, x: torch.Tensor, valid: torch.Tensor
                      ) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
        """The causal stack over history tokens (B, S, d): final states and every block's keys / values, which
        the prefixes of :meth:`_prefix_pass` then read (beam search and DREAM's hypotheses alike)."""
        mask = causal_padding_mask(valid)
        kv = []
        for blk in self.decoder:
            h = blk.ln1(x)
            k, v = blk.attn.project_kv(h)
            x = x + blk.drop(blk.attn.attend(h, k, v, mask=mask))
            x = x + blk.drop(blk.ffn(blk.ln2(x)))
            kv.append((k, v))
        return x, kv

    def _prefix_tokens(self, codes: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
        """Embeddings (..., q, d) of the next item's codes (..., q) at SID positions ``levels`` (q,)."""
        return self.code_emb(codes + self.offsets[levels]) + self.item_pos.weight[0] + self.dec_pos(levels)

    def _prefix_pass(self, x: torch.Tensor, ctx_kv: list[tuple[torch.Tensor, torch.Tensor]], ctx_valid: torch.Tensor,
                     caches: list[tuple[torch.Tensor, torch.Tensor]] | None = None
                     ) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
        """W prefixes' tokens (B, W, q, d) through the stack, each attending to its row's history keys / values
        and its own (earlier ``caches`` first): final states and the prefixes' keys / values per block."""
        b, w, q, _ = x.shape
        new_kv = []
        for i, blk in enumerate(self.decoder):
            h = blk.ln1(x)
            kn, vn = (z.view(b, w, *z.shape[1:]) for z in blk.attn.project_kv(h.reshape(b * w, q, -1)))
            if caches is not None:
                kn, vn = torch.cat([caches[i][0], kn], 3), torch.cat([caches[i][1], vn], 3)
            x = x + blk.drop(self._two_part_attention(blk, h, ctx_kv[i], ctx_valid, (kn, vn)))
            x = x + blk.drop(blk.ffn(blk.ln2(x)))
            new_kv.append((kn, vn))
        return x, new_kv

    def _two_part_attention(self, blk: Block, h: torch.Tensor, ctx: tuple[torch.Tensor, torch.Tensor],
                            ctx_valid: torch.Tensor, gen: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """Attention of new tokens ``h`` (B, W, q, d) over a user's shared history keys/values and each beam's
        own generated keys/values (B, W, heads, k, hd), as one softmax, without copying the history per beam."""
        att = blk.attn
        b, w, q, _ = h.shape
        qh = att.q_proj(h).view(b, w, q, att.n_heads, att.head_dim).transpose(2, 3)  # (B, W, H, q, hd)
        scale = 1.0 / math.sqrt(att.head_dim)
        s_ctx = torch.einsum("bwhqd,bhsd->bwhqs", qh, ctx[0]) * scale
        s_ctx = s_ctx.masked_fill(~ctx_valid.view(b, 1, 1, 1, -1), float("-inf"))
        s_gen = torch.einsum("bwhqd,bwhkd->bwhqk", qh, gen[0]) * scale
        k = gen[0].shape[3]
        causal = torch.ones(q, k, dtype=torch.bool, device=h.device).tril(k - q)
        s_gen = s_gen.masked_fill(~causal, float("-inf"))
        p = torch.cat([s_ctx, s_gen], -1).float().softmax(-1).to(qh.dtype)
        sc = s_ctx.shape[-1]
        out = (torch.einsum("bwhqs,bhsd->bwhqd", p[..., :sc], ctx[1])
               + torch.einsum("bwhqk,bwhkd->bwhqd", p[..., sc:], gen[1]))
        return att.o_proj(out.transpose(2, 3).reshape(b, w, q, -1))

    @torch.no_grad()
    def start_decoding(self, history: torch.Tensor, users: torch.Tensor | None) -> CausalDecodeState:
        """The history's keys / values per layer (shared by every beam of a user) and the first code's log-probs."""
        x, valid = self._context(history, users)
        x, kv = self._history_pass(x, valid)
        first = self.level_logits(self.decoder_ln(x[:, -1]), 0).float().log_softmax(-1).unsqueeze(1)
        return CausalDecodeState(kv, valid, first)

    @torch.no_grad()
    def next_log_probs(self, state: CausalDecodeState, prefix: torch.Tensor | None,  # type: ignore[override]
                       parent: torch.Tensor | None) -> tuple[CausalDecodeState, torch.Tensor]:
        """Log-softmax (B, W, K_t) over code ``t`` for prefixes (B, W, t) (``None`` = step 0)."""
        if prefix is None:
            return state, state.first
        b, w, t = prefix.shape
        cached = self.cfg.kv_cache and state.gen_kv is not None
        if cached:
            assert state.gen_kv is not None and parent is not None
            pidx = parent.view(b, w, 1, 1, 1)
            caches = [(k.gather(1, pidx.expand(-1, -1, *k.shape[2:])), v.gather(1, pidx.expand(-1, -1, *v.shape[2:])))
                      for k, v in state.gen_kv]
            new = prefix[:, :, -1:]
            lv = torch.arange(t - 1, t, device=prefix.device)
        else:
            caches = None
            new = prefix
            lv = torch.arange(t, device=prefix.device)
        x, new_kv = self._prefix_pass(self._prefix_tokens(new, lv), state.ctx_kv, state.ctx_valid, caches)
        if self.cfg.kv_cache:
            state.gen_kv = new_kv
        h = self.decoder_ln(x[:, :, -1])
        return state, self.level_logits(h, t).float().log_softmax(-1)



def TIGER(sizes: list[int], max_len: int, cfg: TIGERConfig) -> TIGERBase:  # noqa: N802 - reads as the model's name
    """The TIGER model ``tiger.arch`` names: the paper's encoder-decoder or one causal stack."""
    return (TIGERDecoder if cfg.arch == "decoder" else TIGEREncDec)(sizes, max_len, cfg)
