"""Model builders: the reference parameter counts, stems, weights loading, feature taps."""
import socket

import pytest
import torch

from kdtp.models import (FEATURE_LAYER, WeightsUnavailableError, build_model, count_parameters,
                         feature_shape, feature_tap, make_adapter)


def test_reference_parameter_counts():
    assert count_parameters(build_model("resnet50")) == 23_528_522
    assert count_parameters(build_model("resnet18")) == 11_181_642


def test_cifar_stem_is_a_3x3_stride_1_conv_without_max_pool():
    m = build_model("resnet18", cifar_stem=True)
    assert m.conv1.kernel_size == (3, 3) and m.conv1.stride == (1, 1)
    assert isinstance(m.maxpool, torch.nn.Identity)
    assert m(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("arch, stem, expected", [
    ("resnet50", False, (2048, 1, 1)),   # 32 px through a /32 ImageNet stem+body: 1x1
    ("resnet18", False, (512, 1, 1)),
    ("resnet18", True, (512, 4, 4)),     # the CIFAR stem keeps 4x more resolution per side
])
def test_layer4_shapes_at_32px(arch, stem, expected):
    assert feature_shape(build_model(arch, cifar_stem=stem), "layer4", 32) == expected


def test_feature_tap_returns_maps_and_the_same_logits():
    m = build_model("cnn_small").eval()
    x = torch.randn(3, 3, 32, 32)
    out = feature_tap(m, [FEATURE_LAYER["cnn_small"]])(x)
    assert set(out) == {"layer3", "logits"}
    assert torch.allclose(out["logits"], m(x), atol=1e-6)
    adapter = make_adapter(512, 2048)
    assert adapter(torch.randn(2, 512, 1, 1)).shape == (2, 2048, 1, 1)


def test_small_cnns_have_no_imagenet_weights():
    with pytest.raises(ValueError, match="pretrained=False"):
        build_model("cnn_small", pretrained=True)
    with pytest.raises(ValueError, match="resnet18"):
        build_model("vgg11")


@pytest.fixture
def hub_dir(tmp_path):
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    yield tmp_path / "hub"
    torch.hub.set_dir(old)


def test_pretrained_weights_come_from_torch_hub_cache(hub_dir):
    """The real path: torchvision's weights enum -> hub cache file (written here, offline)."""
    torch.manual_seed(7)
    imagenet = build_model("resnet18", num_classes=1000)
    (hub_dir / "checkpoints").mkdir(parents=True)
    torch.save(imagenet.state_dict(), hub_dir / "checkpoints" / "resnet18-f37072fd.pth")
    model = build_model("resnet18", pretrained=True)
    assert torch.equal(model.layer3[0].conv1.weight, imagenet.layer3[0].conv1.weight)
    assert torch.equal(model.conv1.weight, imagenet.conv1.weight)
    assert model.fc.out_features == 10                       # new classifier for CIFAR-10


def test_missing_weights_offline_say_where_to_put_them(hub_dir, monkeypatch):
    def no_network(*args, **kwargs):
        raise OSError("network unreachable (blocked by the test)")
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    with pytest.raises(WeightsUnavailableError) as info:
        build_model("resnet50", pretrained=True)
    assert "resnet50-11ad3fa6.pth" in str(info.value) and str(hub_dir) in str(info.value)
    assert "pretrained=False" in str(info.value)
