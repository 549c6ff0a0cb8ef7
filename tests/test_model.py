"""The two-stream model: every fusion at every backbone pair, and its documented behaviours."""
import copy
import functools

import pytest
import torch

import fusion.parts
from fusion.fusers import FUSIONS, FusionOptions
from fusion.model import SingleStream
from fusion.parts import FusionSpec, StreamSpec, assemble, build_two_stream
from fusion.policy import hold_for_training
from fusion.streams import IMAGENET_MEAN, IMAGENET_STD, build_stream, count_parameters
from tests.fakes import by_hand

BACKBONES = ["resnet18", "vgg19", "googlenet"]
LAST_TAP = {"resnet18": "layer4", "vgg19": "pool5", "googlenet": "inception5b"}
INNER_TAP = {"resnet18": "layer3", "vgg19": "conv4", "googlenet": "inception4e"}
B, T, SIZE, FLOW_STACK, CLASSES = 2, 2, 64, 2, 5


_built_once = functools.lru_cache(maxsize=None)(build_stream)


@pytest.fixture
def cached_streams(monkeypatch):
    """Build each backbone once per session (VGG-19 takes seconds) and hand out copies."""
    def copy_of(name, **kwargs):
        return copy.deepcopy(_built_once(name, **kwargs))
    monkeypatch.setattr(fusion.parts, "build_stream", copy_of)


def two_stream(*, fuse, at=None, rgb="resnet18", flow="resnet18", num_classes=CLASSES,
               flow_stack=FLOW_STACK, init_rgb=None, init_flow=None, **fusion):
    """A model assembled from its parts, for the options beyond build_two_stream's."""
    return assemble(StreamSpec(rgb, "rgb", init=init_rgb).build(num_classes),
                    StreamSpec(flow, "flow", frames=flow_stack, init=init_flow).build(num_classes),
                    FusionSpec(fuse, at=at, **fusion), num_classes=num_classes)


def clip(channels, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (B, T, channels, SIZE, SIZE), dtype=torch.uint8, generator=g)


def first_conv_grad(stream):
    conv = next(m for m in stream.modules() if isinstance(m, torch.nn.Conv2d))
    return conv.weight.grad


def places(fuse):
    if fuse == "average":
        return ["scores"]
    return ["last"] if getattr(FUSIONS[fuse], "pooled", False) else ["last", "inner"]


CASES = [(rgb, flow, fuse, where) for rgb in BACKBONES for flow in BACKBONES
         for fuse in FUSIONS for where in places(fuse)]


@pytest.mark.parametrize("rgb, flow, fuse, where", CASES)
def test_every_fusion_at_every_backbone_pair(rgb, flow, fuse, where, cached_streams):
    at = {"scores": "scores", "last": LAST_TAP[rgb], "inner": INNER_TAP[rgb]}[where]
    torch.manual_seed(0)
    model = build_two_stream(rgb=rgb, flow=flow, fuse=fuse, at=at, num_classes=CLASSES,
                             flow_stack=FLOW_STACK)
    out = model(clip(3), clip(2 * FLOW_STACK, seed=1))
    assert out.shape == (B, CLASSES)
    assert torch.isfinite(out).all()
    out.logsumexp(-1).sum().backward()
    for stream in (model.rgb, model.flow):
        grad = first_conv_grad(stream)
        assert grad is not None and grad.abs().sum() > 0, f"no gradient reaches {stream.name}"
    for name, p in [*model.fusion.named_parameters(), *(model.head or torch.nn.Module())
                    .named_parameters()]:
        assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient for {name}"


def test_average_is_weighted_mean_of_the_streams_run_alone():
    torch.manual_seed(0)
    model = two_stream(fuse="average", options=FusionOptions(weights=(1.0, 1.5))).eval()
    rgb, flow = clip(3), clip(4, seed=1)
    with torch.no_grad():
        fused = model(rgb, flow).softmax(-1)
        p_rgb = by_hand(model.rgb, rgb, IMAGENET_MEAN, IMAGENET_STD).softmax(-1)
        p_flow = by_hand(model.flow, flow, (0.5, 0.5), (0.5, 0.5)).softmax(-1)
    torch.testing.assert_close(fused, (p_rgb + 1.5 * p_flow) / 2.5)


