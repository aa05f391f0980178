"""A native VQGAN (taming-transformers ``VQModel``) that loads taming checkpoints directly.

Architecture (Esser et al. 2021, taming-transformers): a convolutional encoder with
``len(ch_mult) - 1`` stride-2 downsamplings (f16 for ``ch_mult=[1,1,2,2,4]``), GroupNorm(32)
+ swish ResNet blocks, single-head spatial self-attention at ``attn_resolutions``, a 1x1
``quant_conv`` to ``embed_dim``, nearest-neighbour vector quantisation against
``quantize.embedding`` (``n_embed`` codes), a 1x1 ``post_quant_conv`` and a mirrored decoder.

Written from the architecture description, with the same module tree as taming so a
taming state dict loads under its own key names (``encoder.*``, ``decoder.*``,
``quantize.embedding.weight``, ``quant_conv.*``, ``post_quant_conv.*``). Keys of the
training loss (``loss.*``: LPIPS and the discriminator) are ignored. Neither
taming-transformers nor pytorch-lightning is needed.

Images are float ``[B, 3, H, W]`` in ``[-1, 1]`` (taming's convention); tokens are
LongTensor ``[B, H/f, W/f]`` in ``0..n_embed-1``.
"""
from __future__ import annotations

import pickle
import warnings
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from catdiff.api.errors import UserError, read_text

# The FFHQ / LSUN / ImageNet f16-1024 configuration (taming configs/*_vqgan.yaml).
F16_1024 = {
    "n_embed": 1024,
    "embed_dim": 256,
    "ddconfig": dict(double_z=False, z_channels=256, resolution=256, in_channels=3, out_ch=3, ch=128,
                     ch_mult=[1, 1, 2, 2, 4], num_res_blocks=2, attn_resolutions=[16], dropout=0.0),
}
DDCONFIG_KEYS = ("z_channels", "resolution", "in_channels", "out_ch", "ch", "ch_mult", "num_res_blocks",
                 "attn_resolutions")
VQ_TARGETS = ("taming.models.vqgan.VQModel",)


class CheckpointMismatch(UserError, RuntimeError):
    """A checkpoint that is not readable, or whose keys or shapes do not fit the configured VQGAN
    (a UserError: the CLI prints it as one line; a RuntimeError for older callers)."""


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, channels, eps=1e-6)


