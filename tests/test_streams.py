"""Streams against torchvision's own models (the independent reference), on small CPU inputs."""
import urllib.error

import pytest
import torch
import torchvision
from torchvision.models.feature_extraction import create_feature_extractor

from fusion.streams import STREAMS, FlowInput, build_stream, count_parameters

# Tap -> torchvision graph node, written out by hand from torchvision's model definitions.
NODES = {
    "resnet18": {"conv1": "maxpool", "layer1": "layer1", "layer2": "layer2", "layer3": "layer3",
                 "layer4": "layer4", "scores": "fc"},
    "resnet50": {"conv1": "maxpool", "layer4": "layer4", "scores": "fc"},
    "vgg19": {"conv1": "features.3", "conv2": "features.8", "conv3": "features.17",
              "conv4": "features.26", "conv5": "features.35", "pool5": "features.36",
              "scores": "classifier.6"},
    "vgg16": {"conv3": "features.15", "conv5": "features.29", "pool5": "features.30",
              "scores": "classifier.6"},
    "googlenet": {"conv3": "maxpool2", "inception3a": "inception3a", "inception3b": "inception3b",
                  "inception4a": "inception4a", "inception4b": "inception4b",
                  "inception4c": "inception4c", "inception4d": "inception4d",
                  "inception4e": "inception4e", "inception5a": "inception5a",
                  "inception5b": "inception5b", "scores": "fc"},
    "inception_v3": {"conv4a": "maxpool2", "mixed5b": "Mixed_5b", "mixed6a": "Mixed_6a",
                     "mixed6e": "Mixed_6e", "mixed7c": "Mixed_7c", "scores": "fc"},
}
SIZE = {"inception_v3": 80}  # unpadded convolutions: at least 75 px
MAIN = ["resnet18", "vgg19", "googlenet"]


def torchvision_model(name):
    torch.manual_seed(0)
    if name in ("googlenet", "inception_v3"):
        return getattr(torchvision.models, name)(weights=None, aux_logits=False,
                                                 transform_input=False, init_weights=True)
    return getattr(torchvision.models, name)(weights=None)


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
    """Save a random torchvision model's state dict, as a user's local weights file would be."""
    cache = {}

    def get(name):
        if name not in cache:
            model = torchvision_model(name).eval()
            path = tmp_path_factory.mktemp(name) / f"{name}.pth"
            torch.save(model.state_dict(), path)
            cache[name] = (model, path)
        return cache[name]
    return get


@pytest.mark.parametrize("name", list(NODES))
def test_stream_equals_torchvision_model_and_nodes(name, weights_file):
    reference, path = weights_file(name)
    stream = build_stream(name, weights=path).eval()
    x = torch.randn(2, 3, SIZE.get(name, 64), SIZE.get(name, 64))
    extractor = create_feature_extractor(reference, return_nodes=list(NODES[name].values()))
    with torch.no_grad():
        nodes = extractor(x)
        torch.testing.assert_close(stream(x), reference(x), rtol=1e-4, atol=1e-5)
        for tap, node in NODES[name].items():
            torch.testing.assert_close(stream.forward_to(x, tap), nodes[node], rtol=1e-4,
                                       atol=1e-5, msg=f"{name} tap {tap}")


@pytest.mark.parametrize("name", MAIN + ["resnet50"])
@pytest.mark.parametrize("size", [64, 96])
def test_feature_info_matches_real_tensors(name, size):
    stream = build_stream(name, in_channels=20, num_classes=7).eval()
    assert stream.taps[-1] == "scores"
    assert [info["name"] for info in stream.feature_info] == list(stream.taps[:-1])
    x = torch.randn(1, 20, size, size)
    with torch.no_grad():
        for info in stream.feature_info:
            h = stream.forward_to(x, info["name"])
            assert h.shape[1] == info["channels"], info
            assert h.shape[-1] == size // info["reduction"], info
        assert stream.forward_to(x, "scores").shape == (1, 7)


@pytest.mark.parametrize("name", MAIN)
def test_forward_from_continues_forward_to(name):
    torch.manual_seed(1)
    stream = build_stream(name, in_channels=4, num_classes=5, modality="flow").eval()
    x = torch.randn(2, 4, 64, 64)
    with torch.no_grad():
        full = stream(x)
        for tap in stream.taps:
            torch.testing.assert_close(stream.forward_from(stream.forward_to(x, tap), tap), full,
                                       msg=f"{name} tap {tap}")


@pytest.mark.parametrize("name, conv", [("resnet18", "conv1.weight"),
                                        ("vgg19", "features.0.weight"),
                                        ("googlenet", "conv1.conv.weight")])
