"""A small VQ-VAE tokenizer: 4x downsampling, e.g. 28x28 grey images -> 7x7 = 49 tokens of ``codes`` ids.

``channels`` (1 grey, 3 RGB) and ``grid`` (the code grid side, image side / 4) default to
fashion-mnist's 1 and 7; ``image-folder`` (:mod:`.image_folder`) builds e.g. 32x32 RGB -> 8x8.
They are constructor arguments, not part of ``HPARAMS``, so fashion-mnist's cache hash and
its weights are unchanged.

Encoder: conv 4x4/2 (channels->32) -> conv 4x4/2 (32->64) -> 3x3 conv -> 1x1 to ``dim``; decoder
mirrors it with transposed convs; output is a linear [0, 1] grey image. Quantisation is the
nearest code (van den Oord et al. 2017) with the straight-through gradient and EMA codebook
updates (their appendix A.1): with n_k the batch count and s_k the batch sum of encoder
outputs assigned to code k,
    N_k <- g N_k + (1 - g) n_k,   m_k <- g m_k + (1 - g) s_k,   e_k = m_k / N~_k
(N~_k Laplace-smoothed), loss = ||x - x_hat||^2 + beta ||z_e - sg(e)||^2. Codes unused for
a while (N_k < 1e-2 * mean) restart at random encoder outputs of the batch.

Trained by ``catdiff prepare fashion-mnist`` (a few minutes on one CPU thread), cached by a
hash of its hyper-parameters; see :func:`train` and :func:`load`.
"""
from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F
from torch import nn

HPARAMS = {"codes": 128, "dim": 16, "width": 48, "steps": 1500, "batch_size": 64, "lr": 2e-3, "beta": 0.25,
           "decay": 0.99, "seed": 0}


class VQTokenizer(nn.Module):
    def __init__(self, codes: int = 128, dim: int = 16, width: int = 64, decay: float = 0.99, channels: int = 1,
                 grid: int = 7, **_):
        super().__init__()
        half = width // 2
        self.codes, self.dim, self.decay, self.channels, self.grid = codes, dim, decay, channels, grid
        self.encoder = nn.Sequential(
            nn.Conv2d(channels, half, 4, 2, 1), nn.ReLU(), nn.Conv2d(half, width, 4, 2, 1), nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, dim, 1))
        self.decoder = nn.Sequential(
            nn.Conv2d(dim, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
            nn.ConvTranspose2d(width, half, 4, 2, 1), nn.ReLU(), nn.ConvTranspose2d(half, channels, 4, 2, 1))
        self.register_buffer("embedding", torch.randn(codes, dim) * 0.1)
        self.register_buffer("cluster_size", torch.ones(codes))
        self.register_buffer("embed_sum", self.embedding.clone())

    @property
    def seq_len(self) -> int:
        return self.grid * self.grid

    def _nearest(self, z: torch.Tensor) -> torch.Tensor:
        flat = z.permute(0, 2, 3, 1).reshape(-1, self.dim)
        e = self.embedding
        return (flat.pow(2).sum(1, keepdim=True) - 2 * flat @ e.t() + e.pow(2).sum(1)).argmin(1)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 [N, C, 4g, 4g] (0..255) or float in [0, 1] -> tokens [N, g*g] (fashion: [N, 1, 28, 28] -> [N, 49])."""
        x = images.float() / 255 if images.dtype == torch.uint8 else images.float()
        with torch.no_grad():
            return self._nearest(self.encoder(x)).reshape(len(x), -1)

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [N, g*g] -> float images [N, C, 4g, 4g] in [0, 1]."""
        tokens = torch.as_tensor(tokens).long()
        if tokens.dim() != 2 or tokens.shape[1] != self.seq_len:
            raise ValueError(f"expected tokens [N, {self.seq_len}], got {tuple(tokens.shape)}")
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= self.codes):
            raise ValueError(f"token ids must be in [0, {self.codes - 1}], got [{int(tokens.min())}, {int(tokens.max())}]")
        z = self.embedding[tokens].reshape(-1, self.grid, self.grid, self.dim).permute(0, 3, 1, 2)
        with torch.no_grad():
            return self.decoder(z).clamp(0, 1)

    def forward(self, x: torch.Tensor):
        """Training pass: (reconstruction, commitment loss, code ids); updates the EMA codebook."""
        z = self.encoder(x)
        idx = self._nearest(z.detach())
        flat = z.permute(0, 2, 3, 1).reshape(-1, self.dim)
        q = self.embedding[idx]
        if self.training:
            self._ema_update(flat.detach(), idx)
        commit = F.mse_loss(flat, q)
        q = flat + (q - flat).detach()  # straight-through estimator
        rec = self.decoder(q.reshape(z.shape[0], z.shape[2], z.shape[3], self.dim).permute(0, 3, 1, 2))
        return rec, commit, idx

    @torch.no_grad()
    def _ema_update(self, flat: torch.Tensor, idx: torch.Tensor) -> None:
        onehot = F.one_hot(idx, self.codes).type_as(flat)
        self.cluster_size.lerp_(onehot.sum(0), 1 - self.decay)
        self.embed_sum.lerp_(onehot.t() @ flat, 1 - self.decay)
        n = self.cluster_size.sum()
        smoothed = (self.cluster_size + 1e-5) / (n + self.codes * 1e-5) * n
        self.embedding.copy_(self.embed_sum / smoothed[:, None])
        dead = self.cluster_size < 1e-2 * n / self.codes
        if dead.any():
            pick = flat[torch.randint(len(flat), (int(dead.sum()),), device=flat.device)]
            self.embedding[dead] = pick
            self.embed_sum[dead] = pick
            self.cluster_size[dead] = 1.0


