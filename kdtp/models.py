"""Teacher and student networks, their sizes, feature taps and adapters.

Models come from torchvision (ImageNet weights through its weights enums), so a student
reads the same ``resnet18`` the rest of the field uses; the kit only swaps the classifier
and, on request, the stem. Intermediate maps are taken with torchvision's
``create_feature_extractor``: the models are never edited to expose features.
"""
from __future__ import annotations

import torch
from torch import nn
from torchvision import models as tvm
from torchvision.models.feature_extraction import create_feature_extractor

# arch -> (constructor, ImageNet weights enum member or None)
_RESNETS = {
    "resnet18": (tvm.resnet18, tvm.ResNet18_Weights.IMAGENET1K_V1),
    "resnet50": (tvm.resnet50, tvm.ResNet50_Weights.IMAGENET1K_V2),
}
# small CNNs for CPU-only labs: base width -> widths (base, 2b, 4b, 8b). The cnn_w<base> family
# (11_student_size) adds widths around them, so students span more than 10x in parameters.
_CNN_WIDTH = {"cnn_large": 24, "cnn_small": 12, "cnn_tiny": 6,
              "cnn_w4": 4, "cnn_w8": 8, "cnn_w16": 16, "cnn_w32": 32}
CNN_ARCHS = tuple(_CNN_WIDTH)
# airbench-style CNNs (the `cpu_air` recipe's teacher and student): widths of the three blocks
_AIR_WIDTHS = {"air_large": (32, 128, 128), "air_small": (16, 48, 64),
               "air_w4": (4, 12, 16), "air_w8": (8, 24, 32), "air_w24": (24, 72, 96)}
AIR_ARCHS = tuple(_AIR_WIDTHS)
# every plain CNN of the kit: stages layer1..layer3, a "pool" embedding, an "fc" classifier
PLAIN_CNN_ARCHS = CNN_ARCHS + AIR_ARCHS
ARCHS = tuple(_RESNETS) + PLAIN_CNN_ARCHS

# the map distilled in feature KD: the last stage before pooling
FEATURE_LAYER = {**{arch: "layer4" for arch in _RESNETS}, **{arch: "layer3" for arch in PLAIN_CNN_ARCHS}}


class WeightsUnavailableError(RuntimeError):
    """ImageNet weights are neither cached nor downloadable; the message says where to put them."""


def has_pretrained_weights(arch: str) -> bool:
    return arch in _RESNETS


def _conv_bn(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.GELU()]


class SmallCNN(nn.Sequential):
    """A plain VGG-style CNN (airbench's shape): conv-pool blocks, global max pool, linear.

    Fast on a CPU at 32 px and accurate for its size; its stages are named like a
    ResNet's (``layer1``..``layer3``, ``fc``) so feature taps read the same for both.
    """

    def __init__(self, base: int, num_classes: int = 10):
        w = [base, 2 * base, 4 * base, 8 * base]
        super().__init__()
        self.stem = nn.Sequential(*_conv_bn(3, w[0]))
        for i in range(3):
            block = [nn.Conv2d(w[i], w[i + 1], 3, padding=1, bias=False), nn.MaxPool2d(2),
                     nn.BatchNorm2d(w[i + 1]), nn.GELU(), *_conv_bn(w[i + 1], w[i + 1])]
            self.add_module(f"layer{i + 1}", nn.Sequential(*block))
        self.pool = nn.Sequential(nn.AdaptiveMaxPool2d(1), nn.Flatten())
        self.fc = nn.Linear(w[3], num_classes)


class Scale(nn.Module):
    """Multiplies by a constant: airbench's logit temperature, placed before the (bias-free)
    classifier, where it gives the same function and gradients as after it."""

    def __init__(self, factor: float):
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor


