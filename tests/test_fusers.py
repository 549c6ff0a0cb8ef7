"""Fusion modules on their own, against hand-computed values."""
import pytest
import torch
from einops import rearrange

from fusion.fusers import FUSIONS, AverageFusion, Conv1x1Fusion, Conv3dFusion, register_fusion

BN_SCALE = 1 / (1 + 1e-5) ** 0.5  # a fresh BatchNorm in eval mode divides by sqrt(1 + eps)


def test_registry_has_every_design_fusion_and_rejects_duplicates():
    assert set(FUSIONS) == {"average", "sum", "max", "concat", "conv1x1", "conv3d", "bilinear"}
    with pytest.raises(ValueError, match="'sum' is already registered"):
        register_fusion("sum")(type("Other", (), {}))


def test_sum_max_concat_values():
    rgb = torch.rand(2, 3, 4, 5, 5)
    flow = torch.rand(2, 3, 4, 5, 5)
    torch.testing.assert_close(FUSIONS["sum"](4, 4)(rgb, flow), rgb + flow)
    torch.testing.assert_close(FUSIONS["max"](4, 4)(rgb, flow), torch.maximum(rgb, flow))
    concat = FUSIONS["concat"](4, 4)
    assert concat.out_channels == 8
    torch.testing.assert_close(concat(rgb, flow), torch.cat([rgb, flow], dim=2))


def test_sum_projects_flow_when_channels_differ():
    fuse = FUSIONS["sum"](6, 2)
    assert fuse.project.weight.shape == (6, 2, 1, 1)
    rgb, flow = torch.rand(1, 2, 6, 3, 3), torch.rand(1, 2, 2, 3, 3)
    # the projection starts as the identity, cycling through the fewer flow channels
    torch.testing.assert_close(fuse(rgb, flow), rgb + flow[:, :, [0, 1, 0, 1, 0, 1]])
    with torch.no_grad():
        fuse.project.weight.normal_()
        fuse.project.bias.normal_()
    w, bias = fuse.project.weight.detach()[:, :, 0, 0], fuse.project.bias.detach()
    expected = rgb + torch.einsum("oc,btchw->btohw", w, flow) + bias.view(6, 1, 1)
    torch.testing.assert_close(fuse(rgb, flow), expected)


@pytest.mark.parametrize("weights", [(1.0, 1.0), (0.5, 0.5), (1.0, 2.0)])
def test_conv1x1_identity_init_starts_as_weighted_sum(weights):
    fuse = Conv1x1Fusion(8, 8, 8, init="identity", weights=weights).eval()
    rgb, flow = torch.rand(2, 3, 8, 4, 4), torch.rand(2, 3, 8, 4, 4)  # post-ReLU maps: >= 0
    expected = (weights[0] * rgb + weights[1] * flow) * BN_SCALE
    torch.testing.assert_close(fuse(rgb, flow), expected)


def test_conv1x1_identity_init_with_unequal_channels():
    # Seed 001's case in small: more RGB than flow channels, fused back to the RGB channels.
    fuse = Conv1x1Fusion(6, 3, 6).eval()
    rgb, flow = torch.rand(1, 1, 6, 2, 2), torch.rand(1, 1, 3, 2, 2)
    expected = rgb + flow[:, :, [0, 1, 2, 0, 1, 2]]  # [I I], the flow channels cycled
    torch.testing.assert_close(fuse(rgb, flow), expected * BN_SCALE)
    assert fuse.conv.bias is None


def test_conv_fusion_without_batchnorm_is_feichtenhofers_conv_with_bias_and_relu():
    """batchnorm=False: y = relu(f * [rgb; flow] + b) with f = [I I], b = 0, as the released
    twostreamfusion code inserts it (insert_conv_layers.m: addReLU = true), so the layers
    after an inner tap never see negative input."""
    fuse = Conv1x1Fusion(4, 4, batchnorm=False).train()
    assert fuse.conv.bias is not None and not fuse.conv.bias.any()
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fuse.modules())
    rgb, flow = torch.randn(2, 3, 4, 3, 3), torch.randn(2, 3, 4, 3, 3)
    out = fuse(rgb, flow)
    torch.testing.assert_close(out, (rgb + flow).clamp(min=0))
    assert (rgb + flow).min() < 0 and out.min() == 0  # the ReLU did cut something
    fuse3d = Conv3dFusion(4, 4, batchnorm=False).train()
    assert isinstance(fuse3d.relu, torch.nn.ReLU) and fuse3d.conv.bias is not None


