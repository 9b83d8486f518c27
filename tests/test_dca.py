import math
import re

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from nnunet_dca import DCA
from nnunet_dca.dca import (
    NEGLIGIBLE_PROBABILITY,
    ChannelCrossAttention,
    SpatialCrossAttention,
    _pool_to_tokens,
    capped_grid,
    state_dict_from_reference,
    upsample_linear,
)
from nnunet_dca.naive import NaiveDCA
from nnunet_dca.recording import DCARecorder

PAPER_FEATURES = [32, 64, 128, 256]


def skips_for(features, sizes, batch=2, dtype=torch.float32):
    return [torch.randn(batch, c, *s, dtype=dtype) for c, s in zip(features, sizes)]


def ladder(top, n, dims=2):
    """Spatial sizes halving from `top` (a tuple), like a U-Net's skips; odd sizes round up as strided convs do."""
    sizes = [tuple(top)]
    for _ in range(n - 1):
        sizes.append(tuple(math.ceil(s / 2) for s in sizes[-1]))
    return sizes


def dca_matching(naive: NaiveDCA, **kwargs) -> DCA:
    dca = DCA(naive.features, spatial_dims=naive.spatial_dims, **kwargs)
    dca.load_state_dict(state_dict_from_reference(naive.state_dict()))
    return dca


def grow_branches(module: torch.nn.Module) -> torch.nn.Module:
    """The residual merge's 1x1 convs start at zero; give them PyTorch's default init, as the paper's have, so the
    branch they start adds something to check (DCA's output_convs, NaiveDCA's upconvs)."""
    for name, submodule in module.named_modules():
        if isinstance(submodule, (torch.nn.Conv2d, torch.nn.Conv3d)) and ("output_convs" in name or "upconvs" in name):
            submodule.reset_parameters()
    return module


def assert_lists_close(actual, expected, atol=1e-5, rtol=1e-5):
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        assert a.shape == e.shape
        torch.testing.assert_close(a, e, atol=atol, rtol=rtol)


# 1. Faithful to the paper's formulation


def test_paper_configuration_parameter_count_and_layout():
    dca, naive = DCA(PAPER_FEATURES, token_grid=28), NaiveDCA(PAPER_FEATURES, token_grid=28)
    assert sum(p.numel() for p in dca.parameters()) == 110_560
    # same order and shapes as the reference layout, so parameters can also be copied one by one
    assert [p.shape for p in dca.parameters()] == [p.shape for p in naive.parameters()]
    assert set(state_dict_from_reference(naive.state_dict())) == set(dca.state_dict())


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("train", [True, False])
def test_paper_configuration_equals_naive_formulation(fused, train):
    torch.manual_seed(0)
    naive = NaiveDCA(PAPER_FEATURES, token_grid=28)
    dca = dca_matching(naive, token_grid=28, fused_attention=fused)
    naive.train(train), dca.train(train)
    skips = skips_for(PAPER_FEATURES, ladder((224, 224), 4))
    assert_lists_close(dca(skips), naive(skips))


def test_training_updates_running_statistics_as_batch_norm_does():
    torch.manual_seed(0)
    features = [8, 16, 32]
    naive = NaiveDCA(features, token_grid=(6, 5)).train()
    dca = dca_matching(naive, token_grid=(6, 5)).train()
    for _ in range(3):
        skips = skips_for(features, ladder((37, 29), 3))
        assert_lists_close(dca(skips), naive(skips))
    for name, buffer in state_dict_from_reference(naive.state_dict()).items():
        if "running" in name or "num_batches" in name:
            torch.testing.assert_close(dca.state_dict()[name], buffer, atol=1e-5, rtol=1e-5)
    dca.eval(), naive.eval()
    skips = skips_for(features, ladder((37, 29), 3))
    assert_lists_close(dca(skips), naive(skips))


@pytest.mark.parametrize("options", [
    dict(n_blocks=2),
    dict(channel_heads=2, spatial_heads=8),
    dict(channel_attention=False),
    dict(spatial_attention=False),
])
def test_other_settings_equal_naive_formulation(options):
    torch.manual_seed(0)
    features = [8, 16, 32]
    naive = NaiveDCA(features, token_grid=(6, 5), **options)
    dca = dca_matching(naive, token_grid=(6, 5), **options)
    skips = skips_for(features, ladder((37, 29), 3))
    assert_lists_close(dca(skips), naive(skips))