def _air_conv(c_in: int, c_out: int) -> nn.Conv2d:
    """3x3 conv whose first ``c_in`` filters start as the identity (airbench's dirac init):
    a fresh network passes its input through, and trains faster in a few epochs."""
    conv = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
    torch.nn.init.dirac_(conv.weight.data[:c_in])
    return conv


def _air_norm(channels: int) -> nn.BatchNorm2d:
    """airbench's BatchNorm: a shift but no trained scale, fast running statistics."""
    norm = nn.BatchNorm2d(channels, eps=1e-12, momentum=0.4)
    norm.weight.requires_grad_(False)
    return norm


class AirbenchCNN(nn.Sequential):
    """Keller Jordan's airbench94 network (github.com/KellerJordan/cifar10-airbench), narrowed.

    A frozen 2x2 "whitening" convolution (``init_whitening``: the eigenvectors of the training
    images' 2x2 patch covariance), then three conv-pool-BN-GELU-conv-BN-GELU blocks, global
    max pool and a bias-free linear classifier whose logits are scaled by 1/9. Stages are
    named as in ``SmallCNN`` (``stem``, ``layer1``..``layer3``, ``pool``, ``fc``), so feature
    taps, attention transfer, relations and channel pruning read both the same way.
    """

    WHITENING_IMAGES = 5000   # training images the whitening filters are estimated from (airbench)

    def __init__(self, widths: tuple[int, int, int], num_classes: int = 10):
        super().__init__()
        whiten = nn.Conv2d(3, 24, 2, padding=0, bias=True)
        whiten.weight.requires_grad_(False)
        nn.init.zeros_(whiten.bias)
        self.stem = nn.Sequential(whiten, nn.GELU())
        c_in = 24
        for i, c_out in enumerate(widths):
            self.add_module(f"layer{i + 1}", nn.Sequential(
                _air_conv(c_in, c_out), nn.MaxPool2d(2), _air_norm(c_out), nn.GELU(),
                _air_conv(c_out, c_out), _air_norm(c_out), nn.GELU()))
            c_in = c_out
        self.pool = nn.Sequential(nn.AdaptiveMaxPool2d(1), nn.Flatten(), Scale(1 / 9))
        self.fc = nn.Linear(c_in, num_classes, bias=False)

    def train_whitening_bias(self, trainable: bool) -> None:
        """Train the whitening layer's bias, or freeze it (airbench freezes it after 3 epochs:
        then no gradient flows below the first block, the costliest backward at 31x31)."""
        self.stem[0].bias.requires_grad_(trainable)

    @torch.no_grad()
    def init_whitening(self, images: torch.Tensor, eps: float = 5e-4) -> None:
        """Set the frozen first layer from normalised training ``images`` (N, 3, H, W): the 12
        eigenvectors of their 2x2 patch covariance, each +/- and divided by the square root
        of its eigenvalue, so the layer's 24 outputs are decorrelated (airbench)."""
        conv = self.stem[0]
        c, (h, w) = images.shape[1], conv.weight.shape[2:]
        patches = images.float().unfold(2, h, 1).unfold(3, w, 1).transpose(1, 3).reshape(-1, c, h, w)
        flat = patches.reshape(len(patches), -1).double()
        eigenvalues, eigenvectors = torch.linalg.eigh(flat.T @ flat / len(flat), UPLO="U")
        eigenvalues = eigenvalues.flip(0).view(-1, 1, 1, 1)
        eigenvectors = eigenvectors.T.reshape(c * h * w, c, h, w).flip(0)
        scaled = (eigenvectors / torch.sqrt(eigenvalues + eps)).to(conv.weight.dtype)
        conv.weight.copy_(torch.cat((scaled, -scaled)))


def needs_data_init(model: nn.Module) -> bool:
    """True for a network whose first layer is set from training images before training."""
    return isinstance(model, AirbenchCNN)