def test_conv3d_identity_is_spread_by_the_released_codes_gaussian():
    """cnn_ucf101_fusion.m: kernel = [w1 I; w2 I] times a 3x3x3 Gaussian (sigma 1) normalised
    to sum 1, over segments and pixels; checked against that formula written out by hand."""
    import math
    fuse = Conv3dFusion(2, 3, out_channels=2, weights=(0.25, 0.75), batchnorm=False)
    g = {(t, y, x): math.exp(-(t * t + y * y + x * x) / 2)
         for t in (-1, 0, 1) for y in (-1, 0, 1) for x in (-1, 0, 1)}
    total = sum(g.values())
    w = fuse.conv.weight
    for (t, y, x), value in g.items():
        tap = w[:, :, t + 1, y + 1, x + 1]
        expected = torch.zeros(2, 5)
        expected[0, 0] = expected[1, 1] = 0.25 * value / total  # rgb channel o -> o
        expected[0, 2] = expected[1, 3] = 0.75 * value / total  # flow channel o -> o
        torch.testing.assert_close(tap, expected)
    torch.testing.assert_close(w.sum(dim=(2, 3, 4)).sum(), torch.tensor(2.0))
    # constant maps pass as the weighted sum (the Gaussian sums to one, zero padding aside)
    rgb, flow = torch.full((1, 3, 2, 5, 5), 2.0), torch.full((1, 3, 3, 5, 5), 4.0)
    out = fuse(rgb, flow)
    torch.testing.assert_close(out[0, 0, :, 2, 2], torch.full((2,), 0.25 * 2 + 0.75 * 4))


def test_conv1x1_random_init_is_not_identity():
    fuse = Conv1x1Fusion(4, 4, init="random")
    assert (fuse.conv.weight != 0).float().mean() > 0.9
    with pytest.raises(ValueError, match="unknown fusion init 'zeros'; valid: identity, random"):
        Conv1x1Fusion(4, 4, init="zeros")


def test_bilinear_is_the_normalised_sum_of_outer_products_per_segment():
    """Against a loop over locations in numpy: sum of outer products, signed square root, L2."""
    import numpy as np

    rgb, flow = torch.randn(2, 3, 4, 3, 5), torch.randn(2, 3, 6, 3, 5)  # unequal channels
    fuse = FUSIONS["bilinear"](4, 6)
    assert fuse.out_channels == 24
    fused = fuse(rgb, flow)
    assert fused.shape == (2, 3, 24, 1, 1)
    for b in range(2):
        for t in range(3):
            x, y = rgb[b, t].numpy(), flow[b, t].numpy()
            pooled = sum(np.outer(x[:, i, j], y[:, i, j]) for i in range(3) for j in range(5))
            rooted = np.sign(pooled) * np.sqrt(np.abs(pooled))
            expected = (rooted / np.linalg.norm(rooted)).reshape(-1)  # row-major: rgb channel first
            np.testing.assert_allclose(fused[b, t, :, 0, 0].numpy(), expected, atol=1e-5)
    # finite gradients, also where a product is exactly zero
    rgb = torch.zeros(1, 1, 4, 2, 2, requires_grad=True)
    rgb.data[0, 0, 0] = 1.0
    flow = torch.rand(1, 1, 6, 2, 2, requires_grad=True)
    fuse(rgb, flow).sum().backward()
    assert torch.isfinite(rgb.grad).all() and torch.isfinite(flow.grad).all()


def test_conv3d_fuses_across_segments_then_pools_time():
    fuse = Conv3dFusion(4, 4).eval()
    assert fuse.conv.weight.shape == (4, 8, 3, 3, 3)
    rgb, flow = torch.rand(2, 5, 4, 3, 3), torch.rand(2, 5, 4, 3, 3)
    out = fuse(rgb, flow)
    assert out.shape == (2, 1, 4, 3, 3)
    # The identity spread by the Gaussian over 3 segments x 3 x 3: each segment is a smoothed
    # sum ([I I]) of its neighbours, BatchNorm and ReLU, then the max over time.
    summed = rearrange(rgb + flow, "b t c h w -> (b c) 1 t h w")
    smoothed = torch.nn.functional.conv3d(summed, fuse.conv.weight[:1, :1] * 1.0, padding=1)
    expected = rearrange(smoothed, "(b c) 1 t h w -> b t c h w", b=2)
    expected = (expected * BN_SCALE).clamp(min=0).amax(dim=1, keepdim=True)
    torch.testing.assert_close(out, expected)
    # Random init mixes neighbouring segments: changing segment 0 changes what segment 1 sees.
    mixing = Conv3dFusion(4, 4, init="random").eval()
    with torch.no_grad():
        mixing.conv.weight.zero_()
        mixing.conv.weight[:, :, 0, 1, 1] = 1.0  # only the previous segment's centre pixel
    shifted = rgb.clone()
    shifted[:, 0] += 10
    assert not torch.allclose(mixing(rgb, flow), mixing(shifted, flow))


def test_average_is_weighted_mean_of_softmaxes():
    a, b, c = torch.randn(4, 7), torch.randn(4, 7), torch.randn(4, 7)
    fused = AverageFusion(weights=(1.0, 1.5))([a, b])
    expected = (a.softmax(-1) + 1.5 * b.softmax(-1)) / 2.5
    torch.testing.assert_close(fused.softmax(-1), expected)
    torch.testing.assert_close(fused.exp().sum(-1), torch.ones(4))  # log-probabilities
    three = AverageFusion(weights=(1.0, 1.5, 1.0))([a, b, c])
    torch.testing.assert_close(three.exp(),
                               (a.softmax(-1) + 1.5 * b.softmax(-1) + c.softmax(-1)) / 3.5)
    with pytest.raises(ValueError, match="2 weights for 3 streams"):
        AverageFusion()([a, b, c])
    with pytest.raises(ValueError, match="must be >= 0"):
        AverageFusion(weights=(1.0, -1.0))
