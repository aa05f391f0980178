"""EncoderTransformer: shapes, conditioning, bidirectionality, validation, precision, gradients."""
from __future__ import annotations

import pytest
import torch

from catdiff.nn.backbones import EncoderTransformer, build_encoder
from catdiff.nn.backbones.encoder import _Modulate
from catdiff.run.config import make as Config

K, M, NC = 11, 12, 3


def small_cfg(**kw) -> Config:
    return Config(layers=2, heads=2, width=32, embed_dim=16, **kw)


def inputs(batch=4, length=M, dim=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, length, dim, generator=g), torch.rand(batch, generator=g)


def perturb_adaln(model: torch.nn.Module, std: float = 0.5) -> None:
    """AdaLN starts at zero (plain LayerNorm, conditioning has no effect); give it weights."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("mod.weight", "mod.bias")):
                p.copy_(torch.randn(p.shape, generator=g) * std)


def test_shapes_finite_and_factory():
    torch.manual_seed(0)
    model = build_encoder(small_cfg(), K, M, 0)
    assert isinstance(model, EncoderTransformer)
    z, t = inputs()
    out = model(z, t)
    assert out.shape == (4, M, K) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    # shorter sequences use the first positions; a scalar t is broadcast over the batch
    short = model(z[:, :5], t)
    assert short.shape == (4, 5, K)
    assert model(z, torch.tensor(0.3)).shape == (4, M, K)


def test_adaln_is_zero_at_init():
    model = EncoderTransformer(small_cfg(), K, M, NC)
    for name, p in model.named_parameters():
        if name.endswith(("mod.weight", "mod.bias")):
            assert torch.count_nonzero(p) == 0, name


def test_class_conditioning_and_null_index():
    torch.manual_seed(0)
    model = EncoderTransformer(small_cfg(), K, M, num_classes=NC).eval()
    assert model.null_class == NC
    z, t = inputs()
    a, b = torch.tensor([0, 1, 2, 0]), torch.tensor([1, 2, 0, 3])
    # At init every AdaLN modulation is zero, so c (time and class) cannot affect the output.
    assert torch.allclose(model(z, t, a), model(z, t, b))
    perturb_adaln(model)
    null = torch.full((4,), NC)
    assert torch.equal(model(z, t), model(z, t, null)), "cond=None must mean the null class"
    assert not torch.allclose(model(z, t, a), model(z, t, b), atol=1e-4)
    assert not torch.allclose(model(z, t, a), model(z, t, null), atol=1e-4)
    # time conditioning also matters once AdaLN is non-zero
    assert not torch.allclose(model(z, t, a), model(z, t.flip(0), a), atol=1e-4)


def test_bidirectional():
    torch.manual_seed(0)
    model = EncoderTransformer(small_cfg(), K, M).eval()
    z, t = inputs()
    z2 = z.clone()
    z2[:, -1] += 1.0
    out, out2 = model(z, t), model(z2, t)
    assert not torch.allclose(out[:, 0], out2[:, 0], atol=1e-5), "first position must see the last token"


def test_validation_errors():
    model = EncoderTransformer(small_cfg(), K, M)
    z, t = inputs()
    with pytest.raises(ValueError, match=r"D=16"):
        model(torch.randn(4, M, 15), t)
    with pytest.raises(ValueError, match=r"\[B, M, D\]"):
        model(torch.randn(M, 16), t)
    with pytest.raises(ValueError, match="seq_len"):
        model(torch.randn(4, M + 1, 16), t)
    with pytest.raises(ValueError, match="t must be"):
        model(z, torch.rand(3))
    with pytest.raises(ValueError, match="unconditional"):
        model(z, t, torch.zeros(4, dtype=torch.long))
    cond_model = EncoderTransformer(small_cfg(), K, M, NC)
    with pytest.raises(ValueError, match="cond must be"):
        cond_model(z, t, torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="integer"):
        cond_model(z, t, torch.zeros(4))
    with pytest.raises(ValueError, match=r"\[0, 3\]"):
        cond_model(z, t, torch.tensor([0, 1, 4, 0]))
    with pytest.raises(ValueError, match="divisible"):
        EncoderTransformer(Config(layers=1, heads=3, width=32, embed_dim=16), K, M)


def test_bf16_autocast_returns_float32():
    torch.manual_seed(0)
    model = EncoderTransformer(small_cfg(), K, M, NC)
    z, t = inputs()
    seen = set()
    for m in model.modules():
        if isinstance(m, torch.nn.Linear):
            m.register_forward_hook(lambda m, i, o: seen.add(o.dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(z, t, torch.tensor([0, 1, 2, 3]))
    assert seen == {torch.bfloat16}  # the matmuls ran in bf16 ...
    assert out.dtype == torch.float32 and torch.isfinite(out).all()  # ... the logits come back in fp32
    seen.clear()
    ref = model(z, t, torch.tensor([0, 1, 2, 3]))
    assert seen == {torch.float32}
    assert 0 < (out - ref).abs().max() < 0.1 * ref.abs().max() + 0.1  # rounded, not another function
    out.float().logsumexp(-1).sum().backward()


def test_gradients_reach_every_parameter():
    """With zero-initialised AdaLN, c gets no gradient on step one (the modulation weights
    multiplying it are zero), so the time MLP and class embedding start moving only from the
    second step. After one optimizer step every parameter has a non-zero gradient."""
    torch.manual_seed(0)
    model = EncoderTransformer(small_cfg(dropout=0.1), K, M, NC).train()
    z, t = inputs()
    cond = torch.tensor([0, 1, 2, 3])  # every class row, including the null one
    x = torch.randint(0, K, (4, M), generator=torch.Generator().manual_seed(2))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)

    def loss_step():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(z, t, cond).flatten(0, 1), x.flatten())
        loss.backward()

    loss_step()
    zero_first = {n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()}
    assert zero_first and all(n.startswith(("time_mlp", "class_emb")) for n in zero_first), zero_first
    opt.step()
    loss_step()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert not missing, missing
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_modulate_gradcheck():
    g = torch.Generator().manual_seed(0)
    n = torch.randn(2, 5, 4, dtype=torch.float64, generator=g, requires_grad=True)
    s = torch.randn(2, 1, 4, dtype=torch.float64, generator=g, requires_grad=True)
    b = torch.randn(2, 1, 4, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(_Modulate.apply, (n, s, b))


def test_eval_is_deterministic_with_dropout():
    torch.manual_seed(0)
    model = EncoderTransformer(small_cfg(dropout=0.5), K, M).eval()
    z, t = inputs()
    assert torch.equal(model(z, t), model(z, t))


def test_rotary_scores_depend_on_relative_position_only():
    from catdiff.nn.backbones.encoder import rotary_tables, rotate

    rot = rotary_tables(M, 8)
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 1, 1, 1, 8, generator=g).expand(2, 1, 1, M, 8)  # one vector at every position
    scores = (rotate(q, rot) @ rotate(k, rot).transpose(-1, -2))[0, 0]  # [M, M]
    for offset in range(-M + 1, M):
        diagonal = scores.diagonal(offset)
        assert torch.allclose(diagonal, diagonal[0].expand_as(diagonal), atol=1e-5)
    assert not torch.allclose(scores.diagonal(1)[0], scores.diagonal(2)[0])
    # position 0 is not rotated; norms are kept
    assert torch.allclose(rotate(q, rot)[..., 0, :], q[..., 0, :])
    assert torch.allclose(rotate(q, rot).norm(dim=-1), q.norm(dim=-1), atol=1e-5)


def test_rotary_encoder_has_no_absolute_positions():
    """With rotary positions a sequence of identical inputs gives identical outputs everywhere
    (attention sees only relative offsets); with sinusoidal ones it does not."""
    z = torch.randn(1, 1, 16).expand(2, M, 16)
    t = torch.rand(2)
    for positions, same in (("rotary", True), ("sinusoidal", False)):
        torch.manual_seed(0)
        out = build_encoder(small_cfg(positions=positions), K, M, 0)(z, t)
        assert torch.allclose(out, out[:, :1].expand_as(out), atol=1e-5) == same
    with pytest.raises(ValueError, match=r"config positions='learned': must be sinusoidal \| rotary"):
        small_cfg(positions="learned")  # the backbone's setting, checked when the config resolves
    with pytest.raises(ValueError, match="even head size"):
        build_encoder(Config(layers=1, heads=2, width=30, embed_dim=16, positions="rotary"), K, M, 0)


def test_pos_scale_multiplies_the_sinusoids():
    base = build_encoder(small_cfg(positions="sinusoidal"), K, M, 0).pos
    assert torch.allclose(build_encoder(small_cfg(positions="sinusoidal", pos_scale=3.0), K, M, 0).pos, 3.0 * base)
    assert base.abs().max() == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("grid", ["3x4", ""])
def test_local_mixing_reaches_only_grid_neighbours(grid):
    """conv_kernel=3: a change at one token moves, in the same channel only, the tokens within
    one step of it on the token grid (3x4 here) or along the sequence (no grid)."""
    from catdiff.nn.backbones.encoder import LocalMixing, token_grid

    torch.manual_seed(0)
    shape = token_grid(grid, M)
    mix = LocalMixing(8, 3, shape)
    h = torch.randn(2, M, 8)
    src, channel = 5, 2  # row 1, column 1 of the 3x4 grid
    bumped = h.clone()
    bumped[:, src, channel] += 1.0
    moved = (mix(bumped) - mix(h)).abs() > 1e-6  # [B, M, W]
    assert not moved[..., torch.arange(8) != channel].any()
    if shape:
        rows, cols = torch.arange(M) // 4, torch.arange(M) % 4
        near = ((rows - 1).abs() <= 1) & ((cols - 1).abs() <= 1)
    else:
        near = (torch.arange(M) - src).abs() <= 1
    assert torch.equal(moved[0, :, channel], near)  # depthwise weights are nonzero at init


def test_conv_kernel_in_the_encoder_and_its_errors():
    z, t = inputs()
    model = build_encoder(small_cfg(conv_kernel=3, token_grid="3x4"), K, M, 0)
    loss = model(z, t).square().mean()
    loss.backward()
    assert all(m.conv.weight.grad.abs().sum() > 0 for m in model.local)
    assert build_encoder(small_cfg(), K, M, 0).local is None  # off by default
    with pytest.raises(ValueError, match=r"config conv_kernel=4: must be 0 \(off\) or odd"):
        build_encoder(small_cfg(conv_kernel=4), K, M, 0)
    with pytest.raises(ValueError, match="holds 9 tokens, but the sequence has 12"):
        build_encoder(small_cfg(conv_kernel=3, token_grid="3x3"), K, M, 0)
    with pytest.raises(ValueError, match=r"config token_grid='twelve': must be HxW \(e.g. 8x8\) or empty"):
        small_cfg(conv_kernel=3, token_grid="twelve")
    with pytest.raises(ValueError, match="needs 12 tokens, got 5"):
        model(z[:, :5], t)


def test_the_data_specs_grid_is_the_layout_unless_token_grid_is_set():
    from catdiff.api.task import DataSpec

    z, t = inputs()
    spec = DataSpec(K, M, grid=(3, 4))
    assert DataSpec.from_dict(spec.to_dict()) == spec
    torch.manual_seed(0)
    by_spec = build_encoder(small_cfg(conv_kernel=3), K, M, 0, spec=spec)
    torch.manual_seed(0)
    by_cfg = build_encoder(small_cfg(conv_kernel=3, token_grid="3x4"), K, M, 0)
    torch.manual_seed(0)
    along = build_encoder(small_cfg(conv_kernel=3), K, M, 0)
    assert torch.equal(by_spec(z, t), by_cfg(z, t)) and not torch.equal(by_spec(z, t), along(z, t))
    torch.manual_seed(0)
    wins = build_encoder(small_cfg(conv_kernel=3, token_grid="4x3"), K, M, 0, spec=spec)  # the setting wins
    assert wins.local[0].grid == (4, 3)
    with pytest.raises(ValueError, match=r"the data's token grid \(3, 3\) does not hold its 12 tokens"):
        build_encoder(small_cfg(conv_kernel=3), K, M, 0, spec=DataSpec(K, M, grid=(3, 3)))