def test_seed_001_two_stream_model_has_the_reported_parameter_count():
    model = build_two_stream(rgb="googlenet", flow="resnet18", fuse="conv1x1", at="inception5b",
                             num_classes=12, flow_stack=12, keep_spatial_head=True)
    assert model.at_flow == "layer4"
    assert model.fusion.conv.weight.shape == (1024, 1536, 1, 1)
    assert [m.p for m in model.head if isinstance(m, torch.nn.Dropout)] == [0.2]
    assert model.head[-1].in_features == 1024 and model.head[-1].out_features == 12
    assert "scores" in model.rgb.stages and "scores" not in model.flow.stages
    assert count_parameters(model) == 18_441_784


def test_kept_spatial_head_is_averaged_with_fused_scores():
    torch.manual_seed(0)
    model = build_two_stream(rgb="resnet18", flow="resnet18", fuse="conv1x1", at="layer4",
                             num_classes=CLASSES, flow_stack=FLOW_STACK,
                             keep_spatial_head=True).eval()
    with torch.no_grad():
        parts = model(clip(3), clip(4, seed=1), return_parts=True)
        alone = by_hand(model.rgb, clip(3), IMAGENET_MEAN, IMAGENET_STD)
    torch.testing.assert_close(parts["rgb"], alone)
    assert set(parts) == {"fused", "rgb"}
    # the fused head by hand: both maps at layer4, the fusion, GAP + FC, segments averaged
    with torch.no_grad():
        h_rgb = model.rgb.forward_to(model.rgb.normalize(clip(3).flatten(0, 1)), "layer4")
        h_flow = model.flow.forward_to(model.flow.normalize(clip(4, seed=1).flatten(0, 1)),
                                       "layer4")
        fused_map = model.fusion.fuse(h_rgb, h_flow)
        head = model.head[-1](fused_map.mean(dim=(2, 3))).view(B, T, -1).mean(1)
    torch.testing.assert_close(parts["fused"], (head + alone) / 2)  # the mean of the logits


def test_kept_heads_average_logits_by_default_or_softmaxes_when_asked():
    torch.manual_seed(0)
    options = dict(fuse="conv1x1", at="layer4", keep_spatial_head=True, keep_temporal_tower=True)
    by_logits = two_stream(**options).eval()
    by_softmax = two_stream(**options, kept_average="softmax").eval()
    by_softmax.load_state_dict(by_logits.state_dict())
    with torch.no_grad():
        parts = by_logits(clip(3), clip(4, seed=1), return_parts=True)
        fused_softmax = by_softmax(clip(3), clip(4, seed=1))
    # the fused head's own scores, recovered from the logit mean
    head = 3 * parts["fused"] - parts["rgb"] - parts["flow"]
    expected = (head.softmax(-1) + parts["rgb"].softmax(-1) + parts["flow"].softmax(-1)) / 3
    torch.testing.assert_close(fused_softmax.softmax(-1), expected)
    with pytest.raises(ValueError, match="unknown kept_average 'max'"):
        two_stream(**options, kept_average="max")


def perturbed(model, module):
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    return model


def test_inner_tap_continues_through_the_spatial_tower():
    torch.manual_seed(0)
    model = build_two_stream(rgb="resnet18", flow="resnet18", fuse="conv1x1", at="layer3",
                             num_classes=CLASSES, flow_stack=FLOW_STACK).eval()
    rgb, flow = clip(3), clip(4, seed=1)
    assert model.at_flow == "layer3" and model.head is None
    # The flow tower ends at its tap: its later stages are not even part of the model.
    assert model.flow.taps[-1] == "layer3"
    with torch.no_grad():
        before = model(rgb, flow)
        after = perturbed(model, model.rgb.stages["layer4"])(rgb, flow)
    assert not torch.allclose(before, after)


def rgb_tower_from(model, rgb, flow, combine):
    """Reference for a fusion at an inner tap: the RGB stream continued from
    combine(rgb_map, flow_map), the maps taken at the model's taps (segments folded, B T)."""
    h_rgb = model.rgb.forward_to(model.rgb.normalize(rgb.flatten(0, 1)), model.at)
    h_flow = model.flow.forward_to(model.flow.normalize(flow.flatten(0, 1)), model.at_flow)
    h = combine(h_rgb, h_flow)
    scores = model.rgb.forward_from(h, model.at)
    return scores.view(B, -1, scores.shape[-1]).mean(1)