def train(images: torch.Tensor, hparams: dict | None = None, log=print) -> VQTokenizer:
    """Train on uint8 images [N, C, H, W] (deterministic for a fixed seed and thread count); ``hparams``
    may add the constructor's ``channels`` / ``grid``. Batches are converted to float one at a time."""
    from .classifier import single_thread

    hp = dict(HPARAMS, **(hparams or {}))
    with single_thread(), torch.random.fork_rng(devices=[]), torch.enable_grad():
        torch.manual_seed(hp["seed"])
        model = VQTokenizer(**hp)
        gen = torch.Generator().manual_seed(hp["seed"])
        opt = torch.optim.Adam(model.parameters(), lr=hp["lr"])
        t0 = time.perf_counter()
        model.train()
        for step in range(hp["steps"]):
            lr = hp["lr"] * 0.5 * (1 + math.cos(math.pi * step / hp["steps"]))
            for g in opt.param_groups:
                g["lr"] = lr
            x = images[torch.randint(len(images), (hp["batch_size"],), generator=gen)].float() / 255
            rec, commit, _ = model(x)
            loss = F.mse_loss(rec, x) + hp["beta"] * commit
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if log and ((step + 1) % max(1, hp["steps"] // 10) == 0 or step + 1 == 10):  # step 10: an early estimate
                took = time.perf_counter() - t0
                log(f"vq tokenizer step {step + 1}/{hp['steps']}: loss {loss.item():.4f} ({took:.0f}s, about "
                    f"{took / (step + 1) * (hp['steps'] - step - 1):.0f}s left)")
    return model.eval().requires_grad_(False)


@torch.no_grad()
def reconstruction(model: VQTokenizer, images: torch.Tensor, batch_size: int = 1000) -> dict[str, float]:
    """Mean squared error per pixel on [0, 1], PSNR = 10 log10(1 / MSE), and codebook usage."""
    from .classifier import single_thread

    se, used = 0.0, torch.zeros(model.codes, dtype=torch.bool)
    with single_thread():
        for chunk in images.split(batch_size):
            chunk = chunk.float() / 255
            tokens = model.encode(chunk)
            used[tokens.unique()] = True
            se += (model.decode(tokens) - chunk).pow(2).sum().item()
    mse = se / images.numel()
    return {"vq_mse": mse, "vq_psnr": 10 * math.log10(1 / max(mse, 1e-12)), "vq_codes_used": float(used.sum())}