def test_3d_equals_naive_formulation():
    torch.manual_seed(0)
    features = [8, 16, 32]
    naive = NaiveDCA(features, token_grid=(3, 4, 5), spatial_dims=3)
    dca = dca_matching(naive, token_grid=(3, 4, 5))
    skips = skips_for(features, ladder((12, 15, 19), 3))
    assert_lists_close(dca(skips), naive(skips))


# 1b. The residual merge: skip + branch, the branch starting at zero


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("dims", [2, 3])
def test_residual_merge_starts_as_the_identity(dims, train):
    torch.manual_seed(0)
    features = [8, 16, 32]
    dca = DCA(features, merge="residual", spatial_dims=dims).train(train)
    skips = skips_for(features, ladder((13,) * dims, 3))
    assert all(torch.equal(out, x) for out, x in zip(dca(skips), skips))


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("dims", [2, 3])
def test_residual_merge_equals_naive_formulation(dims, train, fused):
    torch.manual_seed(0)
    features = [8, 16, 32]
    grid = (6, 5) if dims == 2 else (3, 4, 5)
    naive = grow_branches(NaiveDCA(features, token_grid=grid, spatial_dims=dims, merge="residual")).train(train)
    dca = dca_matching(naive, token_grid=grid, merge="residual", fused_attention=fused).train(train)
    skips = skips_for(features, ladder((37, 29) if dims == 2 else (12, 15, 19), 3))
    outs = dca(skips)
    assert_lists_close(outs, naive(skips))
    assert not any(torch.allclose(out, x) for out, x in zip(outs, skips))  # the branch is not zero here


def test_residual_merge_has_the_papers_parameters_but_the_batch_norms():
    paper, residual = DCA(PAPER_FEATURES, token_grid=28), DCA(PAPER_FEATURES, token_grid=28, merge="residual")
    paper_names = [name for name, _ in paper.named_parameters()]
    assert [name for name, _ in residual.named_parameters()] == [n for n in paper_names if "output_norms" not in n]
    assert sum(p.numel() for p in residual.parameters()) == 110_560 - 2 * sum(PAPER_FEATURES)
    assert list(residual.buffers()) == []  # no running statistics: nothing to synchronize across processes
    assert all(not conv.weight.any() and not conv.bias.any() for conv in residual.output_convs)


def test_residual_merge_at_initialization_trains_the_output_convs_first():
    features = [4, 8, 16]
    dca = DCA(features, merge="residual").train()
    skips = skips_for(features, ladder((12, 12), 3))
    sum(o.square().mean() for o in dca(skips)).backward()
    for name, p in dca.named_parameters():
        # the zero convs pass no gradient back into DCA yet; they get one themselves, and grow from there
        assert p.grad is not None, name
        assert (p.grad.abs().max() > 1e-6) == name.startswith("output_convs"), name


# 1c. Score normalizations: each option of channel_scores and spatial_scores

SCORE_OPTIONS = [("cosine", "paper"), ("standardized", "paper"), ("qk_norm", "paper"), ("paper", "qk_norm"),
                 ("qk_norm", "qk_norm"), ("cosine", "qk_norm"), ("standardized", "qk_norm")]


def randomize_temperatures(module: torch.nn.Module) -> torch.nn.Module:
    """Temperatures start at 1; other values check that each multiplies where it should."""
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            if name.endswith("temperature"):
                parameter.uniform_(0.5, 2.0)
    return module


def test_the_defaults_are_the_papers_scores_without_temperatures():
    dca = DCA(PAPER_FEATURES)
    block = dca.blocks[0]
    assert all(a.scores == "paper" for a in [*block.channel_attentions, *block.spatial_attentions])
    assert not any("temperature" in name for name, _ in dca.named_parameters())


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("channel_scores, spatial_scores", SCORE_OPTIONS)
def test_score_normalizations_equal_naive_formulation_with_gradients(channel_scores, spatial_scores, dims, fused):
    torch.manual_seed(0)
    features, grid = [8, 16, 32], (5, 4) if dims == 2 else (3, 4, 3)
    options = dict(channel_heads=2, merge="residual", channel_scores=channel_scores, spatial_scores=spatial_scores)
    naive = randomize_temperatures(grow_branches(NaiveDCA(features, token_grid=grid, spatial_dims=dims, **options)))
    dca = dca_matching(naive, token_grid=grid, fused_attention=fused, **options)
    skips = [x.requires_grad_() for x in skips_for(features, ladder((20, 16, 12)[:dims], 3, dims))]
    weights = [torch.randn_like(x) for x in skips]

    def forward_and_gradients(module):
        outputs = module.train()(skips)
        loss = sum((o * w).sum() for o, w in zip(outputs, weights))
        return outputs + list(torch.autograd.grad(loss, [*skips, *module.parameters()]))

    assert_lists_close(forward_and_gradients(dca), forward_and_gradients(naive), atol=1e-4, rtol=1e-4)