def cycled(h_flow, channels):
    """The flow map cycled onto `channels` channels (identity where the counts agree)."""
    return h_flow[:, torch.arange(channels) % h_flow.shape[1]]


@pytest.mark.parametrize("rgb_net, flow_net, fuse", [
    ("resnet18", "resnet18", "conv1x1"), ("resnet18", "resnet18", "conv3d"),
    ("resnet18", "resnet18", "concat"), ("resnet18", "resnet18", "sum"),
    ("googlenet", "resnet18", "sum"), ("googlenet", "resnet18", "concat"),
    ("googlenet", "resnet18", "conv1x1"), ("resnet18", "googlenet", "max")])
def test_fusion_at_an_inner_tap_starts_as_the_spatial_tower_on_the_summed_maps(
        rgb_net, flow_net, fuse, cached_streams):
    """Feichtenhofer's conv fusion: a conv with bias initialised as [I I], a ReLU and no
    BatchNorm, so in training mode the fused network starts as the spatial tower applied to
    rgb_map + flow_map (conv3d: that sum smoothed by the released code's 3x3x3 Gaussian).
    Projections back to the spatial channels start as the identity."""
    torch.manual_seed(0)
    model = build_two_stream(rgb=rgb_net, flow=flow_net, fuse=fuse, at=INNER_TAP[rgb_net],
                             num_classes=CLASSES, flow_stack=FLOW_STACK, dropout=0.0).train()
    rgb, flow = clip(3), clip(2 * FLOW_STACK, seed=1)
    if fuse == "max":
        def combine(h_rgb, h_flow):
            return torch.maximum(h_rgb, cycled(h_flow, h_rgb.shape[1]))
    elif fuse == "conv3d":  # the sum smoothed over segments x H x W, then the max over time
        def combine(h_rgb, h_flow):
            summed = h_rgb + cycled(h_flow, h_rgb.shape[1])
            x = summed.view(B, T, *summed.shape[1:]).transpose(1, 2)  # B C T H W
            taps = torch.arange(-1.0, 2.0)
            g = torch.exp(-(taps.view(3, 1, 1) ** 2 + taps.view(1, 3, 1) ** 2
                            + taps.view(1, 1, 3) ** 2) / 2)
            smoothed = torch.nn.functional.conv3d(x.reshape(-1, 1, *x.shape[2:]),
                                                  (g / g.sum())[None, None], padding=1)
            return smoothed.view(x.shape).clamp(min=0).amax(2)
    else:
        def combine(h_rgb, h_flow):
            return h_rgb + cycled(h_flow, h_rgb.shape[1])
    with torch.no_grad():
        fused = model(rgb, flow)
        expected = rgb_tower_from(model, rgb, flow, combine)
    torch.testing.assert_close(fused, expected, rtol=1e-4, atol=1e-4)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
                   for m in model.fusion.modules())
    if fuse in ("conv1x1", "conv3d"):
        assert model.fusion.conv.bias is not None
        # BatchNorm (with ReLU) stays an option at inner taps; at the last tap it is the default
        with_bn = two_stream(rgb=rgb_net, flow=flow_net, fuse=fuse, at=INNER_TAP[rgb_net],
                             options=FusionOptions(batchnorm="on"))
        assert isinstance(with_bn.fusion.bn, torch.nn.modules.batchnorm._BatchNorm)
        last = build_two_stream(rgb=rgb_net, flow=flow_net, fuse=fuse, at=LAST_TAP[rgb_net],
                                num_classes=CLASSES, flow_stack=FLOW_STACK)
        assert isinstance(last.fusion.bn, torch.nn.modules.batchnorm._BatchNorm)
        assert last.fusion.conv.bias is None


def test_kept_temporal_tower_is_late_fused():
    torch.manual_seed(0)
    model = two_stream(fuse="conv1x1", at="layer3", keep_temporal_tower=True).eval()
    rgb, flow = clip(3), clip(4, seed=1)
    with torch.no_grad():
        parts = model(rgb, flow, return_parts=True)
        torch.testing.assert_close(parts["flow"], by_hand(model.flow, flow, (0.5, 0.5), (0.5, 0.5)))
        after = perturbed(model, model.flow.stages["layer4"])(rgb, flow)
    assert set(parts) == {"fused", "flow"}
    assert not torch.allclose(parts["fused"], after)


