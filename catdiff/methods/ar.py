"""Autoregressive baseline: a causal Transformer decoder (Vaswani et al. 2017, "Attention is all
you need"; the AR rows of paper 003 Table 5) trained on the task's own backbone made causal.

Factorisation in sequence order (raster order for image tokens):
    log p(x | y) = sum_i log p(x_i | x_<i, y),
so the likelihood is exact: ``nll_bound`` returns -log p(x | y) in nats per sequence (the
engine's "bound" is then the exact NLL, and text tasks report true bits per character); it
ignores the time argument. Training minimises the next-token cross-entropy (teacher forcing),
the mean over tokens.

Network: the backbone (``encoder``, or ``encdec`` for translation, causal on the target side)
is built causal because this method's ``backbone_options`` ask the engine for ``causal=True``
(same size and options as the task's backbone; a local-mixing convolution keeps
its causal taps only). Its input at position i is the codebook embedding of x_{i-1}, with the
learned [mask] row standing for the start token at i = 0; the time input is constant (0).
Class conditioning enters through the backbone's AdaLN (its class embedding; null = the
unconditional label, trained by the engine's condition dropout), and classifier-free
guidance combines the two next-token log-probabilities as the other methods do (paper 004
eq. 7): log p = log p(.|null) + (1 + w)(log p(.|y) - log p(.|null)), renormalised.

Generation decodes one position at a time through a KV cache (each step runs the network on
the new position only). Samplers:

- ``sample``: ancestral, from p^(1/T) (``temperature`` T), restricted to the ``top_k`` most
  likely tokens (Fan et al. 2018, "Hierarchical neural story generation"; 0 = all) and then to
  the nucleus, the smallest set of mass >= ``top_p`` (Holtzman et al. 2020, "The curious case
  of neural text degeneration"; 1 = all);
- ``greedy``: the most likely token at every step;
- ``beam``: beam search with ``beam_size`` beams (Sutskever et al. 2014; fixed length M, so no
  length penalty), returning the most likely sequence found; used for translation.

Infilling: positions before the first unknown one of every row are a prompt (fed at once);
later known positions are forced when decoding reaches them (their log-probability still
counts in a beam's score). The ``steps`` and ``final`` arguments of ``sample`` do not apply.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..api.method import Method
from ..api.settings import Setting
from ..nn.backbones.encoder import KVCache
from .shared import check_sampling, gumbel, unwrap, with_aux


def shift_right(x: torch.Tensor, start_id: int) -> torch.Tensor:
    """Teacher-forcing inputs [B, M]: the start token, then x_0 .. x_{M-2}."""
    return torch.cat([torch.full_like(x[:, :1], start_id), x[:, :-1]], 1)


def check_causal(net) -> None:
    if not getattr(net, "causal", False):
        raise ValueError(f"method ar needs a causal backbone; {type(net).__name__} was built without causal=True "
                         f"(the engine passes the method's backbone_options to the backbone factory)")


def filtered_log_probs(logp: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """log-probabilities [..., K] at ``temperature``, cut to the ``top_k`` best tokens (0: all) and
    then to the top-p nucleus (1: all), renormalised; the most likely token always stays."""
    logp = F.log_softmax(logp.float() / temperature, -1)
    if 0 < top_k < logp.shape[-1]:
        kth = logp.topk(top_k, -1).values[..., -1:]
        logp = logp.masked_fill(logp < kth, -math.inf)
    if top_p < 1:
        sorted_logp, order = logp.sort(-1, descending=True)
        p = sorted_logp.exp()
        outside = p.cumsum(-1) - p >= top_p  # the tokens ranked above already hold mass top_p
        logp = logp.masked_fill(torch.zeros_like(outside).scatter(-1, order, outside), -math.inf)
    return F.log_softmax(logp, -1)


class Stream:
    """Incremental decoding of ``n`` rows through the network's KV cache: each call feeds the next
    input tokens [n, m] and returns the guided next-token log-probabilities [n, m, K]. With
    guidance the null-condition rows run in the same batch (rows n..2n-1 of the cache)."""

    def __init__(self, model, n: int, seq_len: int, cond, guidance: float, null_id: int | None, device):
        check_causal(model.net)
        self.model, self.n, self.guidance = model, n, guidance
        self.guided = guidance != 0 and cond is not None
        if self.guided:
            if null_id is None:
                raise ValueError("guidance > 0 needs a class-conditional model (num_classes > 0)")
            cond = torch.cat([cond, torch.full_like(cond, null_id)])
        self.cond = cond
        self.cache = KVCache(seq_len)
        self.t = torch.zeros(2 * n if self.guided else n, device=device)

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        z = self.model.codebook(tokens)
        if self.guided:
            z = torch.cat([z, z])
        logp = F.log_softmax(self.model.net(z, self.t, self.cond, cache=self.cache).float(), -1)
        if not self.guided:
            return logp
        logp_c, logp_u = logp.chunk(2)
        return F.log_softmax((1 + self.guidance) * logp_c - self.guidance * logp_u, -1)

    def reorder(self, rows: torch.Tensor) -> None:
        self.cache.reorder(torch.cat([rows, rows + self.n]) if self.guided else rows)


class AR(Method):
    """Next-token cross-entropy on a causal backbone; exact NLL; KV-cache samplers (module doc)."""

    name = "ar"
    description = "autoregressive anchor: the backbone made causal, exact likelihood, KV cache"
    samplers = ("sample", "greedy", "beam")
    settings = (
        Setting("temperature", 1.0, "sampling temperature (sampler sample)", low=0, low_open=True, mutable=True),
        Setting("top_k", 0, "keep the k most likely tokens when sampling; 0 = all", low=0, mutable=True),
        Setting("top_p", 1.0, "nucleus sampling: keep the smallest set of tokens with this much mass",
                low=0, low_open=True, high=1, mutable=True),
        Setting("beam_size", 4, "beams of the beam sampler", low=1, mutable=True),
    )
    backbone_options = {"causal": True}

    def token_nll(self, model, x, cond) -> torch.Tensor:
        """-log p(x_i | x_<i, y) [B, M] by teacher forcing, through the Denoiser's ``logits``."""
        check_causal(model.net)
        z = model.codebook(shift_right(x, model.codebook.mask_id))
        logits = model.logits(z, torch.zeros(len(x), device=x.device), cond)
        return F.cross_entropy(logits.float().transpose(1, 2), x, reduction="none")

    def build(self, backbone, spec):
        model = super().build(backbone, spec)
        check_causal(model.net)
        return model

    def loss(self, model, x, cond):
        t = torch.zeros(len(x), device=x.device)
        out = model(shift_right(x, unwrap(model).codebook.mask_id), t=t, cond=cond, targets=x)
        loss = F.cross_entropy(out.logits.float().transpose(1, 2), x)
        return with_aux(loss, {"l_ce": loss}, out.aux)

    @torch.no_grad()
    def nll_bound(self, model, x, cond, t):
        return {"total": self.token_nll(model, x, cond).double().sum(1)}

    @torch.no_grad()
    def sample(self, model, req):
        n, seq_len, device, sampler = req.n, req.seq_len, req.device, req.sampler
        known, known_mask = check_sampling(n, seq_len, req.final, req.known, req.known_mask, device)
        if sampler == "beam":
            return self.beam(model, n, seq_len, req.cond, req.guidance, req.null_id, known, known_mask, device)
        stream = Stream(model, n, seq_len, req.cond, req.guidance, req.null_id, device)
        x = torch.zeros(n, seq_len, dtype=torch.long, device=device)
        start = torch.full((n, 1), model.codebook.mask_id, dtype=torch.long, device=device)
        prompt = 0
        if known is not None:
            unknown = ~known_mask
            first = torch.where(unknown.any(1), unknown.long().argmax(1), seq_len)
            prompt = int(first.min())
            x[:, :prompt] = known[:, :prompt]
        if prompt == seq_len:
            return known
        logp = stream(torch.cat([start, x[:, :prompt]], 1))[:, -1]
        for i in range(prompt, seq_len):
            if sampler == "greedy":
                tok = logp.argmax(-1)
            else:
                logp = filtered_log_probs(logp, self.cfg.temperature, self.cfg.top_k, self.cfg.top_p)
                tok = (logp.double() + gumbel(logp.shape, req.generator, device)).argmax(-1)
            x[:, i] = tok if known is None else torch.where(known_mask[:, i], known[:, i], tok)
            if i + 1 < seq_len:
                logp = stream(x[:, i : i + 1])[:, -1]
        return x

    def beam(self, model, n, seq_len, cond, guidance, null_id, known, known_mask, device):
        """Beam search: ``beam_size`` prefixes per row kept by their summed log-probability."""
        width = int(self.cfg.beam_size)
        rows = torch.arange(n, device=device)
        stream = Stream(model, n * width, seq_len, None if cond is None else cond.repeat_interleave(width, 0),
                        guidance, null_id, device)
        score = torch.full((n, width), -math.inf, dtype=torch.float64, device=device)
        score[:, 0] = 0.0  # one live beam at the start: no duplicates
        seqs = torch.zeros(n, width, 0, dtype=torch.long, device=device)
        logp = stream(torch.full((n * width, 1), model.codebook.mask_id, dtype=torch.long, device=device))[:, -1]
        for i in range(seq_len):
            logp = logp.view(n, width, -1).double()
            K = logp.shape[-1]
            if known is not None:
                only = F.one_hot(known[:, i], K).bool()[:, None] | ~known_mask[:, i, None, None]
                logp = logp.masked_fill(~only, -math.inf)
            score, best = (score[..., None] + logp).view(n, -1).topk(width, -1)
            parent, tok = best // K, best % K
            seqs = torch.cat([seqs[rows[:, None], parent], tok[..., None]], -1)
            if i + 1 < seq_len:
                stream.reorder((rows[:, None] * width + parent).view(-1))
                logp = stream(tok.view(-1, 1))[:, -1]
        return seqs[:, 0]  # topk is sorted: beam 0 scores highest