def test_cross_modality_initialisation(name, conv, weights_file):
    reference, path = weights_file(name)
    stream = build_stream(name, in_channels=20, num_classes=12, weights=path)
    first = next(m for m in stream.modules() if isinstance(m, torch.nn.Conv2d))
    rgb = reference.state_dict()[conv]
    assert first.weight.shape == (rgb.shape[0], 20, *rgb.shape[2:])
    expected = rgb.mean(dim=1, keepdim=True).repeat(1, 20, 1, 1)
    assert torch.equal(first.weight.detach(), expected)
    # Everything after the first conv is the file's, and only the last Linear is resized.
    assert stream.classifier.out_features == 12
    assert stream.classifier.in_features == reference.get_submodule(
        "classifier.6" if name == "vgg19" else "fc").in_features


def test_random_first_conv_for_flow_is_not_replicated():
    stream = build_stream("resnet18", in_channels=20)
    w = stream.stages["conv1"][0].weight
    assert w.shape[1] == 20 and not torch.equal(w[:, 0], w[:, 1])


def test_parameter_counts_match_seed_report_001():
    assert count_parameters(build_stream("googlenet", num_classes=12)) == 5_612_204
    assert count_parameters(build_stream("resnet18", in_channels=24, num_classes=12)) == 11_248_524


def test_dropout_defaults_and_override():
    def dropouts(stream):
        return [m.p for m in stream.stages["scores"].modules() if isinstance(m, torch.nn.Dropout)]
    assert dropouts(build_stream("googlenet")) == [0.2]
    assert dropouts(build_stream("vgg19")) == [0.5, 0.5]
    assert dropouts(build_stream("resnet18")) == [0.0]
    assert dropouts(build_stream("resnet18", dropout=0.7)) == [0.7]
    assert dropouts(build_stream("googlenet", dropout=0.5)) == [0.5]


def test_normalisation_per_modality():
    resnet = build_stream("resnet18")
    pixel = torch.tensor([0.485, 0.456, 0.406]).mul(255).view(1, 3, 1, 1).expand(1, 3, 2, 2)
    torch.testing.assert_close(resnet.normalize(pixel), torch.zeros(1, 3, 2, 2), atol=1e-6,
                               rtol=0)
    white = torch.full((3, 1, 1), 255, dtype=torch.uint8)
    torch.testing.assert_close(resnet.normalize(white).flatten(),
                               (1 - torch.tensor([0.485, 0.456, 0.406])) /
                               torch.tensor([0.229, 0.224, 0.225]))
    # GoogLeNet's ImageNet weights expect (x - 0.5) / 0.5, which transform_input would produce.
    assert build_stream("googlenet").normalize(white).flatten().tolist() == [1.0, 1.0, 1.0]
    flow = build_stream("resnet18", in_channels=4, modality="flow")
    q = torch.tensor([0, 255, 0, 255], dtype=torch.uint8).view(4, 1, 1)
    assert flow.normalize(q).flatten().tolist() == [-1.0, 1.0, -1.0, 1.0]
    with pytest.raises(ValueError, match="expects 4 channels"):
        flow.normalize(torch.zeros(3, 8, 8, dtype=torch.uint8))


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(ValueError, match="unknown stream 'resnet19'.*resnet18.*googlenet"):
        build_stream("resnet19")
    stream = build_stream("resnet18")
    with pytest.raises(ValueError, match="unknown resnet18 tap 'layer5'.*conv1, layer1.*scores"):
        stream.forward_to(torch.zeros(1, 3, 32, 32), "layer5")
    with pytest.raises(ValueError, match="unknown modality 'depth'"):
        build_stream("resnet18", modality="depth")
    with pytest.raises(ValueError, match="in_channels=5 is not a multiple of 2"):
        build_stream("resnet18", in_channels=5, modality="flow")
    assert set(STREAMS) >= {"resnet18", "resnet50", "resnet101", "vgg16", "vgg19", "googlenet",
                            "inception_v3"}