def test_flow_map_is_resized_to_the_rgb_map():
    """layer4's 2 x 2 flow map is resized bilinearly (F.interpolate, the reference) onto
    layer3's 4 x 4 RGB map before the sum."""
    torch.manual_seed(0)
    model = two_stream(fuse="sum", at="layer3", at_flow="layer4").eval()
    rgb, flow = clip(3), clip(4, seed=1)

    def combine(h_rgb, h_flow):
        assert h_flow.shape[-1] == h_rgb.shape[-1] // 2
        resized = torch.nn.functional.interpolate(h_flow, size=h_rgb.shape[-2:],
                                                  mode="bilinear", align_corners=False)
        return h_rgb + model.fusion.project(resized)
    with torch.no_grad():
        torch.testing.assert_close(model(rgb, flow), rgb_tower_from(model, rgb, flow, combine))


def test_names_and_conflicts_are_checked():
    common = dict(rgb="resnet18", flow="resnet18", num_classes=3, flow_stack=1)
    with pytest.raises(ValueError, match="unknown fusion 'mean'; valid: .*conv1x1"):
        build_two_stream(fuse="mean", at="layer4", **common)
    with pytest.raises(ValueError, match="unknown resnet18 tap 'layer9'.*layer1, layer2"):
        build_two_stream(fuse="conv1x1", at="layer9", **common)
    with pytest.raises(ValueError, match="unknown resnet18 tap 'pool5'"):
        two_stream(fuse="conv1x1", at="layer4", at_flow="pool5", num_classes=3, flow_stack=1)
    with pytest.raises(ValueError, match="use at='scores'"):
        build_two_stream(fuse="average", at="layer4", **common)
    with pytest.raises(ValueError, match="keep_spatial_head applies when fusing at the last tap"):
        build_two_stream(fuse="conv1x1", at="layer2", keep_spatial_head=True, **common)
    with pytest.raises(ValueError, match="needs a tap"):
        build_two_stream(fuse="sum", **common)
    with pytest.raises(ValueError, match="'bilinear' pools the maps into one vector per "
                                         "segment: fuse it at the last tap \\(layer4\\), not at "
                                         "'layer3'"):
        build_two_stream(fuse="bilinear", at="layer3", **common)
    with pytest.raises(ValueError,
                       match=r"no resnet18 tap has the reduction of vgg19 conv1 \(/1\)"):
        build_two_stream(rgb="vgg19", flow="resnet18", fuse="sum", at="conv1", num_classes=3,
                         flow_stack=1)
    model = build_two_stream(fuse="sum", at="layer4", **common)
    with pytest.raises(ValueError, match="unknown freeze mode 'all'"):
        hold_for_training(model, freeze="all")
    with pytest.raises(ValueError, match="unknown fusion_bn 'maybe'"):
        FusionSpec("conv1x1", at="layer4", options=FusionOptions(batchnorm="maybe"))
    with pytest.raises(ValueError, match=r"flow input must be B x T x 2 x H x W"):
        model(clip(3), clip(4))


