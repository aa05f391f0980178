"""Backbone training-throughput benchmark: ours vs stock ``nn.TransformerEncoder``.

    python -m benchmarks.speed [--quick] [--device cpu|cuda] [--threads N] [--no-bf16] [--slow-bf16]

Everything is reported as ratios measured within this one run (absolute times on shared
machines are noisy): measurements of the two models are interleaved in rounds and each
reported figure is a median over rounds.

Sections
  1. matmul peak: FLOP/s of a large fp32 ``torch.mm`` and of bf16 matmuls.
  2. backbone training step (forward + backward + AdamW) for the default digits backbone
     (``catdiff.run.config.make()``) and the paper-sized image backbone (15 layers, 8 heads,
     512 wide, 256 tokens, K=1024, D=256); ours vs stock, fp32 and bf16 autocast.
  3. objective cost (full CATDM step vs plain CSDM step, and CATDM with ``l0_rows=0.25``):
     see ``objective_cost``.
  4. local mixing cost: the digits backbone with its ``conv_kernel`` (3x3 depthwise conv over
     the 8x8 token grid before each block) over the same backbone without; see ``conv_cost``.
  5. training-loop overhead: the end-to-end ``Engine.fit`` step (data, loss, backward, optimizer,
     both EMAs, logging) over the bare method step on the same batch, for the digits default
     and the paper image backbone; host syncs per step and peak memory; see ``loop_cost``.
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from catdiff.nn.backbones import EncoderTransformer, build_encoder
from catdiff.run.config import Config, make
from catdiff.run.engine import adamw

FLOP_FORMULA = (
    "FLOPs per training step = 6 * P_tok * B * M + 12 * L * M^2 * W * B   "
    "(P_tok = matmul weights applied per token: D*W + L*(4*W^2 + 2*W*F) + W*K; "
    "the second term is attention scores + mixing, fwd+bwd)"
)


# ----------------------------------------------------------------------------- timing
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_step(fn, warmup: int, iters: int, device: torch.device | str = "cpu") -> float:
    """Run ``fn`` ``warmup`` times, then ``iters`` timed times; median seconds per call."""
    device = torch.device(device)
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times) if times else float("nan")


def interleaved(fns: dict[str, callable], rounds: int, iters: int, warmup: int, device) -> dict[str, list[float]]:
    """Warm every fn up, then ``rounds`` rounds timing each fn in turn (``iters`` calls each)."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    out = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            out[name].append(time_step(fn, 0, iters, device))
    return out