class ResnetBlock(nn.Module):
    """x + conv(swish(norm(conv(swish(norm(x)))))), 1x1 ``nin_shortcut`` when channels change."""

    def __init__(self, cin: int, cout: int, dropout: float = 0.0):
        super().__init__()
        self.norm1, self.conv1 = _norm(cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2, self.conv2 = _norm(cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.dropout = nn.Dropout(dropout)
        self.nin_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return (x if self.nin_shortcut is None else self.nin_shortcut(x)) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the H*W positions, 1x1 convs for q, k, v and output."""

    def __init__(self, c: int):
        super().__init__()
        self.norm = _norm(c)
        self.q, self.k, self.v, self.proj_out = (nn.Conv2d(c, c, 1) for _ in range(4))

    def forward(self, x):
        b, c, h, w = x.shape
        n = self.norm(x)
        q, k, v = (m(n).reshape(b, c, h * w).transpose(1, 2) for m in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None])[:, 0]  # softmax(qk^T/sqrt(c)) v
        return x + self.proj_out(out.transpose(1, 2).reshape(b, c, h, w))


class Downsample(nn.Module):
    """Stride-2 3x3 conv after zero-padding right and bottom by one (taming's asymmetric pad)."""

    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, stride=2)

    def forward(self, x):
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest 2x upsampling, then a 3x3 conv."""

    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Level(nn.Module):
    """One resolution level: ``block`` (ResNet blocks), ``attn`` (one per block or none) and a resampler."""

    def __init__(self, blocks: list[nn.Module], attn: list[nn.Module], resample: nn.Module | None, name: str):
        super().__init__()
        self.block, self.attn = nn.ModuleList(blocks), nn.ModuleList(attn)
        self.resample_name = name if resample is not None else None
        if resample is not None:
            self.add_module(name, resample)  # taming's key: down.N.downsample / up.N.upsample

    def forward(self, h):
        for i, block in enumerate(self.block):
            h = block(h)
            if len(self.attn):
                h = self.attn[i](h)
        return h if self.resample_name is None else getattr(self, self.resample_name)(h)


class _Mid(nn.Module):
    def __init__(self, c: int, dropout: float):
        super().__init__()
        self.block_1, self.attn_1, self.block_2 = ResnetBlock(c, c, dropout), AttnBlock(c), ResnetBlock(c, c, dropout)

    def forward(self, h):
        return self.block_2(self.attn_1(self.block_1(h)))


class Encoder(nn.Module):
    def __init__(self, *, ch, ch_mult, num_res_blocks, attn_resolutions, in_channels, resolution, z_channels,
                 double_z=False, dropout=0.0, **_):
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)
        levels, res, cin = [], resolution, ch
        for i, mult in enumerate(ch_mult):
            cout, blocks, attn = ch * mult, [], []
            for _ in range(num_res_blocks):
                blocks.append(ResnetBlock(cin, cout, dropout))
                cin = cout
                if res in attn_resolutions:
                    attn.append(AttnBlock(cout))
            last = i == len(ch_mult) - 1
            levels.append(_Level(blocks, attn, None if last else Downsample(cout), "downsample"))
            res = res if last else res // 2
        self.down = nn.ModuleList(levels)
        self.mid = _Mid(cin, dropout)
        self.norm_out = _norm(cin)
        self.conv_out = nn.Conv2d(cin, 2 * z_channels if double_z else z_channels, 3, padding=1)

    def forward(self, x):
        h = self.conv_in(x)
        for level in self.down:
            h = level(h)
        return self.conv_out(F.silu(self.norm_out(self.mid(h))))


class Decoder(nn.Module):
    def __init__(self, *, ch, ch_mult, num_res_blocks, attn_resolutions, out_ch, resolution, z_channels,
                 dropout=0.0, **_):
        super().__init__()
        cin = ch * ch_mult[-1]
        res = resolution // 2 ** (len(ch_mult) - 1)
        self.conv_in = nn.Conv2d(z_channels, cin, 3, padding=1)
        self.mid = _Mid(cin, dropout)
        levels = [None] * len(ch_mult)  # stored in increasing-resolution order, run in reverse (taming's ``up``)
        for i in reversed(range(len(ch_mult))):
            cout, blocks, attn = ch * ch_mult[i], [], []
            for _ in range(num_res_blocks + 1):
                blocks.append(ResnetBlock(cin, cout, dropout))
                cin = cout
                if res in attn_resolutions:
                    attn.append(AttnBlock(cout))
            levels[i] = _Level(blocks, attn, Upsample(cout) if i else None, "upsample")
            res = res * 2 if i else res
        self.up = nn.ModuleList(levels)
        self.norm_out = _norm(cin)
        self.conv_out = nn.Conv2d(cin, out_ch, 3, padding=1)

    def forward(self, z):
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            h = level(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class VectorQuantizer(nn.Module):
    """Nearest codebook row in squared Euclidean distance: k(z) = argmin_j ||z - e_j||^2."""

    def __init__(self, n_embed: int, embed_dim: int):
        super().__init__()
        self.embedding = nn.Embedding(n_embed, embed_dim)

    def codes(self, z: torch.Tensor) -> torch.Tensor:
        """z [B, C, h, w] -> code ids [B, h, w]."""
        b, c, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, c)
        e = self.embedding.weight
        dist = flat.pow(2).sum(1, keepdim=True) + e.pow(2).sum(1) - 2 * flat @ e.t()
        return dist.argmin(1).reshape(b, h, w)

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """code ids [B, h, w] -> z_q [B, C, h, w]."""
        return self.embedding(codes).permute(0, 3, 1, 2).contiguous()


class VQGAN(nn.Module):
    """taming's VQModel at inference: ``encode`` images to code grids, ``decode`` code grids to images."""

    def __init__(self, ddconfig: Mapping[str, Any], n_embed: int, embed_dim: int):
        super().__init__()
        missing = [k for k in DDCONFIG_KEYS if k not in ddconfig]
        if missing:
            raise UserError(f"VQGAN ddconfig lacks {', '.join(missing)} (expected taming's model.params.ddconfig)")
        self.ddconfig, self.n_embed, self.embed_dim = dict(ddconfig), int(n_embed), int(embed_dim)
        self.encoder = Encoder(**ddconfig)
        self.decoder = Decoder(**ddconfig)
        self.quantize = VectorQuantizer(n_embed, embed_dim)
        self.quant_conv = nn.Conv2d(ddconfig["z_channels"], embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(embed_dim, ddconfig["z_channels"], 1)
        self.factor = 2 ** (len(ddconfig["ch_mult"]) - 1)

    @property
    def codebook(self) -> torch.Tensor:
        """[n_embed, embed_dim]: the code vectors (to initialise a diffusion codebook from)."""
        return self.quantize.embedding.weight

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """images [B, 3, H, W] in [-1, 1] (H, W multiples of the factor) -> tokens [B, H/f, W/f]."""
        if images.dim() != 4 or images.shape[1] != self.ddconfig["in_channels"]:
            raise ValueError(f"VQGAN.encode expects [B, {self.ddconfig['in_channels']}, H, W], got {tuple(images.shape)}")
        if images.shape[2] % self.factor or images.shape[3] % self.factor:
            raise ValueError(f"image size {tuple(images.shape[2:])} is not a multiple of the VQGAN factor {self.factor}")
        return self.quantize.codes(self.quant_conv(self.encoder(images)))

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [B, h, w] (or [B, h*w] for square grids) -> images [B, 3, h*f, w*f] in [-1, 1]."""
        tokens = torch.as_tensor(tokens).long().to(self.codebook.device)
        if tokens.dim() == 2:
            side = int(round(tokens.shape[1] ** 0.5))
            if side * side != tokens.shape[1]:
                raise ValueError(f"cannot reshape {tokens.shape[1]} tokens to a square grid; pass [B, h, w]")
            tokens = tokens.reshape(-1, side, side)
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= self.n_embed):
            raise ValueError(f"VQGAN tokens must be in [0, {self.n_embed - 1}], got [{int(tokens.min())}, {int(tokens.max())}]")
        return self.decoder(self.post_quant_conv(self.quantize.lookup(tokens))).clamp(-1, 1)


# ---------------------------------------------------------------------------- loading


def read_config(path: str | Path) -> dict[str, Any]:
    """``model.yaml`` (taming/lightning project config) -> ``{"ddconfig", "n_embed", "embed_dim"}``."""
    try:
        import yaml
    except ImportError as e:  # pragma: no cover
        raise ImportError("reading a taming model.yaml needs PyYAML: `pip install pyyaml` "
                          "(or `pip install -e plugins/catdiff-vision`)") from e
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"VQGAN config {path} not found: provide taming's model.yaml (the project config "
                                "saved next to the checkpoint, `configs/*-project.yaml` in a taming log directory)")
    fix = ("give taming's model.yaml of this checkpoint (model.target taming.models.vqgan.VQModel, "
           "model.params.ddconfig, n_embed, embed_dim)")
    try:
        doc = yaml.safe_load(read_text(path, "VQGAN config"))
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        at = f" at line {where.line + 1}" if where is not None else ""
        raise UserError(f"VQGAN config {path} is not valid YAML{at} ({getattr(e, 'problem', None) or e}); {fix}") from None
    if doc is None:
        raise UserError(f"VQGAN config {path} is empty; {fix}")
    model = doc.get("model", doc) if isinstance(doc, dict) else None
    if not isinstance(model, dict):
        raise UserError(f"VQGAN config {path} holds a {type(doc).__name__}, not a model: mapping; {fix}")
    target = model.get("target")
    if target is not None and target not in VQ_TARGETS:
        raise UserError(f"{path}: model.target is {target!r}; only {', '.join(VQ_TARGETS)} (VectorQuantizer2) "
                         "checkpoints are supported (not GumbelVQ / EMA variants)")
    params = model.get("params", {})
    if not isinstance(params, dict):
        raise UserError(f"{path}: model.params is a {type(params).__name__}, not a mapping; {fix}")
    for key in ("ddconfig", "n_embed", "embed_dim"):
        if key not in params:
            raise UserError(f"{path}: model.params.{key} missing (expected a taming VQModel config)")
    dd = params["ddconfig"]
    if not isinstance(dd, dict):
        raise UserError(f"{path}: model.params.ddconfig is a {type(dd).__name__}, not a mapping; {fix}")
    missing = [k for k in DDCONFIG_KEYS if k not in dd]
    if missing:
        raise UserError(f"{path}: model.params.ddconfig lacks {', '.join(missing)}; {fix}")

    def bad(key, value, want):
        return UserError(f"{path}: {key} is {value!r}; expected {want}")

    def whole(v):
        return isinstance(v, int) and not isinstance(v, bool) and v >= 1

    for key in ("n_embed", "embed_dim"):
        if not whole(params[key]):
            raise bad(f"model.params.{key}", params[key], "a whole number >= 1")
    for key in ("z_channels", "resolution", "in_channels", "out_ch", "ch", "num_res_blocks"):
        if not whole(dd[key]):
            raise bad(f"model.params.ddconfig.{key}", dd[key], "a whole number >= 1")
    if not (isinstance(dd["ch_mult"], list) and dd["ch_mult"] and all(whole(m) for m in dd["ch_mult"])):
        raise bad("model.params.ddconfig.ch_mult", dd["ch_mult"], "a non-empty list of whole numbers >= 1")
    if not (isinstance(dd["attn_resolutions"], list) and all(isinstance(r, int) for r in dd["attn_resolutions"])):
        raise bad("model.params.ddconfig.attn_resolutions", dd["attn_resolutions"], "a list of whole numbers")
    widths = sorted({dd["ch"] * m for m in [1, *dd["ch_mult"]]})
    if any(w % 32 for w in widths):  # every block normalises in 32 groups
        raise bad("model.params.ddconfig.ch", dd["ch"], f"channel counts ch * ch_mult divisible by 32 (got {widths})")
    if not isinstance(dd.get("dropout", 0.0), (int, float)) or not isinstance(dd.get("double_z", False), bool):
        raise bad("model.params.ddconfig dropout / double_z", (dd.get("dropout"), dd.get("double_z")), "a number / true or false")
    return {"ddconfig": dict(dd), "n_embed": params["n_embed"], "embed_dim": params["embed_dim"]}


class _StubUnpickler(pickle.Unpickler):
    """Resolves classes of absent packages (pytorch_lightning callbacks, omegaconf) to inert stubs."""

    def find_class(self, module, name):
        try:
            return super().find_class(module, name)
        except (ImportError, AttributeError):
            return type(name, (), {"__init__": lambda self, *a, **k: None, "__setstate__": lambda self, s: None,
                                   "__module__": module})


class _StubPickle:
    Unpickler = _StubUnpickler
    load = pickle.load
    __name__ = "pickle"


def _unreadable(path: Path, e: BaseException) -> CheckpointMismatch:
    why = next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)
    return CheckpointMismatch(f"VQGAN checkpoint {path} is damaged or not a torch checkpoint ({why[:200]}); give "
                              "taming's last.ckpt (download it again if it was cut short)")


def read_state_dict(path: str | Path, trust: bool = False) -> dict[str, torch.Tensor]:
    """The ``state_dict`` of a lightning ``last.ckpt`` (or a bare state dict saved with torch.save).

    Loads with ``torch.load(weights_only=True)`` first. Lightning checkpoints usually also
    pickle training objects (callbacks, hyper-parameters) that the safe loader refuses; those
    load only with ``trust=True`` (``weights_only=False``, which can execute code from the
    file: use it for checkpoints you trust), and classes of packages that are not installed
    become inert stubs, so pytorch-lightning is not needed.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"VQGAN checkpoint {path} not found: provide taming's last.ckpt "
                                "(task option `tokenizer` or env CATDIFF_VQGAN)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "Weights only load failed" not in str(e):
            raise _unreadable(path, e) from None
        if not trust:
            raise CheckpointMismatch(
                f"{path} holds pickled objects besides tensors (typical of lightning checkpoints), which the safe "
                f"loader refuses ({str(e).splitlines()[0]}). If you trust the file, allow it with the task option "
                "`trust_checkpoint=true` (or env CATDIFF_TRUST_CHECKPOINT=1, or trust=True in Python)") from None
        warnings.warn(f"loading {path} with torch.load(weights_only=False) (trusted checkpoint)")
        try:
            payload = torch.load(path, map_location="cpu", weights_only=False, pickle_module=_StubPickle)
        except Exception as e:  # noqa: BLE001 - a damaged pickle raises many kinds
            raise _unreadable(path, e) from None
    except Exception as e:  # noqa: BLE001 - empty, truncated or not a torch file: torch raises many kinds
        raise _unreadable(path, e) from None
    state = payload.get("state_dict", payload) if isinstance(payload, dict) else None
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise CheckpointMismatch(f"{path} has no state_dict of tensors (keys: {list(payload)[:10] if isinstance(payload, dict) else type(payload).__name__})")
    return state


def load_state(model: VQGAN, state: Mapping[str, torch.Tensor], source: str = "checkpoint") -> VQGAN:
    """Load a taming state dict (``loss.*`` ignored); name every missing, unexpected or misshapen key."""
    state = {k: v for k, v in state.items() if not k.startswith("loss.")}
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in sorted(set(own) & set(state)) if state[k].shape != own[k].shape]
    if missing or unexpected or shapes:

        def some(keys):
            return ", ".join(keys[:12]) + (f", ... ({len(keys)} in all)" if len(keys) > 12 else "")

        parts = ([f"missing keys: {some(missing)}"] if missing else []) + \
                ([f"unexpected keys: {some(unexpected)}"] if unexpected else []) + \
                ([f"shape mismatches: {some(shapes)}"] if shapes else [])
        raise CheckpointMismatch(f"{source} does not fit the VQGAN of its config ({'; '.join(parts)}). "
                                 "Check that model.yaml belongs to this checkpoint and is a taming VQModel")
    model.load_state_dict(state)
    return model.eval().requires_grad_(False)


def vqgan_files(path: str | Path) -> tuple[Path, Path]:
    """(checkpoint, model.yaml) of a taming log directory (``last.ckpt`` or
    ``checkpoints/last.ckpt``; ``model.yaml`` or ``configs/*project.yaml``) or of its ``last.ckpt``."""
    ckpt = Path(path).expanduser()
    if ckpt.is_dir():
        root = ckpt
        ckpt = next((p for p in (root / "last.ckpt", root / "checkpoints" / "last.ckpt") if p.is_file()), root / "last.ckpt")
    else:
        root = ckpt.parent if ckpt.parent.name != "checkpoints" else ckpt.parent.parent
    if not ckpt.is_file():
        raise FileNotFoundError(f"VQGAN checkpoint {ckpt} not found: provide taming's last.ckpt (with model.yaml "
                                "beside it) as task option `tokenizer` or env CATDIFF_VQGAN")
    found = [root / "model.yaml", ckpt.parent / "model.yaml", *sorted((root / "configs").glob("*project.yaml"))]
    return ckpt, next((p for p in found if p.is_file()), root / "model.yaml")


def load_vqgan(ckpt: str | Path, config: str | Path | Mapping[str, Any] | None = None, trust: bool = False,
               device: str | torch.device = "cpu") -> VQGAN:
    """Build a VQGAN from taming's ``model.yaml`` and load ``last.ckpt``.

    ``ckpt`` may be the checkpoint file or a directory holding ``last.ckpt`` (or
    ``checkpoints/last.ckpt``) and ``model.yaml`` (or ``configs/*project.yaml``). ``config``
    may be a path or an already-parsed ``{"ddconfig", "n_embed", "embed_dim"}`` mapping.
    """
    ckpt, found_config = vqgan_files(ckpt)
    if config is None:
        config = found_config
    cfg = dict(config) if isinstance(config, Mapping) else read_config(config)
    model = VQGAN(cfg["ddconfig"], cfg["n_embed"], cfg["embed_dim"])
    return load_state(model, read_state_dict(ckpt, trust), str(ckpt)).to(device)


def init_codebook(codebook, vqgan: VQGAN) -> None:
    """Copy the VQGAN code vectors into a diffusion :class:`catdiff.nn.model.Codebook` (rows 0..K-1)
    for the CSDM-fixed baseline (paper 003 sec. 6.1, "CSDM dagger": embeddings initialised from
    the pretrained VQGAN codebook). One global scale maps them to the engine's initial mean
    squared norm (the mean over its freshly initialised rows), so the noise schedule sees the usual signal level
    while the geometry of the codes is kept. [mask]/[null] rows are left as they are."""
    codes = vqgan.codebook.detach().float()
    k, d = codebook.vocab_size, codebook.weight.shape[1]
    if codes.shape != (k, d):
        raise UserError(f"VQGAN codebook is {tuple(codes.shape)} but the diffusion codebook needs [{k}, {d}]: "
                         f"set embed_dim={codes.shape[1]} and use a task with vocab_size={codes.shape[0]}")
    target = codebook.weight.detach().pow(2).sum(1).mean()  # mean squared norm of the random init
    scale = (target / codes.pow(2).sum(1).mean().clamp_min(1e-12)).sqrt()
    with torch.no_grad():
        codebook.weight[:k] = codes * scale