def one_step(model, rgb, flow, labels):
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    loss = torch.nn.functional.cross_entropy(model(rgb, flow), labels)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def snapshot(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


def test_freeze_streams_trains_only_the_fusion():
    torch.manual_seed(0)
    model = build_two_stream(rgb="resnet18", flow="resnet18", fuse="conv1x1", at="layer4",
                             num_classes=CLASSES, flow_stack=FLOW_STACK)
    hold_for_training(model, freeze="streams")
    streams = snapshot(torch.nn.ModuleList([model.rgb, model.flow]))
    fusion_before = snapshot(model.fusion)
    model.train()
    one_step(model, clip(3), clip(4), torch.tensor([0, 1]))
    after = torch.nn.ModuleList([model.rgb, model.flow]).state_dict()
    for key, value in streams.items():  # weights and BatchNorm statistics alike
        assert torch.equal(value, after[key]), key
    assert not torch.equal(fusion_before["conv.weight"], model.fusion.conv.weight)
    assert not torch.equal(fusion_before["bn.running_mean"], model.fusion.bn.running_mean)


def test_freeze_bn_holds_the_streams_batchnorm_but_trains_the_fusion_batchnorm():
    torch.manual_seed(0)
    model = build_two_stream(rgb="resnet18", flow="resnet18", fuse="conv1x1", at="layer4",
                             num_classes=CLASSES, flow_stack=FLOW_STACK)
    hold_for_training(model, freeze="bn")
    before = snapshot(model)
    model.train()
    assert model.fusion.bn.training and model.fusion.bn.weight.requires_grad
    one_step(model, clip(3), clip(4), torch.tensor([0, 1]))
    after = model.state_dict()
    for side in ("rgb", "flow"):
        for key in (f"{side}.stages.conv1.1.running_mean", f"{side}.stages.layer4.1.bn2.weight"):
            assert torch.equal(before[key], after[key]), key
    # fresh statistics (0 and 1) held fixed would make the fusion BatchNorm a silent no-op
    assert not torch.equal(before["fusion.bn.running_mean"], after["fusion.bn.running_mean"])
    assert not torch.equal(before["fusion.bn.weight"], after["fusion.bn.weight"])


def test_partial_batchnorm_updates_only_the_first_batchnorm_of_each_stream():
    torch.manual_seed(0)
    model = build_two_stream(rgb="resnet18", flow="resnet18", fuse="conv1x1", at="layer4",
                             num_classes=CLASSES, flow_stack=FLOW_STACK)
    hold_for_training(model, partial_bn=True)
    before = snapshot(model)
    model.train()
    one_step(model, clip(3), clip(4), torch.tensor([0, 1]))
    for side in ("rgb", "flow"):
        first = f"{side}.stages.conv1.1"
        assert not torch.equal(before[f"{first}.running_mean"],
                               model.state_dict()[f"{first}.running_mean"])
        assert model.get_submodule(first).weight.requires_grad
        later = f"{side}.stages.layer2.0.bn1"
        assert torch.equal(before[f"{later}.running_mean"],
                           model.state_dict()[f"{later}.running_mean"])
        assert torch.equal(before[f"{later}.weight"], model.state_dict()[f"{later}.weight"])


def test_streams_load_from_separately_trained_checkpoints(tmp_path):
    torch.manual_seed(0)
    rgb = SingleStream(build_stream("resnet18", num_classes=CLASSES))
    flow = SingleStream(build_stream("googlenet", in_channels=4, num_classes=CLASSES))
    torch.save({"model": rgb.state_dict(), "epoch": 3}, tmp_path / "rgb.pt")
    torch.save({"model": flow.state_dict()}, tmp_path / "flow.pt")
    model = two_stream(flow="googlenet", fuse="conv1x1", at="layer4", flow_stack=2,
                       init_rgb=tmp_path / "rgb.pt", init_flow=tmp_path / "flow.pt")
    for key, value in model.rgb.state_dict().items():
        assert torch.equal(value, rgb.stream.state_dict()[key]), key
    for key, value in model.flow.state_dict().items():
        assert torch.equal(value, flow.stream.state_dict()[key]), key
    # A checkpoint for other classes fails naming the key.
    with pytest.raises(ValueError, match=r"key 'stages.scores.3.weight' has shape \(5, 512\)"):
        two_stream(flow="googlenet", fuse="conv1x1", at="layer4", num_classes=7, flow_stack=2,
                   init_rgb=tmp_path / "rgb.pt")
    with pytest.raises(ValueError, match="holds no flow stream weights"):
        torch.save({"model": {"encoder.weight": torch.zeros(1)}}, tmp_path / "other.pt")
        two_stream(flow="googlenet", fuse="conv1x1", at="layer4", flow_stack=2,
                   init_flow=tmp_path / "other.pt")


@pytest.mark.parametrize("fuse, at", [("average", None), ("sum", "layer4"), ("max", "layer3"),
                                      ("concat", "layer3"), ("conv1x1", "layer4"),
                                      ("conv3d", "layer3"), ("bilinear", "layer4")])
def test_every_fusion_trains_a_few_steps(fuse, at):
    torch.manual_seed(0)
    model = build_two_stream(rgb="resnet18", flow="resnet18", fuse=fuse, at=at, num_classes=3,
                             flow_stack=1, dropout=0.0)
    rgb, flow, labels = clip(3), clip(2, seed=1), torch.tensor([0, 2])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(6):
        loss = torch.nn.functional.cross_entropy(model(rgb, flow), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses
