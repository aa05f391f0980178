"""Bidirectional transformer denoiser f_theta(z_t; t[, y]) -> logits (CATDM, paper 003).

The paper's backbones are plain (non-causal) transformer encoders: 15 layers / 8 heads /
512 wide for images, 12 / 12 / 768 for text. Time (and class) conditioning enters every
block through AdaLN (paper 003, appendix B.1):

    AdaLN(h, c) = (1 + a(c)) * LayerNorm(h) + b(c),   LayerNorm without affine parameters,

with ``a`` and ``b`` a per-block linear map of SiLU(c), initialised to zero so each block
starts as a plain pre-norm transformer block.

Design choices (documented because the paper does not pin them down):

- No DiT-style residual gates. The paper's AdaLN has only scale and shift; with gates
  initialised to zero, every attention / MLP weight receives zero gradient on the first
  step and the network starts as the identity on the input projection. Without gates the
  network is a standard pre-norm transformer at init (trainable from step one) and each
  residual update is one fewer elementwise pass.
- ``cfg.dropout`` is applied to the attention probabilities only (inside
  ``scaled_dot_product_attention``), and only in training mode.
- Time features: sinusoidal features of ``1000 * t`` (``width`` of them), then
  Linear -> SiLU -> Linear. Class conditioning adds ``nn.Embedding(num_classes + 1, width)``
  to the time vector; index ``num_classes`` is the learned null condition (used when
  ``cond`` is None and by classifier-free guidance).
- Positions (``cfg.positions``): ``sinusoidal`` (as the paper's transformer) adds fixed
  sinusoids to the projected input; ``rotary`` (the default; not in the paper; RoPE, as MDLM's
  and SEDD's backbones use) rotates q and k instead, so attention sees relative offsets and position
  information does not shrink relative to the input as the learned embeddings grow.
  ``cfg.pos_scale`` multiplies the sinusoids (amplitude 1 by default; the projected input's
  norm grows with the embeddings during training, ~3x on digits by 1500 steps). Both are
  non-persistent buffers (checkpoints do not depend on ``seq_len``); shorter inputs use the
  first M positions. Measured in docs/notes.md.
- Local mixing (``cfg.conv_kernel`` k > 0; not in the paper): before every block a depthwise
  k x k convolution over the token grid ``cfg.token_grid`` ("HxW", image tasks), or a width-k
  one along the sequence without a grid, is added to the residual stream: a conditional
  positional encoding (Chu et al. 2021, "PEG"), i.e. a locality prior transformers lack
  (its effect on digits: docs/notes.md).
- Mixed precision: the residual stream stays in the dtype the input projection promotes to
  (float32 under autocast, because the fixed position buffer is float32); matmuls and
  attention follow autocast. Logits are returned as float32.
- Speed (measured in ``benchmarks/speed.py`` against stock ``nn.TransformerEncoder``): qkv is
  one fused Linear; q, k, v are strided views of its output passed directly to
  ``scaled_dot_product_attention`` (no ``.contiguous()`` copies; the attention output is
  already laid out as [B, M, H, d], so merging heads is a view); LayerNorm is called with
  constant ones/zeros (ATen's CPU kernel without weight/bias is ~3x slower); AdaLN's
  scale-and-shift is one ``addcmul`` forward with a hand-written backward (``_Modulate``);
  each block computes both of its norms' (a, b) with one Linear W -> 4W (2L + 1 small
  matmuls become L + 1; stacking all of them into a single Linear was slower on CPU, as
  its one huge weight falls out of cache in the weight-gradient matmul and in AdamW).
  The remaining cost over a stock encoder is AdaLN's own parameters, 4 * width^2 per block
  (+33% weights for AdamW to update), which only matters at small batch sizes.
- Causal mode (``causal=True``, a constructor argument; the ``ar`` method asks the engine for it
  through ``Method.backbone_options``): position i attends to positions <= i (the Transformer decoder's masked
  self-attention, Vaswani et al. 2017), and the local mixing convolution keeps only the taps at
  or before its centre in sequence (raster) order, PixelCNN's mask "B" (van den Oord et al.
  2016). ``forward(..., cache=KVCache)`` then runs incremental decoding: the inputs are the next
  positions after those already in the cache, whose keys and values (and, with local mixing,
  residual streams) it reuses. Off by default; the bidirectional network is unchanged.
- A CPU-only label-range check on ``cond`` is skipped on CUDA (it would synchronise) and
  under ``torch.compile`` (it is data-dependent); the module compiles with ``fullgraph=True``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from torch.autograd.function import once_differentiable

POSITIONS = ("sinusoidal", "rotary")


def sinusoidal(positions: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """[N] float -> [N, dim] features ``[cos(p * f_i), sin(p * f_i)]``, f_i geometric in [1/max_period, 1]."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=positions.device) / half)
    args = positions.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