def test_bad_weights_files_name_the_key(tmp_path, weights_file):
    reference, _ = weights_file("resnet18")
    state = reference.state_dict()

    missing = dict(state)
    del missing["layer2.0.bn1.running_var"]
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(ValueError, match="missing key 'layer2.0.bn1.running_var'"):
        build_stream("resnet18", weights=tmp_path / "missing.pth")

    torch.save({**state, "fc.weight": torch.zeros(10, 512)}, tmp_path / "shape.pth")
    with pytest.raises(ValueError, match=r"'fc.weight' has shape \(10, 512\), expected"):
        build_stream("resnet18", weights=tmp_path / "shape.pth")

    torch.save({**state, "head.extra": torch.zeros(1)}, tmp_path / "extra.pth")
    with pytest.raises(ValueError, match="unexpected key 'head.extra'"):
        build_stream("resnet18", weights=tmp_path / "extra.pth")

    (tmp_path / "junk.pth").write_text("not a checkpoint")
    with pytest.raises(ValueError, match="junk.pth is not a PyTorch state dict"):
        build_stream("resnet18", weights=tmp_path / "junk.pth")

    with pytest.raises(FileNotFoundError, match="nowhere.pth does not exist"):
        build_stream("resnet18", weights=tmp_path / "nowhere.pth")


def test_googlenet_weights_with_aux_heads_load(tmp_path):
    # torchvision's own ImageNet GoogLeNet checkpoint carries the auxiliary heads; we drop them.
    torch.manual_seed(0)
    with_aux = torchvision.models.googlenet(weights=None, aux_logits=True, init_weights=True)
    torch.save(with_aux.state_dict(), tmp_path / "g.pth")
    stream = build_stream("googlenet", weights=tmp_path / "g.pth", num_classes=12)
    assert not any(name.startswith("aux") for name, _ in stream.named_modules())


def test_imagenet_download_failure_is_explained(monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")
    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", offline)
    with pytest.raises(RuntimeError, match=r"could not download the ImageNet weights for "
                                           r"resnet18 .*pass its path instead: weights="):
        build_stream("resnet18", weights="imagenet")


def test_imagenet_weights_load_through_torchvision(monkeypatch, weights_file):
    # Stand in for the network: torchvision's loader returns the state dict it would download.
    reference, _ = weights_file("resnet18")
    urls = []

    def fake_download(url, *args, **kwargs):
        urls.append(url)
        return reference.state_dict()
    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", fake_download)
    stream = build_stream("resnet18", weights="imagenet").eval()
    assert urls == [torchvision.models.ResNet18_Weights.DEFAULT.url]
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(stream(x), reference(x))


def test_inception_v3_weights_with_aux_head_load_and_taps_report_their_reductions(tmp_path):
    torch.manual_seed(0)
    with_aux = torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=True)
    torch.save(with_aux.state_dict(), tmp_path / "i.pth")
    stream = build_stream("inception_v3", weights=tmp_path / "i.pth", in_channels=20,
                          num_classes=12)
    assert stream.normalize(torch.full((20, 1, 1), 255)).flatten().tolist() == [1.0] * 20
    info = {i["name"]: i for i in stream.feature_info}
    assert (info["conv4a"]["channels"], info["mixed7c"]["channels"]) == (192, 2048)
    with torch.no_grad():  # 299 px: 35, 17 and 8 px maps, the reductions are rounded ratios
        x = torch.zeros(1, 20, 299, 299)
        for tap, side in [("mixed5d", 35), ("mixed6e", 17), ("mixed7c", 8)]:
            assert stream.eval().forward_to(x, tap).shape[-1] == side
            assert info[tap]["reduction"] == round(299 / side)


def test_mean_flow_subtraction_removes_each_displacement_fields_mean():
    """Simonyan & Zisserman (section 3.1): from each displacement field its mean vector is
    subtracted, so a camera pan (the same shift everywhere in a frame) leaves no trace."""
    stream = build_stream("resnet18", in_channels=4, num_classes=3,
                          flow_input=FlowInput(subtract_mean=True))
    g = torch.Generator().manual_seed(0)
    motion = torch.randint(60, 190, (2, 4, 16, 16), generator=g)
    panned = motion + torch.tensor([9, -7, 20, 3]).view(1, 4, 1, 1)  # per field: u1 v1 u2 v2
    got = stream.normalize(motion.to(torch.uint8))
    by_hand = (motion.float() / 255 - 0.5) / 0.5
    by_hand -= by_hand.mean(dim=(2, 3), keepdim=True)
    torch.testing.assert_close(got, by_hand)
    torch.testing.assert_close(stream.normalize(panned.to(torch.uint8)), got)
    plain = build_stream("resnet18", in_channels=4, num_classes=3)
    assert not torch.allclose(plain.normalize(panned.to(torch.uint8)), plain.normalize(
        motion.to(torch.uint8)))
    with pytest.raises(ValueError, match="applies to a flow stream, not 'rgb'"):
        build_stream("resnet18", flow_input=FlowInput(subtract_mean=True))