def test_cosine_scores_at_temperature_one_are_near_uniform_and_qk_norm_scales_them():
    # cosines lie in [-1, 1]: at temperature 1 no probability exceeds e^2 / (L - 1 + e^2) of L keys, whatever N
    torch.manual_seed(0)
    features = [8, 16, 32]
    tokens = [torch.randn(2, 400, c) * 10 for c in features]
    context = torch.cat(tokens, dim=-1)
    cosine = ChannelCrossAttention(8, 56, 1, 2, scores="cosine")
    qk_norm = ChannelCrossAttention(8, 56, 1, 2, scores="qk_norm")
    qk_norm.load_state_dict(cosine.state_dict())
    bound = math.exp(2) / (55 + math.exp(2))
    assert cosine.attention_weights(tokens[0], context).max() <= bound
    # the same cosines times log2(56^2 - 56): log-probabilities scale with it, up to each row's constant
    log_cosine = cosine.attention_weights(tokens[0], context).log()
    log_qk = qk_norm.attention_weights(tokens[0], context).log()
    centred = [x - x.mean(dim=-1, keepdim=True) for x in (log_cosine, log_qk)]
    torch.testing.assert_close(centred[1], centred[0] * math.log2(56 * 55), atol=1e-3, rtol=1e-4)


def test_standardized_scores_have_zero_mean_and_unit_variance_per_head():
    torch.manual_seed(0)
    cca = ChannelCrossAttention(16, 48, 2, 2, scores="standardized").double()
    tokens, context = torch.randn(3, 50, 16, dtype=torch.float64) * 7, torch.randn(3, 50, 48, dtype=torch.float64) * 7
    # by hand: the paper's scores per head from explicit Q and K, standardized over each head's whole matrix
    q = cca.query(tokens).view(3, 50, 2, 8).permute(0, 2, 3, 1)  # (B, h, C_i/h, N)
    k = cca.key(context).view(3, 50, 2, 24).permute(0, 2, 3, 1)  # (B, h, C_sum/h, N)
    scores = q @ k.transpose(-2, -1) / math.sqrt(48)
    mean = scores.mean(dim=(-2, -1), keepdim=True)
    variance = (scores - mean).square().mean(dim=(-2, -1), keepdim=True)
    expected = torch.softmax((scores - mean) / torch.sqrt(variance + 1e-5), dim=-1)
    torch.testing.assert_close(cca.attention_weights(tokens, context), expected)


@pytest.mark.parametrize("channel_scores, spatial_scores", [("cosine", "qk_norm"), ("qk_norm", "qk_norm"),
                                                            ("standardized", "paper")])
def test_score_normalizations_start_as_the_identity_with_the_residual_merge(channel_scores, spatial_scores):
    torch.manual_seed(0)
    features = [8, 16, 32]
    dca = DCA(features, merge="residual", channel_scores=channel_scores, spatial_scores=spatial_scores)
    skips = skips_for(features, ladder((13, 11), 3))
    for train in (True, False):
        assert all(torch.equal(out, x) for out, x in zip(dca.train(train)(skips), skips))


@pytest.mark.parametrize("channel_scores, spatial_scores", [("cosine", "qk_norm"), ("qk_norm", "qk_norm"),
                                                            ("standardized", "qk_norm")])
def test_score_normalizations_under_float16_autocast_have_finite_gradients(channel_scores, spatial_scores):
    dca, skips = overflowing_float16_case((16, 16), merge="residual", channel_scores=channel_scores,
                                          spatial_scores=spatial_scores)
    grow_branches(dca).train()
    with torch.autocast("cpu", dtype=torch.float16):
        outputs = dca(skips)
        loss = sum(o.float().square().mean() for o in outputs)
    loss.backward()
    assert torch.isfinite(loss)
    temperatures = [p for name, p in dca.named_parameters() if name.endswith("temperature")]
    assert temperatures and all(p.dtype == torch.float32 and torch.isfinite(p.grad).all() for p in temperatures)
    assert all(torch.isfinite(p.grad).all() for p in dca.parameters())
    with torch.no_grad():
        expected = dca(skips)
    assert all(torch.isfinite(e).all() for e in expected)