def load_imagenet_weights(arch: str) -> dict[str, torch.Tensor]:
    """The ImageNet state dict of ``arch`` via torchvision (cached in torch hub's folder)."""
    weights = _RESNETS[arch][1]
    try:
        return weights.get_state_dict(progress=True, check_hash=True)
    except Exception as exc:  # noqa: BLE001 - URLError, hash mismatch, truncated file
        file = weights.url.rsplit("/", 1)[-1]
        raise WeightsUnavailableError(
            f"ImageNet weights for {arch} ({file}) are not cached and could not be downloaded "
            f"({exc}). Copy {file} into {torch.hub.get_dir()}/checkpoints/, or use "
            "pretrained=False (the scratch runs), or smoke mode (KDTP_SMOKE=1).") from None


def build_model(arch: str, num_classes: int = 10, pretrained: bool = False,
                cifar_stem: bool = False) -> nn.Module:
    """A teacher or student network with a ``num_classes``-way classifier.

    ``pretrained`` loads torchvision's ImageNet weights (all but the new classifier).
    ``cifar_stem`` swaps the 7x7/2 conv + max-pool for a 3x3/1 conv: at 32 px the
    ImageNet stem shrinks layer4 to 1x1 and throws away most spatial detail.
    """
    if arch in _CNN_WIDTH:
        if pretrained:
            raise ValueError(f"{arch} has no ImageNet weights: use pretrained=False "
                             f"(pretrained weights exist for {', '.join(_RESNETS)})")
        return SmallCNN(_CNN_WIDTH[arch], num_classes)
    if arch in _AIR_WIDTHS:
        if pretrained:
            raise ValueError(f"{arch} has no ImageNet weights: use pretrained=False "
                             f"(pretrained weights exist for {', '.join(_RESNETS)})")
        return AirbenchCNN(_AIR_WIDTHS[arch], num_classes)
    if arch not in _RESNETS:
        raise ValueError(f"unknown arch {arch!r}: choose one of {', '.join(ARCHS)}")
    ctor, _ = _RESNETS[arch]
    # zero-init of each block's last BN makes a fresh ResNet start as a shallow one:
    # from scratch it learns markedly faster in the first epochs (Goyal et al. 2017)
    model = ctor(weights=None, zero_init_residual=not pretrained)
    if pretrained:
        model.load_state_dict(load_imagenet_weights(arch))
    if num_classes != model.fc.out_features:
        model.fc = nn.Linear(model.fc.in_features, num_classes)
    if cifar_stem:
        model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    return model


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def size_on_disk_mb(model: nn.Module) -> float:
    """Bytes of the fp32 state dict, in MB: what a deployed checkpoint weighs."""
    return sum(t.numel() * t.element_size() for t in model.state_dict().values()) / 1e6


def feature_tap(model: nn.Module, layers: list[str] | tuple[str, ...]) -> nn.Module:
    """A view of ``model`` whose forward returns ``{layer: map, ..., "logits": out}``.

    Built with torchvision's ``create_feature_extractor``; it shares the model's
    parameters, so training through the tap trains the model itself.
    """
    nodes = {layer: layer for layer in layers}
    nodes["fc"] = "logits"
    return create_feature_extractor(model, return_nodes=nodes)


@torch.no_grad()
def feature_shape(model: nn.Module, layer: str, image_size: int = 32) -> tuple[int, ...]:
    """(C, H, W) of ``layer``'s output for one ``image_size`` input (probe forward)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = feature_tap(model, [layer])(torch.zeros(1, 3, image_size, image_size, device=device))
    model.train(was_training)
    return tuple(out[layer].shape[1:])


def make_adapter(student_channels: int, teacher_channels: int) -> nn.Module:
    """1x1 conv (+BN) lifting the student's map to the teacher's width (512 -> 2048).

    Trained with the student, dropped for evaluation: it only exists so the two maps
    can be compared, and the deployed student stays a plain ResNet18.
    """
    return nn.Sequential(nn.Conv2d(student_channels, teacher_channels, 1, bias=False),
                         nn.BatchNorm2d(teacher_channels))
