"""Encoder-decoder denoiser for conditional generation of a sequence from a source sequence.

CATDM for translation (paper 003 sec. 6.3, appendix B.3) uses the encoder-decoder
Transformer of fairseq's ``transformer_iwslt_de_en`` / ``transformer`` (base) sizes with
the target length predicted from the encoder output. Here:

- Encoder: ordinary token embeddings (scaled by sqrt(width)) + sinusoidal positions,
  pre-norm blocks with a key-padding mask, final LayerNorm. It does not see t.
- Decoder: reads the noisy target embeddings z_t [B, M, D] (``Linear(D, width)`` +
  sinusoidal positions, or rotary ones in its self-attention with ``positions=rotary``, as
  :mod:`catdiff.nn.backbones.encoder`); each block is self-attention, cross-attention to the encoder
  output (source padding masked) and an MLP, each behind AdaLN time conditioning
  ``(1 + a(c)) LayerNorm(h) + b(c)`` (appendix B.1; building blocks reused from
  :mod:`catdiff.nn.backbones.encoder`, same zero-initialised modulation and no residual gates).
- Length head: a Linear over the mean of the non-pad encoder outputs gives logits over
  target lengths 1..M, trained by maximum likelihood (``aux_loss``; appendix B.3 "we
  explicitly model the target length using maximum log-likelihood").

Targets are fixed-length: the task pads them with a PAD *data* token, and the decoder
attends over all M target positions. The diffusion therefore also learns the PAD
positions (DiffuSeq's choice), whereas Difformer masks them out of attention and the loss.
We take the DiffuSeq route because the core objective and sampler work on fixed [B, M]
token arrays; at sampling the task fixes the positions past the chosen length to PAD
through the sampler's infilling, so the model only generates the chosen length.

The source vocabulary size and pad id come from the task's data spec (``spec.extras``:
``src_vocab``, ``pad_id``; translation tasks derive them from their vocabularies). The pad id marks
padding in the source and is the PAD token of the targets.

Causal target side (``causal=True``; the ``ar`` method's translation model, which asks the
engine for it through ``Method.backbone_options``): the decoder's self-attention is masked so target
position i sees positions <= i (the Transformer decoder, Vaswani et al. 2017); the encoder and
the cross-attention are unchanged. ``forward(..., cache=KVCache(M))`` then decodes
incrementally: the source is encoded once and each layer's cross-attention keys and values
are kept in the cache with the self-attention ones.

The encoder output is kept for the most recent ``cond`` tensor so that the sampler's
steps (same ``cond`` object each step) and ``aux_loss`` right after ``forward`` (same
``cond``, same Denoiser forward) encode the source once. The cache is keyed by the tensor
object and its in-place version counter, and is dropped by ``aux_loss`` when gradients are
on, so no autograd graph outlives the training step that built it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from catdiff.nn.backbones import TRANSFORMER, check_transformer, transformer_lr
from catdiff.nn.backbones.encoder import (AdaLN, KVCache, attention, modulation, register_positions, rotate,
                                      sinusoidal, zero_linear)

# fairseq architecture sizes: encoder and decoder each have ``layers`` blocks
PRESETS = {
    "transformer_iwslt_de_en": dict(layers=6, width=512, heads=4, mlp_ratio=2.0, dropout=0.3, embed_dim=128),
    "transformer": dict(layers=6, width=512, heads=8, mlp_ratio=4.0, dropout=0.1, embed_dim=128),
}


def _attend(q, k, v, heads: int, key_keep: torch.Tensor | None = None, rot: torch.Tensor | None = None) -> torch.Tensor:
    """Multi-head scaled dot-product attention; ``key_keep`` [B, S] is True at real keys;
    ``rot``: rotary tables (self-attention with ``positions=rotary``)."""
    q, k, v = (rearrange(x, "b m (h d) -> b h m d", h=heads) for x in (q, k, v))
    if rot is not None:
        q, k = rotate(q, rot), rotate(k, rot)
    mask = None if key_keep is None else key_keep[:, None, None, :]
    o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return rearrange(o, "b h m d -> b m (h d)")


class EncoderBlock(nn.Module):
    """Pre-norm block: h += SelfAttn(LN(h)) over real source tokens; h += MLP(LN(h))."""

    def __init__(self, width: int, heads: int, hidden: int, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.fc1, self.fc2 = nn.Linear(width, hidden), nn.Linear(hidden, width)

    def forward(self, h, keep):
        p = self.dropout if self.training else 0.0
        h = h + F.dropout(self.proj(_attend(*self.qkv(self.norm1(h)).chunk(3, -1), self.heads, keep)), p)
        return h + F.dropout(self.fc2(F.gelu(self.fc1(self.norm2(h)))), p)


class DecoderBlock(nn.Module):
    """h += SelfAttn(AdaLN(h, c)); h += CrossAttn(AdaLN(h, c), enc); h += MLP(AdaLN(h, c)).

    ``mod`` (zero-initialised) maps SiLU(c) [B, W] to the (1 + a, b) pairs of all three norms.
    """

    def __init__(self, width: int, heads: int, hidden: int, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.norm1, self.norm2, self.norm3 = AdaLN(width), AdaLN(width), AdaLN(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.q_cross = nn.Linear(width, width)
        self.kv_cross = nn.Linear(width, 2 * width)
        self.proj_cross = nn.Linear(width, width)
        self.fc1, self.fc2 = nn.Linear(width, hidden), nn.Linear(hidden, width)
        self.mod = zero_linear(width, 6 * width)

    def forward(self, h, c_act, enc, keep, rot=None, causal=False, cache: KVCache | None = None, name=""):
        """``cache`` (causal only): ``h`` holds the target positions after the cached ones; keys and
        values (self- and cross-attention) are kept under ``name``."""
        s1, b1, s2, b2, s3, b3 = modulation(self.mod, c_act, 3)
        p = self.dropout if self.training else 0.0
        if not causal and cache is None:
            o = _attend(*self.qkv(self.norm1(h, s1, b1)).chunk(3, -1), self.heads, rot=rot)
        else:
            o = self._causal_self_attention(self.norm1(h, s1, b1), rot, cache, name)
        h = h + F.dropout(self.proj(o), p)
        if cache is None:
            kv = self.kv_cross(enc).chunk(2, -1)
        else:  # the source's keys and values are computed once per decoding
            if name + "kx" not in cache.fixed:
                cache.fixed[name + "kx"], cache.fixed[name + "vx"] = self.kv_cross(enc).chunk(2, -1)
            kv = cache.fixed[name + "kx"], cache.fixed[name + "vx"]
        o = _attend(self.q_cross(self.norm2(h, s2, b2)), *kv, self.heads, keep)
        h = h + F.dropout(self.proj_cross(o), p)
        return h + F.dropout(self.fc2(F.gelu(self.fc1(self.norm3(h, s3, b3)))), p)


    def _causal_self_attention(self, x, rot, cache, name):
        q, k, v = (rearrange(y, "b m (h d) -> b h m d", h=self.heads) for y in self.qkv(x).chunk(3, -1))
        start = 0 if cache is None else cache.length
        if rot is not None:
            q, k = rotate(q, rot, start), rotate(k, rot, start)
        if cache is not None:
            k, v = cache.write(name + "k", k, 2), cache.write(name + "v", v, 2)
        return rearrange(attention(q, k, v, True, start), "b h m d -> b m (h d)")


class EncoderDecoder(nn.Module):
    """``forward(z [B, M, D], t [B], cond [B, S] source ids) -> logits [B, M, vocab_size]`` (float32).

    Sizes from ``cfg.layers`` (per stack), ``cfg.heads``, ``cfg.width``, ``cfg.mlp_ratio``,
    ``cfg.dropout`` (on embeddings and sublayer outputs, fairseq's ``dropout``; no attention or
    activation dropout, fairseq's defaults for these architectures), ``cfg.embed_dim``.
    ``causal``: a causal target side (see the module doc).
    """

    def __init__(self, cfg, vocab_size: int, seq_len: int, src_vocab: int, pad_id: int, causal: bool = False):
        super().__init__()
        width, heads, layers = int(cfg.width), int(cfg.heads), int(cfg.layers)
        if width <= 0 or heads <= 0 or layers <= 0 or width % heads:
            raise ValueError(f"need positive layers/heads/width with width % heads == 0; got {layers}, {heads}, {width}")
        if vocab_size <= 0 or seq_len <= 0 or src_vocab <= 0 or not 0 <= pad_id < min(vocab_size, src_vocab):
            raise ValueError(f"need vocab_size, seq_len, src_vocab > 0 and 0 <= pad_id < both vocabularies; "
                             f"got {vocab_size}, {seq_len}, {src_vocab}, pad_id={pad_id}")
        hidden = int(round(width * cfg.mlp_ratio))
        dropout = float(cfg.dropout)
        self.embed_dim, self.width, self.heads = int(cfg.embed_dim), width, heads
        self.vocab_size, self.seq_len, self.src_vocab, self.pad_id = vocab_size, seq_len, src_vocab, pad_id
        self.dropout = dropout
        self.causal = bool(causal)

        self.src_emb = nn.Embedding(src_vocab, width, padding_idx=pad_id)
        nn.init.normal_(self.src_emb.weight, std=width**-0.5)
        with torch.no_grad():
            self.src_emb.weight[pad_id].zero_()
        self.enc_blocks = nn.ModuleList(EncoderBlock(width, heads, hidden, dropout) for _ in range(layers))
        self.enc_norm = nn.LayerNorm(width)
        self.length_head = nn.Linear(width, seq_len)  # class j <-> target length j + 1

        self.in_proj = nn.Linear(self.embed_dim, width)
        register_positions(self, cfg, seq_len, width, heads)  # the decoder's, as the encoder backbone's
        self.time_mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.dec_blocks = nn.ModuleList(DecoderBlock(width, heads, hidden, dropout) for _ in range(layers))
        self.norm_out = AdaLN(width)
        self.norm_out_mod = zero_linear(width, 2 * width)
        self.head = nn.Linear(width, vocab_size)
        self._cache = None  # (cond, cond._version, grad_enabled, training, encoded)

    # ----------------------------------------------------------------- encoder
    def _encode(self, src: torch.Tensor):
        if src.dim() != 2 or src.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"cond must be source token ids [B, S] (int64), got {src.dtype} {tuple(src.shape)}; "
                             f"the encdec backbone needs a translation-style task (conditional=True)")
        if src.device.type == "cpu" and src.numel() and (src.min() < 0 or src.max() >= self.src_vocab):
            raise ValueError(f"source ids must lie in [0, {self.src_vocab - 1}], got [{int(src.min())}, {int(src.max())}]")
        keep = src != self.pad_id
        keep[:, 0] |= ~keep.any(1)  # an all-pad source attends to its first position instead of nothing
        S = src.shape[1]
        h = self.src_emb(src) * self.width**0.5 + sinusoidal(torch.arange(S, device=src.device), self.width)
        h = F.dropout(h, self.dropout if self.training else 0.0)
        for block in self.enc_blocks:
            h = block(h, keep)
        return self.enc_norm(h), keep

    def encode(self, src: torch.Tensor):
        """(encoder output [B, S, W], key mask [B, S] True at real tokens), cached per ``src`` object."""
        state = (torch.is_grad_enabled(), self.training)
        c = self._cache
        if c is not None and c[0] is src and c[1] == src._version and c[2:4] == state:
            return c[4]
        out = self._encode(src)
        self._cache = (src, src._version, *state, out)
        return out

    def length_logits(self, src: torch.Tensor) -> torch.Tensor:
        """[B, M] logits over target lengths 1..M from the mean of the non-pad encoder outputs."""
        enc, keep = self.encode(src)
        w = keep.to(enc.dtype)[..., None]
        pooled = (enc * w).sum(1) / w.sum(1)
        return self.length_head(pooled).float()

    def aux_loss(self, cond: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """-log P(L | source) per sequence [B]; L = number of non-PAD target tokens (>= 1)."""
        length = (targets != self.pad_id).sum(1).clamp(1, self.seq_len)
        loss = F.cross_entropy(self.length_logits(cond), length - 1, reduction="none")
        if torch.is_grad_enabled():
            self._cache = None
        return loss

    # ----------------------------------------------------------------- decoder
    def forward(self, z: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None,
                cache: KVCache | None = None) -> torch.Tensor:
        """Logits at target positions 0 .. M-1, or with a ``cache`` (causal only) at the M positions
        after the ``cache.length`` already decoded (the cache is then advanced)."""
        if cond is None:
            raise ValueError("the encdec backbone needs source ids as its condition (cond [B, S]); got None")
        if z.dim() != 3 or z.shape[-1] != self.embed_dim or z.shape[1] > self.seq_len:
            raise ValueError(f"z must be [B, M<={self.seq_len}, {self.embed_dim}], got {tuple(z.shape)}")
        B, M, _ = z.shape
        if cond.shape[0] != B:
            raise ValueError(f"cond has {cond.shape[0]} rows, z has {B}")
        t = t.expand(B) if t.dim() == 0 else t
        start = 0
        if cache is None:
            enc, keep = self.encode(cond)
        else:
            if not self.causal:
                raise ValueError("incremental decoding with a KV cache needs a causal EncoderDecoder")
            start = cache.length
            if start + M > self.seq_len:
                raise ValueError(f"positions {start}..{start + M - 1} exceed the model's seq_len={self.seq_len}")
            enc = None  # the blocks keep the source's keys and values from the first call
            if "keep" not in cache.fixed:
                enc, cache.fixed["keep"] = self.encode(cond)
            keep = cache.fixed["keep"]
        c_act = F.silu(self.time_mlp(sinusoidal(t * 1000.0, self.width)))
        h = self.in_proj(z) if self.pos is None else self.in_proj(z) + self.pos[start : start + M]
        for i, block in enumerate(self.dec_blocks):
            h = block(h, c_act, enc, keep, self.rot, self.causal, cache, f"{i}")
        if cache is not None:
            cache.length += M
        scale1, shift = modulation(self.norm_out_mod, c_act, 1)
        return self.head(self.norm_out(h, scale1, shift)).float()

    def __getstate__(self):  # deepcopy (EMA copies) and pickling never carry the cache
        state = self.__dict__.copy()
        state["_cache"] = None
        return state


def build_encdec(cfg, vocab_size: int, seq_len: int, num_classes: int = 0, causal: bool = False,
                 spec=None) -> EncoderDecoder:
    """Factory of the ``encdec`` backbone (``catdiff_backbones`` hook signature)."""
    if num_classes:
        raise ValueError("the encdec backbone conditions on source sequences, not class labels (num_classes must be 0)")
    # the data spec's extras; a task written for catdiff 0.1 put them into task_options
    opts = dict(spec.extras) if spec is not None and "src_vocab" in spec.extras else cfg.task_options
    if int(opts.get("src_vocab", 0) or 0) <= 0 or "pad_id" not in opts:
        raise ValueError("the encdec backbone needs src_vocab (> 0) and pad_id in the task's data_spec().extras "
                         "(translation tasks derive them from their vocabularies)")
    check_transformer(cfg)
    return EncoderDecoder(cfg, vocab_size, seq_len, int(opts["src_vocab"]), int(opts["pad_id"]), causal=causal)


build_encdec.settings = TRANSFORMER  # the keys of catdiff's encoder, minus its local mixing
build_encdec.default_lr = transformer_lr