# 2. Shape-general


@pytest.mark.parametrize("top", [(64, 64), (48, 80), (33, 17), (50, 50), (7, 9)])
def test_2d_any_size_keeps_shapes(top):
    features = [4, 8, 16, 32]
    skips = skips_for(features, ladder(top, 4))
    outs = DCA(features)(skips)
    assert [o.shape for o in outs] == [s.shape for s in skips]


@pytest.mark.parametrize("top", [(16, 16, 16), (9, 20, 13), (5, 6, 7)])
def test_3d_any_size_keeps_shapes(top):
    features = [4, 8, 16, 32]
    skips = skips_for(features, ladder(top, 4))
    outs = DCA(features, spatial_dims=3)(skips)
    assert [o.shape for o in outs] == [s.shape for s in skips]


def test_one_module_serves_any_input_size_with_the_paper_rule():
    torch.manual_seed(0)
    features = [4, 8, 16]
    naive_small = NaiveDCA(features, token_grid=(10, 7))
    dca = dca_matching(naive_small)  # token_grid None: the deepest skip's size
    small = skips_for(features, ladder((37, 26), 3))
    assert dca.grid_for(small) == (10, 7)
    assert_lists_close(dca(small), naive_small(small))

    large = skips_for(features, ladder((80, 64), 3))
    naive_large = NaiveDCA(features, token_grid=(20, 16))
    naive_large.load_state_dict(naive_small.state_dict())
    assert dca.grid_for(large) == (20, 16)
    assert_lists_close(dca(large), naive_large(large))


def test_paper_rule_caps_tokens_keeping_aspect_ratio():
    assert capped_grid((28, 28), 1024) == (28, 28)
    assert capped_grid((64, 64), 1024) == (32, 32)
    assert capped_grid((64, 64), None) == (64, 64)
    assert capped_grid((40, 80), 800) == (20, 40)
    assert capped_grid((20, 20, 20), 1000) == (10, 10, 10)
    assert capped_grid((16, 16, 16), 1024) == (10, 10, 10)
    grid = capped_grid((37, 91), 1024)
    assert math.prod(grid) <= 1024 and abs(grid[1] / grid[0] - 91 / 37) < 0.1
    assert capped_grid((1, 5000), 100) == (1, 100)


def test_full_grid_is_the_deepest_skip_size():
    features = [4, 8, 16, 32]
    skips = skips_for(features, ladder((512, 512), 4), batch=1)
    assert DCA(features).grid_for(skips) == (32, 32)
    assert DCA(features, max_tokens=None).grid_for(skips) == (64, 64)
    assert DCA(features, token_grid=7).grid_for(skips) == (7, 7)


# 3. Fused attention


def test_fused_path_equals_math_path():
    torch.manual_seed(0)
    features = [8, 16, 32, 64]
    dca = DCA(features).eval()
    skips = skips_for(features, ladder((96, 80), 4))
    fused = dca(skips)
    dca.fused_attention = False
    assert_lists_close(fused, dca(skips))


def test_fused_path_reaches_the_flash_kernel_on_cpu():
    features = [8, 16, 32, 64]
    dca = DCA(features)
    skips = skips_for(features, ladder((64, 64), 4))
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        dca(skips)
    kernels = {event.key for event in profile.key_averages()}
    assert "aten::_scaled_dot_product_flash_attention_for_cpu" in kernels
    assert "aten::_scaled_dot_product_attention_math" not in kernels
    # and with only the flash kernel allowed, it runs (the unpadded call would fail: "No available kernel")
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        dca(skips)