def rotary_tables(seq_len: int, head_dim: int, base: float = 10000.0) -> torch.Tensor:
    """[2, M, d/2]: cos and sin of position m times frequency base^(-2i/d) (RoFormer, Su et al. 2021)."""
    freqs = base ** (-torch.arange(0, head_dim // 2, dtype=torch.float32) * 2 / head_dim)
    angles = torch.arange(seq_len, dtype=torch.float32)[:, None] * freqs[None]
    return torch.stack([angles.cos(), angles.sin()])


def register_positions(module: nn.Module, cfg, seq_len: int, width: int, heads: int) -> None:
    """Buffers ``rot`` and ``pos`` of ``cfg.positions``, exactly one of them set: the rotary tables
    (``rotary``), or the sinusoids added to the input, times ``cfg.pos_scale`` (``sinusoidal``)."""
    positions, head_dim = str(cfg.positions), width // heads
    if positions not in POSITIONS:
        raise ValueError(f"unknown positions {positions!r}; choose one of {POSITIONS}")
    if positions == "rotary" and head_dim % 2:
        raise ValueError(f"rotary positions need an even head size, got width/heads = {head_dim}")
    rot = rotary_tables(seq_len, head_dim) if positions == "rotary" else None
    pos = None if rot is not None else float(cfg.pos_scale) * sinusoidal(torch.arange(seq_len), width)
    module.register_buffer("rot", rot, persistent=False)
    module.register_buffer("pos", pos, persistent=False)


def token_grid(spec: str, seq_len: int) -> tuple[int, int] | None:
    """``"HxW"`` -> (H, W) with H * W == ``seq_len``; ``""`` -> None (a 1D sequence)."""
    if not spec:
        return None
    try:
        h, w = (int(v) for v in spec.lower().split("x"))
    except ValueError:
        raise ValueError(f"token_grid must look like '8x8' (height x width), got {spec!r}") from None
    if h <= 0 or w <= 0 or h * w != seq_len:
        raise ValueError(f"token_grid {spec!r} holds {h * w} tokens, but the sequence has {seq_len}")
    return h, w


class LocalMixing(nn.Module):
    """``h + DepthwiseConv(h)`` over the token grid (k x k) or along the sequence (k): each
    channel mixes with the same channel of its neighbours, zero-padded at the borders.

    ``causal``: the kernel is masked to the taps at or before its centre in sequence (raster)
    order (the rows above, and the left half of its own row), so position i reads only
    positions <= i (PixelCNN's mask "B", van den Oord et al. 2016)."""

    def __init__(self, width: int, kernel: int, grid: tuple[int, int] | None, causal: bool = False):
        super().__init__()
        if kernel <= 0 or kernel % 2 == 0:
            raise ValueError(f"conv_kernel must be a positive odd size (or 0 for none), got {kernel}")
        conv = nn.Conv2d if grid else nn.Conv1d
        self.conv = conv(width, width, kernel, padding=kernel // 2, groups=width)
        self.grid = grid
        mask = None
        if causal:
            c = kernel // 2
            mask = (torch.arange(kernel) <= c).float()  # along the sequence, or within the centre row
            if grid:
                mask = torch.cat([torch.ones(c, kernel), mask[None], torch.zeros(c, kernel)])
        self.register_buffer("mask", mask, persistent=False)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        B, M, W = h.shape
        if self.grid and M != self.grid[0] * self.grid[1]:
            gh, gw = self.grid
            raise ValueError(f"conv over a {gh}x{gw} token grid needs {gh * gw} tokens, got {M}")
        return self._mix(h)

    def _mix(self, h: torch.Tensor) -> torch.Tensor:
        """``h`` [B, M, W] holds whole rows of the grid (any number of them)."""
        B, M, W = h.shape
        x = h.transpose(1, 2)
        if self.grid:
            x = x.reshape(B, W, M // self.grid[1], self.grid[1])
        if self.mask is None:
            y = self.conv(x)
        else:
            conv = F.conv2d if self.grid else F.conv1d
            y = conv(x, self.conv.weight * self.mask, self.conv.bias, padding=self.conv.padding, groups=W)
        return h + y.reshape(B, W, M).transpose(1, 2)

    def window(self, hist: torch.Tensor, start: int, m: int) -> torch.Tensor:
        """Causal mixing at positions ``start`` .. ``start + m - 1`` from ``hist`` [B, >= start + m, W]
        (the residual streams of every position so far), reading only the rows it needs."""
        if self.mask is None:
            raise ValueError("incremental mixing needs causal=True")
        row = self.grid[1] if self.grid else 1
        lo = max(0, start // row - self.conv.kernel_size[0] // 2) * row
        hi = min(hist.shape[1], -(-(start + m) // row) * row)  # up to the end of the last row touched
        win = hist[:, lo:hi]
        if (hi - lo) % row:  # a partial last row (only past the written positions): pad it with zeros
            win = F.pad(win, (0, 0, 0, row - (hi - lo) % row))
        return self._mix(win)[:, start - lo : start - lo + m]


class KVCache:
    """Keys, values and other per-position state of a causal network for incremental decoding.

    ``length`` positions are stored; the network's ``forward(..., cache=)`` reads them, writes
    its new positions and advances ``length``. Tensors are batch-first and preallocated to
    ``size`` positions along their sequence axis; ``fixed`` holds per-row tensors without one
    (e.g. cross-attention keys). :meth:`reorder` selects rows (beam search).
    """

    def __init__(self, size: int):
        self.size = size
        self.length = 0
        self.seq: dict[str, tuple[torch.Tensor, int]] = {}  # name -> (buffer, sequence axis)
        self.fixed: dict[str, torch.Tensor] = {}

    def write(self, name: str, x: torch.Tensor, dim: int) -> torch.Tensor:
        """Store ``x`` at positions ``length`` .. along axis ``dim``; returns positions 0 .. of all so far."""
        end = self.length + x.shape[dim]
        if end > self.size:
            raise ValueError(f"KV cache holds {self.size} positions; cannot write up to {end}")
        if name not in self.seq:
            shape = list(x.shape)
            shape[dim] = self.size
            self.seq[name] = (x.new_zeros(shape), dim)
        buf, _ = self.seq[name]
        buf.narrow(dim, self.length, x.shape[dim]).copy_(x)
        return buf.narrow(dim, 0, end)

    def reorder(self, index: torch.Tensor) -> None:
        """Keep rows ``index`` (in that order) of every stored tensor."""
        self.seq = {k: (buf.index_select(0, index), d) for k, (buf, d) in self.seq.items()}
        self.fixed = {k: v.index_select(0, index) for k, v in self.fixed.items()}


def attention(q, k, v, causal: bool, start: int = 0, dropout_p: float = 0.0) -> torch.Tensor:
    """Scaled dot-product attention of q [B, H, m, d] over k, v [B, H, start + m, d]; ``causal``:
    the query at position start + i sees keys 0 .. start + i only."""
    m = q.shape[2]
    if not causal or (start > 0 and m == 1):
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
    if start == 0:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)
    see = torch.arange(start, start + m, device=q.device)[:, None] >= torch.arange(start + m, device=q.device)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=see, dropout_p=dropout_p)


def rotate(x: torch.Tensor, rot: torch.Tensor, start: int = 0) -> torch.Tensor:
    """Rotary position embedding of q or k [B, H, M, d] at positions ``start``.. : each pair
    (x_i, x_{i+d/2}) is rotated by the angle of its position, so q . k depends only on their
    relative position."""
    end = start + x.shape[2]
    cos, sin = rot[0, start:end].to(x.dtype), rot[1, start:end].to(x.dtype)
    x1, x2 = x.chunk(2, -1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], -1)


class _Modulate(torch.autograd.Function):
    """``shift + normed * scale1`` (broadcast over tokens) with a lean backward.

    Autograd's ``addcmul`` backward spends an extra full pass multiplying by its scalar
    ``value``; here the backward is exactly two products and two token-axis reductions.
    """

    @staticmethod
    def forward(ctx, normed: torch.Tensor, scale1: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(normed, scale1)
        return torch.addcmul(shift, normed, scale1)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        normed, scale1 = ctx.saved_tensors
        g_normed = grad * scale1 if ctx.needs_input_grad[0] else None
        g_scale = (grad * normed).sum(1, keepdim=True) if ctx.needs_input_grad[1] else None
        g_shift = grad.sum(1, keepdim=True) if ctx.needs_input_grad[2] else None
        return g_normed, g_scale, g_shift


def zero_linear(fan_in: int, fan_out: int) -> nn.Linear:
    layer = nn.Linear(fan_in, fan_out)
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


def modulation(mod: nn.Linear, c_act: torch.Tensor, norms: int) -> list[torch.Tensor]:
    """SiLU(c) [B, W] -> ``[1 + a_1, b_1, ..., 1 + a_n, b_n]``, each [B, 1, W] (n = ``norms``)."""
    B, W = c_act.shape
    scale, shift = mod(c_act).view(B, norms, 2, 1, W).unbind(2)
    # unbind rather than slicing: its backward is one stack, not one zero-padded copy per piece
    return [x for pair in zip((scale + 1.0).unbind(1), shift.unbind(1)) for x in pair]


class AdaLN(nn.Module):
    """``(1 + a(c)) * LayerNorm(h) + b(c)`` given the modulation ``(1 + a(c), b(c))``.

    The LayerNorm has no learnable affine parameters; it is called with constant ones/zeros
    buffers because ATen's CPU layer-norm kernel is ~3x slower without weight and bias.
    The zero-initialised Linear producing ``a`` and ``b`` belongs to the enclosing block
    (``Block.mod``, ``EncoderTransformer.norm_out_mod``) and is applied by :func:`modulation`.
    """

    def __init__(self, width: int, eps: float = 1e-6):
        super().__init__()
        self.width = width
        self.eps = eps
        self.register_buffer("_one", torch.ones(width), persistent=False)
        self.register_buffer("_zero", torch.zeros(width), persistent=False)

    def forward(self, h: torch.Tensor, scale1: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
        normed = F.layer_norm(h, (self.width,), self._one.to(h.dtype), self._zero.to(h.dtype), self.eps)
        return _Modulate.apply(normed, scale1, shift)


class Block(nn.Module):
    """Pre-norm transformer block: h += Attn(AdaLN(h, c)); h += MLP(AdaLN(h, c)).

    ``mod`` is the block's zero-initialised AdaLN Linear, SiLU(c) [B, W] -> [B, 4W]: the
    (a, b) pairs of both norms from one matmul.
    """

    def __init__(self, width: int, heads: int, hidden: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.norm1 = AdaLN(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = AdaLN(width)
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)
        self.mod = zero_linear(width, 4 * width)

    def forward(self, h: torch.Tensor, c_act: torch.Tensor, rot: torch.Tensor | None = None, causal: bool = False,
                cache: KVCache | None = None, name: str = "") -> torch.Tensor:
        """``cache`` (causal only): ``h`` holds the positions after the cached ones; their keys
        and values are stored under ``name``."""
        scale1, shift1, scale2, shift2 = modulation(self.mod, c_act, 2)
        x = self.norm1(h, scale1, shift1)
        # [B, M, 3W] -> three strided [B, H, M, d] views; no copies before attention.
        q, k, v = rearrange(self.qkv(x), "b m (three h d) -> three b h m d", three=3, h=self.heads)
        start = 0 if cache is None else cache.length
        if rot is not None:
            q, k = rotate(q, rot, start), rotate(k, rot, start)
        if cache is not None:
            k, v = cache.write(name + "k", k, 2), cache.write(name + "v", v, 2)
        p = self.dropout if self.training else 0.0
        o = attention(q, k, v, causal, start, p)
        h = h + self.proj(rearrange(o, "b h m d -> b m (h d)"))
        x = self.norm2(h, scale2, shift2)
        return h + self.fc2(F.gelu(self.fc1(x)))


class EncoderTransformer(nn.Module):
    """``forward(z [B, M, D], t [B], cond [B] | None) -> logits [B, M, vocab_size]`` (float32).

    Built from ``cfg.layers, cfg.heads, cfg.width, cfg.mlp_ratio, cfg.dropout, cfg.embed_dim``.
    ``num_classes > 0`` makes it class-conditional: ``cond`` holds labels in
    ``[0, num_classes]`` where ``num_classes`` means "no condition" (the learned null
    embedding, also used when ``cond`` is None). ``causal``: position i sees positions <= i only
    (see the module doc); ``forward(z, t, cond, cache=KVCache(seq_len))`` then decodes
    incrementally. ``data_grid`` (H, W): the tokens' layout for ``conv_kernel`` when
    ``cfg.token_grid`` is empty (the task's ``DataSpec.grid``).
    """

    def __init__(self, cfg, vocab_size: int, seq_len: int, num_classes: int = 0, causal: bool = False,
                 data_grid: tuple[int, int] | None = None):
        super().__init__()
        width, heads, layers = int(cfg.width), int(cfg.heads), int(cfg.layers)
        if width <= 0 or heads <= 0 or layers <= 0:
            raise ValueError(f"width, heads and layers must be positive, got {width}, {heads}, {layers}")
        if width % heads:
            raise ValueError(f"width ({width}) must be divisible by heads ({heads})")
        if vocab_size <= 0 or seq_len <= 0 or num_classes < 0:
            raise ValueError(
                f"need vocab_size > 0, seq_len > 0, num_classes >= 0; got {vocab_size}, {seq_len}, {num_classes}"
            )
        hidden = int(round(width * cfg.mlp_ratio))
        self.embed_dim = int(cfg.embed_dim)
        self.width = width
        self.vocab_size = vocab_size
        self.seq_len = seq_len
        self.num_classes = num_classes
        self.causal = bool(causal)

        self.in_proj = nn.Linear(self.embed_dim, width)
        register_positions(self, cfg, seq_len, width, heads)
        self.time_mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.class_emb = nn.Embedding(num_classes + 1, width) if num_classes > 0 else None
        self.blocks = nn.ModuleList(Block(width, heads, hidden, float(cfg.dropout)) for _ in range(layers))
        if data_grid and data_grid[0] * data_grid[1] != seq_len:
            raise ValueError(f"the data's token grid {data_grid} does not hold its {seq_len} tokens")
        kernel, grid = int(cfg.conv_kernel), token_grid(str(cfg.token_grid), seq_len) or data_grid
        self.local = nn.ModuleList(LocalMixing(width, kernel, grid, self.causal) for _ in range(layers)) if kernel else None
        self.norm_out = AdaLN(width)
        self.head = nn.Linear(width, vocab_size)
        self.norm_out_mod = zero_linear(width, 2 * width)

    @property
    def null_class(self) -> int:
        """The label meaning "unconditional" (for classifier-free guidance)."""
        return self.num_classes

    def _check(self, z: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        if z.dim() != 3 or z.shape[-1] != self.embed_dim:
            raise ValueError(f"z must be [B, M, D] with D={self.embed_dim}, got {tuple(z.shape)}")
        B, M, _ = z.shape
        if M > self.seq_len:
            raise ValueError(f"sequence length {M} exceeds the model's seq_len={self.seq_len}")
        if M == 0:
            raise ValueError("z has an empty sequence axis")
        if not torch.is_floating_point(z):
            raise ValueError(f"z must be a float tensor, got {z.dtype}")
        if t.dim() == 0:
            t = t.expand(B)
        if t.shape != (B,):
            raise ValueError(f"t must be [B] with B={B} (or a scalar), got {tuple(t.shape)}")
        if cond is not None:
            if self.class_emb is None:
                raise ValueError(
                    "cond was given but this EncoderTransformer is unconditional (num_classes=0); "
                    "build it with num_classes > 0 or pass cond=None"
                )
            if cond.shape != (B,):
                raise ValueError(f"cond must be [B] with B={B}, got {tuple(cond.shape)}")
            if cond.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
                raise ValueError(f"cond must hold integer labels, got {cond.dtype}")
            # Value check only where it is free: on CPU and outside torch.compile (on CUDA it
            # would synchronise; an out-of-range label then fails inside the embedding lookup).
            if (
                cond.device.type == "cpu"
                and not torch.compiler.is_compiling()
                and cond.numel()
                and (cond.min() < 0 or cond.max() > self.num_classes)
            ):
                raise ValueError(
                    f"cond labels must lie in [0, {self.num_classes}] ({self.num_classes} = null), "
                    f"got range [{int(cond.min())}, {int(cond.max())}]"
                )
        return t

    def condition(self, t: torch.Tensor, cond: torch.Tensor | None, batch: int) -> torch.Tensor:
        """The conditioning vector c [B, W] from time (and class)."""
        c = self.time_mlp(sinusoidal(t * 1000.0, self.width))
        if self.class_emb is not None:
            if cond is None:
                cond = torch.full((batch,), self.num_classes, dtype=torch.long, device=t.device)
            c = c + self.class_emb(cond.long())
        return c

    def forward(self, z: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None,
                cache: KVCache | None = None) -> torch.Tensor:
        """Logits at the positions of ``z``: 0 .. M-1, or with a ``cache`` (causal only) the M
        positions after the ``cache.length`` already decoded (the cache is then advanced)."""
        t = self._check(z, t, cond)
        B, M, _ = z.shape
        start = 0
        if cache is not None:
            if not self.causal:
                raise ValueError("incremental decoding with a KV cache needs a causal EncoderTransformer")
            start = cache.length
            if start + M > self.seq_len:
                raise ValueError(f"positions {start}..{start + M - 1} exceed the model's seq_len={self.seq_len}")
        c_act = F.silu(self.condition(t, cond, B))
        h = self.in_proj(z) if self.pos is None else self.in_proj(z) + self.pos[start : start + M]
        for i, block in enumerate(self.blocks):
            if self.local is not None:
                h = self.local[i](h) if cache is None else self.local[i].window(cache.write(f"h{i}", h, 1), start, M)
            h = block(h, c_act, self.rot, self.causal, cache, f"{i}")
        if cache is not None:
            cache.length += M
        scale1, shift = modulation(self.norm_out_mod, c_act, 1)
        return self.head(self.norm_out(h, scale1, shift)).float()