# ----------------------------------------------------------------------------- matmul peak
def matmul_flops(device, n: int, dtype: torch.dtype, layout: str, rounds: int) -> float:
    """FLOP/s of an n x n x n matmul; ``layout`` "mm" is A @ B, "linear" is F.linear(A, B) = A @ B^T."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    fn = (lambda: torch.mm(a, b)) if layout == "mm" else (lambda: F.linear(a, b))
    sec = time_step(fn, 1, rounds, device)
    return 2 * n**3 / sec


# ----------------------------------------------------------------------------- models
class StockBackbone(nn.Module):
    """Stock ``nn.TransformerEncoder`` with the same input projection, positions and head."""

    def __init__(self, cfg: Config, vocab_size: int, seq_len: int):
        super().__init__()
        hidden = int(round(cfg.width * cfg.mlp_ratio))
        self.in_proj = nn.Linear(cfg.embed_dim, cfg.width)
        self.register_buffer("pos", torch.randn(seq_len, cfg.width) * 0.02, persistent=False)
        layer = nn.TransformerEncoderLayer(
            cfg.width, cfg.heads, hidden, dropout=cfg.dropout, activation="gelu", batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.width)
        self.head = nn.Linear(cfg.width, vocab_size)

    def forward(self, z, t, cond=None):
        h = self.in_proj(z) + self.pos[: z.shape[1]]
        return self.head(self.norm(self.encoder(h))).float()


def step_flops(cfg: Config, vocab_size: int, seq_len: int, batch: int) -> float:
    W, L, D, K, M = cfg.width, cfg.layers, cfg.embed_dim, vocab_size, seq_len
    F_ = int(round(W * cfg.mlp_ratio))
    p_tok = D * W + L * (4 * W * W + 2 * W * F_) + W * K
    return 6 * p_tok * batch * M + 12 * L * M * M * W * batch


def make_step(model: nn.Module, cfg: Config, vocab_size: int, seq_len: int, batch: int, device, bf16: bool):
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(batch, seq_len, cfg.embed_dim, generator=gen).to(device)
    t = torch.rand(batch, generator=gen).to(device)
    x = torch.randint(0, vocab_size, (batch, seq_len), generator=gen).to(device)
    opt = adamw(model.parameters(), lr=1e-4)
    model.train()

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(z, t)
        loss = F.cross_entropy(logits.flatten(0, 1), x.flatten())
        loss.backward()
        opt.step()

    return step


def backbone_section(name, cfg, vocab_size, seq_len, batch, device, prec, rounds, iters, warmup):
    """Time ours and stock interleaved; returns (flops, median ours s, median stock s, paired speed ratio)."""
    flops = step_flops(cfg, vocab_size, seq_len, batch)
    torch.manual_seed(0)
    ours = EncoderTransformer(cfg, vocab_size, seq_len).to(device)
    stock = StockBackbone(cfg, vocab_size, seq_len).to(device)
    n_ours = sum(p.numel() for p in ours.parameters()) / 1e6
    n_stock = sum(p.numel() for p in stock.parameters()) / 1e6
    bf16 = prec == "bf16"
    fns = {
        "ours": make_step(ours, cfg, vocab_size, seq_len, batch, device, bf16),
        "stock": make_step(stock, cfg, vocab_size, seq_len, batch, device, bf16),
    }
    res = interleaved(fns, rounds, iters, warmup=warmup, device=device)
    t_ours, t_stock = statistics.median(res["ours"]), statistics.median(res["stock"])
    speed = statistics.median(s / o for o, s in zip(res["ours"], res["stock"]))  # paired per round
    print(
        f"  {name:<24}{prec:<6} B={batch:<3} {flops / 1e9:7.2f} GFLOP/step  params ours {n_ours:.2f}M "
        f"stock {n_stock:.2f}M  ours {t_ours * 1e3:8.1f} ms  stock {t_stock * 1e3:8.1f} ms  "
        f"ours/stock speed {speed:.3f}  ({rounds} rounds x {iters})",
        flush=True,
    )
    return flops, t_ours, t_stock, speed


def compile_section(name, cfg, vocab_size, seq_len, batch, device, prec, rounds, iters, warmup):
    """Our backbone eager against ``torch.compile``d (the engine's ``compile=true``: in place, default
    mode), same weights, interleaved; the compile itself happens in the warm-up and is reported
    apart. Returns (flops, median eager s, median compiled s, compile s)."""
    flops = step_flops(cfg, vocab_size, seq_len, batch)
    torch.manual_seed(0)
    eager = EncoderTransformer(cfg, vocab_size, seq_len).to(device)
    compiled = copy.deepcopy(eager)
    compiled.compile()
    bf16 = prec == "bf16"
    fns = {"eager": make_step(eager, cfg, vocab_size, seq_len, batch, device, bf16),
           "compiled": make_step(compiled, cfg, vocab_size, seq_len, batch, device, bf16)}
    t0 = time.perf_counter()
    fns["compiled"]()  # traces and compiles
    _sync(device)
    compile_s = time.perf_counter() - t0
    res = interleaved(fns, rounds, iters, warmup=warmup, device=device)
    t_eager, t_comp = statistics.median(res["eager"]), statistics.median(res["compiled"])
    print(f"  {name:<24}{prec:<6} B={batch:<3} eager {t_eager * 1e3:8.1f} ms  compiled {t_comp * 1e3:8.1f} ms  "
          f"compiled/eager speed {t_eager / t_comp:.3f}  (compile {compile_s:.0f} s; {rounds} rounds x {iters})",
          flush=True)
    return flops, t_eager, t_comp, compile_s


# ----------------------------------------------------------------------------- objective
def objective_cost(args, device, peak) -> None:
    """Full CATDM training step (student pass over [z_0; z_t] + no-grad EMA teacher pass for
    L_CM + backward + AdamW + both EMA updates) over a plain CSDM step (the VLB of eq. 3,
    same student pass, no teacher), same backbone and batch, paired rounds; and the CATDM step
    with L0 estimated on a quarter of the rows (``l0_rows=0.25``: the z_0 pass on B/4 rows)."""
    from catdiff.nn.model import Codebook, ema_copy, ema_update
    from catdiff.methods.catdm import CATDMObjective, ShiftedCosineSchedule
    from catdiff.methods.catdm.network import CATDMDenoiser

    cfg = digits_config()
    K, M, B = 17, 64, cfg.batch_size
    x = torch.randint(0, K, (B, M), device=device)
    arms = {"catdm": {}, "catdm l0_rows=0.25": dict(l0_rows=0.25), "csdm": dict(objective="csdm")}
    steps = {}
    for name, changes in arms.items():
        run = cfg.replace(**changes)
        torch.manual_seed(0)
        model = CATDMDenoiser(Codebook(K, run.embed_dim), build_encoder(run, vocab_size=K, seq_len=M)).to(device)
        teacher, slow = ema_copy(model), ema_copy(model)
        opt = adamw(model.parameters(), lr=1e-4)
        loss_fn = CATDMObjective(run, ShiftedCosineSchedule(run.shift, run.logsnr_min, run.logsnr_max))

        def step(model=model, teacher=teacher, slow=slow, opt=opt, loss_fn=loss_fn):
            loss, _ = loss_fn(model, teacher, x)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            ema_update(teacher, model, 0.99)
            ema_update(slow, model, 0.9999)

        steps[name] = step
    rounds = 4 if args.quick else 8
    times = interleaved(steps, rounds=rounds, iters=2, warmup=2, device=device)
    print(f"\n[objective] digits default backbone, batch {B}: "
          + ", ".join(f"{name} step {statistics.median(times[name]) * 1e3:.1f} ms" for name in arms))
    for a, b in (("catdm", "csdm"), ("catdm l0_rows=0.25", "catdm")):
        ratios = [u / v for u, v in zip(times[a], times[b])]
        print(f"  {a} / {b} step time: median {statistics.median(ratios):.3f} over {rounds} paired rounds "
              f"(min {min(ratios):.3f}, max {max(ratios):.3f})")


def digits_config() -> Config:
    """The `digits` task's default transformer sizes (from the vision plugin when installed), else
    catdiff.run.config.make(); without its ``conv_kernel``, which stock has no counterpart for (section 4 times it)."""
    defaults = _digits_defaults()
    keys = ("layers", "heads", "width", "embed_dim", "batch_size", "mlp_ratio")
    return make(**{k: v for k, v in defaults.items() if k in keys})


def conv_cost(args, device) -> None:
    """Training-step time of the digits backbone with ``conv_kernel=3, token_grid=8x8`` (the
    digits default) over the same backbone without it (section 2's "ours"), paired rounds."""
    base = digits_config()
    B = base.batch_size
    steps = {}
    for name, cfg in (("conv", base.replace(conv_kernel=3, token_grid="8x8")), ("plain", base)):
        torch.manual_seed(0)
        steps[name] = make_step(EncoderTransformer(cfg, 17, 64).to(device), cfg, 17, 64, B, device, False)
    rounds = 4 if args.quick else 8
    times = interleaved(steps, rounds=rounds, iters=2, warmup=2, device=device)
    ratios = [c / p for c, p in zip(times["conv"], times["plain"])]
    conv_ms, plain_ms = (statistics.median(times[k]) * 1e3 for k in ("conv", "plain"))
    print(f"\n[local mixing] digits backbone, batch {B}, fp32: with conv_kernel 3 {conv_ms:.1f} ms, without "
          f"{plain_ms:.1f} ms; step time ratio median {statistics.median(ratios):.3f} over {rounds} paired rounds "
          f"(min {min(ratios):.3f}, max {max(ratios):.3f})")


class SyntheticTask:
    """Random tokens of a task's shape (the loop's cost does not depend on the data)."""

    @staticmethod
    def make(name: str, vocab_size: int, seq_len: int, defaults: dict):
        from catdiff.api.task import Task, TokenData

        class Synthetic(Task):
            def load(self, split):
                g = torch.Generator().manual_seed(0 if split == "train" else 1)
                return TokenData(torch.randint(vocab_size, (512, seq_len), generator=g))

        Synthetic.name, Synthetic.vocab_size, Synthetic.seq_len, Synthetic.defaults = name, vocab_size, seq_len, defaults
        return Synthetic()


SYNC_METHODS = ("item", "__float__", "__bool__", "tolist", "__int__")


def count_syncs(fn) -> int:
    """Calls of the Tensor methods that read a device value on the host, while ``fn`` runs."""
    count = [0]
    real = {name: getattr(torch.Tensor, name) for name in SYNC_METHODS}

    def spy(real_fn):
        def wrapped(self, *a, **k):
            count[0] += 1
            return real_fn(self, *a, **k)
        return wrapped

    try:
        for name, fn_ in real.items():
            setattr(torch.Tensor, name, spy(fn_))
        fn()
    finally:
        for name, fn_ in real.items():
            setattr(torch.Tensor, name, fn_)
    return count[0]


def peak_memory_mb(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def loop_cost(args, device) -> None:
    """``Engine.fit`` per step over the bare method step (``method.loss`` on one fixed batch,
    backward, clip, AdamW, the method's and the sampling EMA updates) for the same engine, paired rounds; then the host
    reads (syncs) per step of a fit over 2 x log_every steps, and peak memory."""
    from catdiff.run.engine import Engine
    from catdiff.nn.model import ema_update

    digits = {k: v for k, v in _digits_defaults().items()}
    paper = dict(layers=15, heads=8, width=512, embed_dim=256, mlp_ratio=4.0, dropout=0.0, token_grid="16x16")
    quick, cpu = args.quick, device.type == "cpu"
    text = {k: v for k, v in _task_defaults("text-tdavid").items() if k not in ("log_every", "ckpt_every")}
    cases = [("digits default", 17, 64, {**digits, "batch_size": 64}),
             ("text-tdavid default", 27, 256, text),  # l0_rows=auto, time_warp=train: their statistics stay on the device
             ("paper image backbone", 1024, 256, {**paper, "batch_size": (2 if quick else 4) if cpu else 32})]
    print("\n[training loop: Engine.fit step / bare method step, same engine and batch size; log_every 50]")
    for name, K, M, defaults in cases:
        task = SyntheticTask.make(name, K, M, {**defaults, "steps": 10**6, "log_every": 50, "warmup": 10})
        eng = Engine(task, device=str(device), threads=args.threads)
        x = eng.data("train").tokens[: eng.cfg.batch_size]
        params = list(eng.model.parameters())

        def bare(eng=eng, x=x, params=params):
            with eng.autocast:
                loss, _ = eng.method.loss(eng.model, x, None)
            eng.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, eng.cfg.grad_clip)
            eng.optimizer.step()
            eng.method.after_step(eng.model)
            ema_update(eng.ema_eval, eng.model, 0.9999)

        iters = 2 if (cpu and name.startswith("paper")) else 10
        fit = lambda eng=eng, iters=iters: eng.fit(until=eng.step + iters)  # noqa: E731
        rounds = 3 if quick else 5
        times = interleaved({"fit": fit, "bare": lambda: [bare() for _ in range(iters)]}, rounds=rounds, iters=1,
                            warmup=1, device=device)
        ratios = [f / b for f, b in zip(times["fit"], times["bare"])]
        per = statistics.median(times["bare"]) / iters * 1e3
        log_every = eng.cfg.log_every
        start = eng.step
        syncs = count_syncs(lambda: eng.fit(until=start + 2 * log_every)) if not (cpu and name.startswith("paper")) else None
        sync_text = (f"{syncs / (2 * log_every):.2f} host reads per step ({syncs} in {2 * log_every} steps with 2 log "
                     f"points; tests/test_training_loop.py)" if syncs is not None
                     else "host reads: see the digits row (same loop)")
        print(f"  {name:<22} batch {eng.cfg.batch_size:>3}: bare step {per:.1f} ms; fit / bare median "
              f"{statistics.median(ratios):.3f} (min {min(ratios):.3f}, max {max(ratios):.3f}, {rounds} rounds of "
              f"{iters} steps; goal <= 1.10); {sync_text}; peak memory {peak_memory_mb(device):.0f} MiB "
              f"({'max_memory_allocated' if device.type == 'cuda' else 'process max RSS'})")


def _digits_defaults() -> dict:
    return _task_defaults("digits")


def _task_defaults(name: str) -> dict:
    try:
        from catdiff.api.hooks import registry

        return dict(registry().get("tasks", name).factory().defaults)
    except Exception:  # noqa: BLE001 - the plugins are optional for this benchmark
        return {}


# ----------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer rounds and smaller batches")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    ap.add_argument("--no-bf16", action="store_true", help="skip the bf16 autocast rows")
    ap.add_argument("--compile", action="store_true",
                    help="also time our backbones torch.compile'd against eager (bf16 on CUDA, fp32 on CPU)")
    ap.add_argument("--slow-bf16", action="store_true",
                    help="also time the paper-sized backbone in bf16 on CPUs without native bf16 matmul")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    quick = args.quick
    print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}"
          + (f", cpu capability {torch.backends.cpu.get_cpu_capability()}" if device.type == "cpu" else ""))
    print(FLOP_FORMULA)
    if hasattr(os, "getloadavg") and device.type == "cpu":
        load = os.getloadavg()[0]
        if load > 0.5:
            print(f"WARNING: 1-min load average is {load:.1f} before starting: other processes compete for the "
                  f"{os.cpu_count()} cores, so absolute times (and multi-threaded runs) are unreliable; "
                  "the interleaved ours/stock ratios are the robust figures (try --threads 1)")

    # 1. matmul peak: the fp32 reference is re-measured between sections and its median used
    n32 = 1024 if quick else 2048
    peak_reps = 5 if quick else 7
    peaks = [matmul_flops(device, n32, torch.float32, "mm", peak_reps)]
    nbf = 512 if device.type == "cpu" else n32
    bf_mm = matmul_flops(device, nbf, torch.bfloat16, "mm", 3)
    bf_lin = matmul_flops(device, nbf, torch.bfloat16, "linear", 3)
    peaks.append(matmul_flops(device, n32, torch.float32, "mm", peak_reps))

    # 2. backbones: (name, cfg, K, M, batch, rounds, iters, warmup) per precision
    cpu = device.type == "cpu"
    slow_bf16 = cpu and bf_lin < 0.5 * statistics.median(peaks)  # no native bf16 matmul on this CPU
    base = digits_config()
    paper = base.replace(layers=15, heads=8, width=512, mlp_ratio=4.0, embed_dim=256, dropout=0.0)
    if cpu:  # (cfg, K, M, batch, rounds, iters per round, warmup); sized for ~1 min (--quick) / ~2 min
        digits32 = (base, 17, 64, 32, 6, 1, 2) if quick else (base, 17, 64, 64, 8, 2, 2)
        paper32 = (paper, 1024, 256, 2, 4, 1, 1) if quick else (paper, 1024, 256, 4, 6, 1, 1)
        plan = {
            ("default digits backbone", "fp32"): digits32,
            ("default digits backbone", "bf16"): ((base, 17, 64, 8, 3, 1, 1) if quick else (base, 17, 64, 16, 4, 1, 1))
            if slow_bf16 else digits32,
            ("paper image backbone", "fp32"): paper32,
            ("paper image backbone", "bf16"): (paper, 1024, 256, 1, 2, 1, 1) if slow_bf16 else paper32,
        }
    else:
        plan = {
            ("default digits backbone", p): (base, 17, 64, 256, 5, 10, 3) for p in ("fp32", "bf16")
        } | {("paper image backbone", p): (paper, 1024, 256, 32, 5, 5, 3) for p in ("fp32", "bf16")}
    print("\n[backbone training step: forward + backward + AdamW; medians over interleaved rounds]")
    results = {}
    for (name, prec), (cfg, K, M, B, rounds, iters, warmup) in plan.items():
        if prec == "bf16" and args.no_bf16:
            continue
        if prec == "bf16" and slow_bf16 and name == "paper image backbone" and not args.slow_bf16:
            print(f"  {name:<24}{prec:<6} skipped: bf16 matmul runs at {bf_lin / statistics.median(peaks):.2f} x fp32 "
                  "on this CPU (~1 min per step); --slow-bf16 runs it")
            continue
        results[(name, prec)] = backbone_section(name, cfg, K, M, B, device, prec, rounds, iters, warmup)
        peaks.append(matmul_flops(device, n32, torch.float32, "mm", peak_reps))

    compiled = {}
    if args.compile:
        print("\n[torch.compile: our backbone's training step, eager against compiled]")
        for (name, prec), (cfg, K, M, B, rounds, iters, warmup) in plan.items():
            if prec == ("fp32" if cpu else "bf16") and (name, prec) in results:
                compiled[(name, prec)] = compile_section(name, cfg, K, M, B, device, prec, rounds, iters, warmup)

    peak = statistics.median(peaks)
    print("\n[matmul FLOP/s]")
    print(f"  fp32 torch.mm n={n32}: median {peak / 1e9:.1f} GFLOP/s over {len(peaks)} measurements "
          f"(min {min(peaks) / 1e9:.1f}, max {max(peaks) / 1e9:.1f}) = 1.0, the reference below")
    print(f"  bf16 torch.mm n={nbf} (A @ B): {bf_mm / 1e9:.2f} GFLOP/s = {bf_mm / peak:.3f} x fp32")
    print(f"  bf16 F.linear n={nbf} (A @ B^T): {bf_lin / 1e9:.2f} GFLOP/s = {bf_lin / peak:.3f} x fp32")
    if slow_bf16:
        print("  -> this CPU has no native bf16 matmul: bf16 autocast is much slower than fp32 here")

    print("\n[summary] achieved FLOP/s / fp32 matmul FLOP/s; ours/stock = stock time / our time (>1: ours faster)")
    print(f"  {'backbone':<26}{'prec':<6}{'ours':>8}{'stock':>8}{'ours/stock':>12}")
    for (name, prec), (flops, t_o, t_s, speed) in results.items():
        print(f"  {name:<26}{prec:<6}{flops / t_o / peak:>8.3f}{flops / t_s / peak:>8.3f}{speed:>12.3f}")
    if device.type == "cuda":  # MFU: achieved FLOP/s over the measured bf16 matmul peak
        print(f"\n[MFU on {torch.cuda.get_device_name(device)}] achieved FLOP/s / bf16 torch.mm n={nbf} "
              f"({bf_mm / 1e12:.1f} TFLOP/s measured)")
        for (name, prec), (flops, t_o, t_s, speed) in results.items():
            if prec == "bf16":
                print(f"  {name:<26}ours {flops / t_o / bf_mm:.3f}  stock {flops / t_s / bf_mm:.3f}")
    if compiled:
        print("\n[compile] achieved FLOP/s of our backbone's step, eager and torch.compile'd, over the matmul peak")
        ref, label = (bf_mm, "bf16 mm") if device.type == "cuda" else (peak, "fp32 mm")
        for (name, prec), (flops, t_e, t_c, compile_s) in compiled.items():
            print(f"  {name:<26}{prec} eager {flops / t_e / ref:.3f}  compiled {flops / t_c / ref:.3f} of {label}  "
                  f"(compiled/eager speed {t_e / t_c:.2f}; compile {compile_s:.0f} s)")

    # 3. objective
    objective_cost(args, device, peak)
    conv_cost(args, device)
    loop_cost(args, device)


if __name__ == "__main__":
    main()