@pytest.mark.parametrize("dims, merge, autocast", [
    (2, "paper", None), (2, "residual", None), (3, "paper", None), (3, "residual", None),
    # under autocast against float32: the paper's BatchNorm over a batch this small turns bfloat16's rounding into
    # gradient errors of the order of the gradients, in every formulation alike, naive included
    (2, "residual", torch.bfloat16), (3, "residual", torch.bfloat16),
])
def test_training_forward_and_gradients_equal_naive_formulation(dims, merge, autocast):
    # the fused paths (channel attention's written-out backward, the flash kernel, the out-of-place merge in
    # training) against the naive formulation in float32, on outputs and on the gradients of skips and parameters
    torch.manual_seed(0)
    features, grid = [8, 16, 32], (5, 4) if dims == 2 else (3, 4, 3)
    naive = grow_branches(NaiveDCA(features, token_grid=grid, spatial_dims=dims, channel_heads=2, merge=merge))
    dca = dca_matching(naive, token_grid=grid, channel_heads=2, merge=merge)
    skips = [x.requires_grad_() for x in skips_for(features, ladder((20, 16, 12)[:dims], 3, dims))]
    weights = [torch.randn_like(x) for x in skips]

    def forward_and_gradients(module, autocast):
        with torch.autocast("cpu", dtype=autocast or torch.bfloat16, enabled=autocast is not None):
            outputs = [o.float() for o in module.train()(skips)]
        loss = sum((o * w).sum() for o, w in zip(outputs, weights))
        return outputs + list(torch.autograd.grad(loss, [*skips, *module.parameters()]))

    actual, expected = forward_and_gradients(dca, autocast), forward_and_gradients(naive, None)
    if autocast is None:
        assert_lists_close(actual, expected, atol=1e-4, rtol=1e-4)
    else:  # bfloat16 keeps two to three digits. Outputs and the skips' gradients, what the U-Net receives: some
        # parameters' gradients are near zero (softmax cancels the spatial key bias), where any rounding is large
        for a, e in zip(actual[:2 * len(skips)], expected):
            assert (a - e).abs().max() <= 0.01 * e.abs().max()


# hand check on tiny cases, by explicit loops


def project(projection, tokens):
    """A depthwise projection by hand: tokens (lists of N rows of C) scaled and shifted per channel."""
    w, b = projection.weight.view(-1).tolist(), projection.bias.tolist()
    return [[row[c] * w[c] + b[c] for c in range(len(w))] for row in tokens]


@pytest.mark.parametrize("fused", [True, False])
def test_channel_attention_by_hand(fused):
    torch.manual_seed(0)
    n_tokens, channels, context_channels, heads = 3, 2, 6, 2
    cca = ChannelCrossAttention(channels, context_channels, heads, spatial_dims=2).double()
    tokens = torch.randn(1, n_tokens, channels, dtype=torch.float64)
    context = torch.randn(1, n_tokens, context_channels, dtype=torch.float64)

    q, k, v = project(cca.query, tokens[0].tolist()), project(cca.key, context[0].tolist()), project(
        cca.value, context[0].tolist())
    dq, dk = channels // heads, context_channels // heads
    out = [[0.0] * channels for _ in range(n_tokens)]
    for h in range(heads):
        for c in range(dq):
            scores = [sum(q[n][h * dq + c] * k[n][h * dk + j] for n in range(n_tokens)) / math.sqrt(context_channels)
                      for j in range(dk)]
            weights = [math.exp(s) / sum(math.exp(t) for t in scores) for s in scores]
            for n in range(n_tokens):
                out[n][h * dq + c] = sum(weights[j] * v[n][h * dk + j] for j in range(dk))
    expected = torch.tensor([project(cca.out, out)], dtype=torch.float64)
    torch.testing.assert_close(cca(tokens, context, fused=fused), expected)


@pytest.mark.parametrize("fused", [True, False])
def test_spatial_attention_by_hand(fused):
    torch.manual_seed(0)
    n_tokens, channels, context_channels, heads = 4, 2, 6, 2
    sca = SpatialCrossAttention(channels, context_channels, heads, spatial_dims=2).double()
    tokens = torch.randn(1, n_tokens, channels, dtype=torch.float64)
    context = torch.randn(1, n_tokens, context_channels, dtype=torch.float64)

    q, k, v = project(sca.query, context[0].tolist()), project(sca.key, context[0].tolist()), project(
        sca.value, tokens[0].tolist())
    d, dv = context_channels // heads, channels // heads
    out = [[0.0] * channels for _ in range(n_tokens)]
    for h in range(heads):
        for n in range(n_tokens):
            scores = [sum(q[n][h * d + c] * k[m][h * d + c] for c in range(d)) / math.sqrt(d) for m in range(n_tokens)]
            weights = [math.exp(s) / sum(math.exp(t) for t in scores) for s in scores]
            for c in range(dv):
                out[n][h * dv + c] = sum(weights[m] * v[m][h * dv + c] for m in range(n_tokens))
    expected = torch.tensor([project(sca.out, out)], dtype=torch.float64)
    torch.testing.assert_close(sca(tokens, context, fused=fused), expected)


# 4. Training-ready


@pytest.mark.parametrize("options", [dict(), dict(channel_attention=False), dict(spatial_attention=False),
                                     dict(n_blocks=2, spatial_dims=3), dict(merge="residual"),
                                     dict(merge="residual", n_blocks=2, spatial_dims=3)])
def test_gradients_reach_every_parameter(options):
    features = [4, 8, 16]
    # eval mode: in training, BatchNorm's batch statistics cancel every per-channel constant before it, so the
    # biases feeding it get zero gradients (they still take part, as DDP requires; see test below)
    dca = grow_branches(DCA(features, **options)).eval()
    dims = options.get("spatial_dims", 2)
    skips = skips_for(features, ladder((12,) * dims, 3))
    for x in skips:
        x.requires_grad_(True)
    sum(o.square().mean() for o in dca(skips)).backward()
    for name, p in dca.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        if re.fullmatch(r"blocks\.\d+\.spatial_attentions\.\d+\.key\.bias", name):
            # a key bias adds q_n . b_k to every score of row n: softmax over keys cancels it, as in any attention
            assert p.grad.abs().max() < 1e-5, name
        else:
            assert p.grad.abs().max() > 1e-6, name
    assert all(x.grad is not None and torch.isfinite(x.grad).all() for x in skips)


@pytest.mark.parametrize("merge", ["paper", "residual"])
def test_every_parameter_takes_part_in_training_mode(merge):
    features = [4, 8, 16]
    dca = DCA(features, merge=merge).train()
    sum(o.square().mean() for o in dca(skips_for(features, ladder((12, 12), 3)))).backward()
    assert [name for name, p in dca.named_parameters() if p.grad is None] == []


def test_bfloat16_autocast_stays_finite():
    torch.manual_seed(0)
    features = [16, 32, 64, 128]
    dca = DCA(features)
    skips = skips_for(features, ladder((128, 96), 4))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outs = dca(skips)
        loss = sum(o.float().square().mean() for o in outs)
    loss.backward()
    assert all(torch.isfinite(o).all() for o in outs)
    assert all(torch.isfinite(p.grad).all() for p in dca.parameters())
    with torch.no_grad():
        reference = dca(skips)
    for o, r in zip(outs, reference):
        assert (o.float() - r).abs().mean() < 0.05


def overflowing_float16_case(size: tuple[int, ...], gain: float = 4.0, dominance: float = 30.0,
                             **dca_kwargs) -> tuple[DCA, list[torch.Tensor]]:
    """Skips of one size with one dominant channel, query/key projections and LayerNorm gains grown to `gain`: float32
    is finite, but at 4 the channel scores (a sum over all tokens) pass float16's 65,504, and at 5 the spatial
    scores of the dominant channels do too."""
    torch.manual_seed(0)
    dca = DCA(PAPER_FEATURES, max_tokens=None, spatial_dims=len(size), **dca_kwargs)
    with torch.no_grad():
        for name, parameter in dca.named_parameters():
            if re.search(r"(query|key)\.weight$|_norms\.\d+\.weight$", name) and "output" not in name:
                parameter.fill_(gain)
    skips = skips_for(PAPER_FEATURES, [size] * 4, batch=1)
    for x in skips:
        x[:, 0] += dominance
    return dca, skips


def assert_float16_finite_and_close(dca: DCA, skips: list[torch.Tensor], relative_error: float) -> None:
    """Inference under float16 autocast against float32: finite where float32 is, and within `relative_error` of the
    largest float32 value."""
    dca.eval()
    with torch.no_grad():
        expected = dca(skips)
        with torch.autocast("cpu", dtype=torch.float16):
            outs = dca(skips)
    for o, e in zip(outs, expected):
        assert torch.isfinite(e).all()
        assert torch.isfinite(o).all()
        assert (o.float() - e).abs().max() < relative_error * e.abs().max()


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("size", [(64, 64), (16, 16, 16)])  # 4096 tokens
def test_float16_autocast_stays_finite_and_close_where_float32_is_finite(size, fused):
    dca, skips = overflowing_float16_case(size, fused_attention=fused)
    assert_float16_finite_and_close(dca, skips, 4e-3)  # float16 keeps about three decimal digits


def test_float16_autocast_spatial_math_path_forms_its_scores_in_float32():
    # the fused kernels accumulate scores in float32 themselves; the explicit path has to
    dca, skips = overflowing_float16_case((64, 64), gain=5.0, dominance=100.0, channel_attention=False,
                                          fused_attention=False)
    assert_float16_finite_and_close(dca, skips, 1e-3)


