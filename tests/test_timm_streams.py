"""timm backbones as streams, checked against timm's own features_only models and forwards."""
import pytest
import timm
import torch
from safetensors.torch import save_file

from fusion.config import Config
from fusion.fusers import FUSIONS
from fusion.parts import build_two_stream
from fusion.streams import build_stream

# One of each family the seeds name (Inception-v4 / Inception-ResNet-v2 / ResNeSt / ResNet), the
# smallest of its kind where the seed's own is large; 160 px, the smallest the Inceptions take.
FAMILIES = ["inception_v4", "inception_resnet_v2", "resnest14d", "resnet26"]
SIZE = 160


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """Random timm weights per model, saved as local files (as a user passes downloaded ones)."""
    folder = tmp_path_factory.mktemp("timm")
    files = {}
    for name in FAMILIES:
        torch.manual_seed(0)
        files[name] = folder / f"{name}.pth"
        torch.save(timm.create_model(name, pretrained=False).state_dict(), files[name])
    return files


def timm_reference(name, path, **kwargs):
    """timm's own model, loading the file through timm's own pretrained path."""
    return timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)),
                             **kwargs).eval()


@pytest.mark.parametrize("name", FAMILIES)
def test_every_tap_is_timms_features_only_output_and_the_stages_compose(name, weights):
    stream = build_stream(f"timm:{name}", weights=weights[name]).eval()
    features = timm_reference(name, weights[name], features_only=True)
    x = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = features(x)
        taps = stream.taps[:-1]
        assert len(taps) == len(expected)
        for tap, reference, info in zip(taps, expected, features.feature_info.get_dicts()):
            torch.testing.assert_close(stream.forward_to(x, tap), reference)
            assert stream.tap_info(tap)["channels"] == info["num_chs"] == reference.shape[1]
            assert stream.tap_info(tap)["reduction"] == info["reduction"]
        whole = stream(x)
        torch.testing.assert_close(whole, timm_reference(name, weights[name])(x),
                                   rtol=1e-4, atol=1e-4)
        for tap in taps:
            torch.testing.assert_close(stream.forward_from(stream.forward_to(x, tap), tap),
                                       whole, rtol=1e-4, atol=1e-4)


def test_cross_modality_init_normalisation_and_classifier(weights):
    name = "inception_v4"
    flow = build_stream(f"timm:{name}", in_channels=10, num_classes=7, weights=weights[name],
                        modality="flow")
    rgb_conv = torch.load(weights[name])["features.0.conv.weight"]
    conv = flow.stages["features_2"][0].conv  # features.0.conv
    assert conv.weight.shape[1] == 10
    torch.testing.assert_close(conv.weight, rgb_conv.mean(dim=1, keepdim=True).expand(-1, 10,
                                                                                       -1, -1))
    assert flow.classifier.out_features == 7 and flow.num_classes == 7
    rgb = build_stream(f"timm:{name}", num_classes=7)
    cfg = timm.create_model(name).pretrained_cfg
    assert rgb.mean.flatten().tolist() == pytest.approx(list(cfg["mean"]))
    assert rgb.std.flatten().tolist() == pytest.approx(list(cfg["std"]))
    assert flow.mean.flatten().tolist() == pytest.approx([0.5] * 10)  # flow: docs/design.md §5


@pytest.mark.parametrize("fuse", sorted(FUSIONS))
def test_a_timm_rgb_stream_fused_with_a_torchvision_flow_stream_trains(fuse):
    at = "scores" if fuse == "average" else "layer4"
    model = build_two_stream(rgb="timm:resnet10t", flow="resnet18", fuse=fuse, at=at,
                             num_classes=3, flow_stack=2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    g = torch.Generator().manual_seed(0)
    rgb = torch.randint(0, 256, (2, 2, 3, 64, 64), generator=g, dtype=torch.uint8)
    flow = torch.randint(0, 256, (2, 2, 4, 64, 64), generator=g, dtype=torch.uint8)
    labels = torch.tensor([0, 2])
    firsts = [first_conv(model.rgb).weight, first_conv(model.flow).weight]
    before = [w.detach().clone() for w in firsts]
    for _ in range(3):
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(rgb, flow), labels)
        loss.backward()
        for stream, w in zip(("RGB (timm)", "flow (torchvision)"), firsts):
            assert w.grad is not None and w.grad.abs().sum() > 0, f"{stream}: no gradient"
        optimizer.step()
    assert torch.isfinite(loss)
    assert all(not torch.equal(b, w) for b, w in zip(before, firsts))


def first_conv(stream):
    return next(m for m in stream.modules() if isinstance(m, torch.nn.Conv2d))


def test_fusion_at_an_inner_timm_tap_picks_the_flow_tap_of_the_same_reduction():
    model = build_two_stream(rgb="timm:inception_v4", flow="resnet18", fuse="conv1x1",
                             at="features.17", num_classes=3, flow_stack=2)
    assert model.at == "features_17" and model.at_flow == "layer3"  # both 1/16
    out = model.eval()(torch.randint(0, 256, (1, 1, 3, SIZE, SIZE), dtype=torch.uint8),
                       torch.randint(0, 256, (1, 1, 4, SIZE, SIZE), dtype=torch.uint8))
    assert out.shape == (1, 3)


def test_unknown_names_bad_files_and_offline_downloads_are_named(weights, tmp_path, monkeypatch):
    with pytest.raises(ValueError, match=r"unknown timm model 'incepton_v4' .* Close: "
                                         r"inception_v4.*timm.list_models"):
        build_stream("timm:incepton_v4")
    with pytest.raises(ValueError, match="config key rgb: unknown timm model 'nope'"):
        Config(rgb="timm:nope").validate()
    state = torch.load(weights["resnet26"])
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "extra.pth")
    with pytest.raises(ValueError, match=r"extra.pth into timm's resnet26: unexpected key "
                                         r"'extra.weight'"):
        build_stream("timm:resnet26", weights=tmp_path / "extra.pth")
    # a model.safetensors downloaded from the model's Hugging Face page loads too
    save_file(torch.load(weights["resnet26"]), tmp_path / "model.safetensors")
    loaded = build_stream("timm:resnet26", weights=tmp_path / "model.safetensors")
    torch.testing.assert_close(loaded.stages["act1"][0].weight, state["conv1.weight"])

    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co'")
    monkeypatch.setattr(timm.models._builder, "load_pretrained", offline)
    with pytest.raises(RuntimeError, match=r"could not download timm's pretrained weights for "
                                           r"resnet26 from https://huggingface.co/timm/resnet26"
                                           r".* weights='/path/to/file'"):
        build_stream("timm:resnet26", weights="imagenet")