@pytest.mark.parametrize("merge", ["paper", "residual"])
@pytest.mark.parametrize("size", [(16, 16), (8, 8, 8)])
def test_float16_autocast_training_step_has_finite_gradients(size, merge):
    dca, skips = overflowing_float16_case(size, merge=merge)
    grow_branches(dca).train()
    with torch.autocast("cpu", dtype=torch.float16):
        loss = sum(o.float().square().mean() for o in dca(skips))
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in dca.parameters())


@pytest.mark.parametrize("size_in, size_out", [
    ((14, 10), (56, 40)), ((7, 5), (37, 29)), ((1, 3), (4, 9)), ((4, 4), (1, 7)), ((6, 9), (6, 4)),
    ((3, 4, 5), (12, 7, 5)), ((1, 2, 2), (5, 9, 3)),
])
def test_upsample_linear_equals_interpolate_with_align_corners(size_in, size_out):
    torch.manual_seed(0)
    x = torch.randn(2, 3, *size_in, dtype=torch.float64, requires_grad=True)
    mode = "bilinear" if len(size_in) == 2 else "trilinear"
    expected = F.interpolate(x, size=size_out, mode=mode, align_corners=True)
    actual = upsample_linear(x, size_out)
    assert actual.shape == expected.shape and actual.is_contiguous()
    torch.testing.assert_close(actual, expected)
    grad = torch.randn_like(expected)
    torch.testing.assert_close(torch.autograd.grad(actual, x, grad)[0], torch.autograd.grad(expected, x, grad)[0])


def test_negligible_channel_probabilities_are_zero_and_outputs_equal_the_naive_formulation():
    # over hundreds of tokens channel scores spread far enough for the softmax to reach subnormal floats, which slow
    # CPU matrix products about a hundredfold; DCA sets probabilities below float32's epsilon squared to zero
    torch.manual_seed(0)
    features, grid = [8, 16, 32], (28, 28)
    naive = grow_branches(NaiveDCA(features, token_grid=grid, merge="residual"))
    with torch.no_grad():
        for name, parameter in naive.named_parameters():
            if re.search(r"c_attention\.\d+\.(q_map|k_map)\.proj\.depthwise\.weight$", name):
                parameter.mul_(8)
    dca = dca_matching(naive, token_grid=grid, merge="residual")
    skips = skips_for(features, ladder((28, 28), 3))
    expected = naive(skips)
    naive_channel = naive.attention_weights["channel"][0]
    assert any(((p > 0) & (p < NEGLIGIBLE_PROBABILITY)).any() for p in naive_channel)  # the case the test is for
    with DCARecorder(dca) as recorder:
        actual = dca(skips)
    for stage in recorder.stages:
        p = stage.channel_attention[0]
        assert not ((p > 0) & (p < NEGLIGIBLE_PROBABILITY)).any()
    assert_lists_close(actual, expected)


@pytest.mark.parametrize("size, grid", [((14, 10), (14, 10)), ((56, 40), (14, 10)), ((57, 41), (14, 10)),
                                        ((12, 8, 6), (12, 8, 6)), ((12, 8, 6), (3, 4, 2)), ((13, 8, 6), (3, 4, 2))])
def test_pooling_to_tokens_equals_adaptive_average_pooling(size, grid):
    # a skip of the grid's size is passed through: exact
    x = torch.randn(2, 3, *size, dtype=torch.float64, requires_grad=True)
    pool = F.adaptive_avg_pool2d if len(size) == 2 else F.adaptive_avg_pool3d
    expected = pool(x, grid).flatten(2).transpose(1, 2)
    actual = _pool_to_tokens(x, grid)
    torch.testing.assert_close(actual, expected)
    grad = torch.randn_like(expected)
    torch.testing.assert_close(torch.autograd.grad(actual, x, grad)[0], torch.autograd.grad(expected, x, grad)[0])


def test_training_with_one_value_per_channel_is_refused_by_name():
    dca = DCA([4, 8], token_grid=1).train()
    with pytest.raises(ValueError, match="more than one value per channel"):
        dca([torch.randn(1, 4, 2, 2), torch.randn(1, 8, 1, 1)])


@pytest.mark.parametrize("merge, scores", [("paper", "paper"), ("residual", "paper"), ("residual", "qk_norm")])
def test_torch_compile_without_graph_breaks(merge, scores):
    torch.manual_seed(0)
    features = [4, 8, 16]
    dca = grow_branches(DCA(features, merge=merge, channel_scores=scores, spatial_scores=scores))
    skips = skips_for(features, ladder((20, 16), 3))
    compiled = torch.compile(dca, fullgraph=True)  # fullgraph: a graph break is an error
    outs = compiled(skips)
    sum(o.sum() for o in outs).backward()
    expected = dca(skips)
    assert_lists_close(outs, expected, atol=1e-4, rtol=1e-4)
    assert all(p.grad is not None for p in dca.parameters())


@pytest.mark.parametrize("fused", [True, False])
def test_gradcheck_float64(fused):
    torch.manual_seed(0)
    features = [2, 4]
    dca = DCA(features, token_grid=(2, 3), spatial_heads=2, fused_attention=fused).double()
    skips = skips_for(features, [(4, 5), (2, 3)], batch=2, dtype=torch.float64)
    params = tuple(dca.parameters())

    def outputs(*tensors):
        return tuple(torch.func.functional_call(dca, dict(zip([n for n, _ in dca.named_parameters()], tensors[2:])),
                                                (list(tensors[:2]),)))

    inputs = tuple(x.requires_grad_(True) for x in skips) + tuple(p.detach().requires_grad_(True) for p in params)
    assert torch.autograd.gradcheck(outputs, inputs)


# 5. Clear errors


@pytest.mark.parametrize("kwargs, message", [
    (dict(features=[8, 16], spatial_dims=1), "spatial_dims must be 2 or 3, got 1"),
    (dict(features=[]), "features must be a non-empty list"),
    (dict(features=[8, 16], spatial_heads=3), "spatial_heads=3 at stage 0 must divide both the stage's channels (8)"),
    (dict(features=[8, 12], channel_heads=[1, 8]),
     "channel_heads=8 at stage 1 must divide both the stage's channels (12)"),
    (dict(features=[8, 16], channel_heads=[1, 1, 1]), "channel_heads must be a positive int or one per skip (2)"),
    (dict(features=[8, 16], token_grid=(4, 4, 4)), "token_grid must be None, a positive int or 2 positive ints"),
    (dict(features=[8, 16], max_tokens=0), "max_tokens must be a positive int or None"),
    (dict(features=[8, 16], n_blocks=0), "n_blocks must be a positive int, got 0"),
    (dict(features=[8, 16], merge="sum"), "merge must be one of ['paper', 'residual'], got 'sum'"),
])
def test_bad_settings_are_named(kwargs, message):
    with pytest.raises(ValueError) as error:
        DCA(**kwargs)
    assert message in str(error.value)


def test_the_naive_formulation_names_a_bad_merge():
    with pytest.raises(ValueError, match=r"merge must be one of \['paper', 'residual'\], got 'Paper'"):
        NaiveDCA([8, 16], token_grid=4, merge="Paper")


@pytest.mark.parametrize("saved, built", [("paper", "residual"), ("residual", "paper")])
def test_weights_of_the_other_merge_are_refused_naming_both(saved, built):
    weights = DCA([8, 16], merge=saved).state_dict()
    with pytest.raises(RuntimeError, match=f"trained with merge '{saved}' and the network was built with '{built}'"):
        DCA([8, 16], merge=built).load_state_dict(weights)
    # inside a network, under the network's prefix, and where the file holds no DCA weights at all (a stock model)
    network = torch.nn.Module()
    network.dca = DCA([8, 16], merge=built)
    with pytest.raises(RuntimeError, match=f"trained with merge '{saved}'"):
        network.load_state_dict({f"dca.{key}": value for key, value in weights.items()})
    network.load_state_dict({}, strict=False)


@pytest.mark.parametrize("skips, message", [
    ([torch.randn(2, 8, 16, 16)], "DCA was built for 2 skips (features [8, 16]), got 1 inputs"),
    ([torch.randn(2, 8, 16, 16), torch.randn(2, 12, 8, 8)],
     "skip 1 has 12 channels, DCA was built with features[1]=16"),
    ([torch.randn(2, 8, 16, 16), torch.randn(3, 16, 8, 8)],
     "skips have different batch sizes: skip 0 has 2, skip 1 has 3"),
    ([torch.randn(2, 8, 16, 16, 4), torch.randn(2, 16, 8, 8, 2)], "skip 0 has shape (2, 8, 16, 16, 4)"),
])
def test_bad_inputs_are_named(skips, message):
    with pytest.raises(ValueError) as error:
        DCA([8, 16])(skips)
    assert message in str(error.value)
