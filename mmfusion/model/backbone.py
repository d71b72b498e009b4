"""3D ResNet backbone with MedicalNet (Med3D) state-dict layout (paper §2.1, ref. [1]).

The architecture follows Tencent/MedicalNet `models/resnet.py`: a 7×7×7 stride-2 stem,
max-pool, then four residual stages where `layer3` and `layer4` keep stride 1 and use
dilation 2 and 4 (the feature map is 1/8 of the input). Parameter names match MedicalNet's
checkpoints (`conv1`, `bn1`, `layer{1..4}.{i}.conv{1,2,3}`, `...downsample.{0,1}`), so
`resnet_{depth}_23dataset.pth` loads with strict key matching once the `module.` prefix of
its DataParallel origin is stripped. MedicalNet's segmentation head (`conv_seg`) is not
part of the backbone and is dropped on load.

Shortcut types are MedicalNet's published ones: 'B' (1×1×1 conv + BN) for depth 10 and 50,
'A' (parameter-free: strided identity, zero-padded channels) for depth 18 and 34.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from mmfusion.errors import ConfigError

# depth -> (block kind, blocks per stage, MedicalNet shortcut type)
RESNET_SPECS: dict[int, tuple[str, tuple[int, int, int, int], str]] = {
    10: ("basic", (1, 1, 1, 1), "B"),
    18: ("basic", (2, 2, 2, 2), "A"),
    34: ("basic", (3, 4, 6, 3), "A"),
    50: ("bottleneck", (3, 4, 6, 3), "B"),
}


def _conv3(in_planes: int, out_planes: int, stride: int = 1, dilation: int = 1) -> nn.Conv3d:
    return nn.Conv3d(in_planes, out_planes, kernel_size=3, stride=stride, padding=dilation,
                     dilation=dilation, bias=False)


class ZeroPadShortcut(nn.Module):
    """Shortcut type 'A': strided identity with zero channels appended (no parameters)."""

    def __init__(self, out_planes: int, stride: int) -> None:
        super().__init__()
        self.out_planes = out_planes
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x[:, :, :: self.stride, :: self.stride, :: self.stride]
        return F.pad(out, (0, 0, 0, 0, 0, 0, 0, self.out_planes - out.shape[1]))


def conv3d_weight_grad(x: torch.Tensor, grad_out: torch.Tensor, kernel: tuple[int, ...],
                       stride: tuple[int, ...], padding: tuple[int, ...]) -> torch.Tensor:
    """Weight gradient of a bias-free, undilated, ungrouped conv3d, as one forward conv3d.

    dL/dW[o, i, k] = Σ_{b, p} g[b, o, p] · x_pad[b, i, stride·p + k]: a correlation of the
    padded input (batch and channels swapped) with the output gradient used as the kernel,
    dilated by the stride. It runs on the (correct, fast) forward convolution, about 4× faster
    than ATen's native vol2col backward for the 7×7×7 stem.
    """
    pd, ph, pw = padding
    xp = F.pad(x, (pw, pw, ph, ph, pd, pd)).transpose(0, 1)  # (C_in, B, D', H', W')
    corr = F.conv3d(xp, grad_out.transpose(0, 1), None, 1, 0, stride)  # (C_in, C_out, >=k)
    kd, kh, kw = kernel
    return corr[:, :, :kd, :kh, :kw].transpose(0, 1).contiguous()


class _NativeBackwardConv3d(torch.autograd.Function):
    """Bias-free conv3d whose backward avoids oneDNN's convolution backward kernels.

    oneDNN (mkldnn) in torch 2.2.1 computes the weight gradient of the 7×7×7 stride-2 stem
    conv with 1–2 input channels wrongly for some small inputs (NaNs, even heap corruption;
    seen with 5×9×9, 6×10×10 and 7×11×11 patches). The forward stays on oneDNN (correct and
    fast). In the backward the weight gradient is a forward convolution
    (`conv3d_weight_grad`); the input gradient, rarely needed (images do not require grad),
    runs on ATen's native CPU kernel. The backend is chosen when backward runs, hence a
    Function rather than a flag around the forward.
    """

    @staticmethod
    def forward(ctx, x, weight, stride, padding):  # type: ignore[override]
        ctx.save_for_backward(x, weight)
        ctx.conf = (list(stride), list(padding))
        return F.conv3d(x, weight, None, stride, padding)

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        x, weight = ctx.saved_tensors
        stride, padding = ctx.conf
        grad_x = None
        if ctx.needs_input_grad[0]:
            with torch.backends.mkldnn.flags(enabled=False):
                grad_x = torch.ops.aten.convolution_backward(
                    grad_out.contiguous(), x, weight, None, stride, padding, [1, 1, 1], False,
                    [0, 0, 0], 1, [True, False, False])[0]
        grad_w = conv3d_weight_grad(x, grad_out, tuple(weight.shape[2:]), tuple(stride),
                                    tuple(padding))
        return grad_x, grad_w, None, None


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, dilation: int = 1,
                 downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = _conv3(inplanes, planes, stride, dilation)
        self.bn1 = nn.BatchNorm3d(planes)
        self.conv2 = _conv3(planes, planes, dilation=dilation)
        self.bn2 = nn.BatchNorm3d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + residual)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, dilation: int = 1,
                 downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(inplanes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm3d(planes)
        self.conv2 = _conv3(planes, planes, stride, dilation)
        self.bn2 = nn.BatchNorm3d(planes)
        self.conv3 = nn.Conv3d(planes, planes * 4, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm3d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + residual)


class ResNet3D(nn.Module):
    """MedicalNet 3D ResNet without the segmentation head.

    Args:
        depth: 10, 18, 34 or 50.
        base_width: channels of the stem (64 in MedicalNet; smaller only for fast demos,
            and then pretrained weights cannot be loaded).
        shortcut_type: 'A' or 'B'; default MedicalNet's choice for `depth`.
        in_channels: input channels (1 for CT).

    Forward: `(B, C_in, D, H, W)` -> `(feature_map (B, C, D/8, H/8, W/8), embedding (B, C))`
    where `C = out_channels` (8 × base_width × block expansion).
    """

    def __init__(self, depth: int = 18, base_width: int = 64, shortcut_type: str | None = None,
                 in_channels: int = 1) -> None:
        super().__init__()
        if depth not in RESNET_SPECS:
            raise ConfigError(f"unsupported ResNet depth {depth}",
                              fix=f"use one of {sorted(RESNET_SPECS)}")
        kind, layers, default_shortcut = RESNET_SPECS[depth]
        self.depth = depth
        self.shortcut_type = shortcut_type or default_shortcut
        block = BasicBlock if kind == "basic" else Bottleneck
        w = base_width
        self.inplanes = w
        self.conv1 = nn.Conv3d(in_channels, w, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm3d(w)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool3d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, w, layers[0])
        self.layer2 = self._make_layer(block, 2 * w, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 4 * w, layers[2], dilation=2)
        self.layer4 = self._make_layer(block, 8 * w, layers[3], dilation=4)
        self.out_channels = 8 * w * block.expansion
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm3d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        # channels-last (NDHWC) weights and inputs: oneDNN's 3D convolutions, pooling and
        # batch norm avoid layout reorders on every call (about 12 % less backbone time on
        # CPU at the demo shapes); numerically the same convolutions.
        self.to(memory_format=torch.channels_last_3d)

    def _make_layer(self, block: type[BasicBlock] | type[Bottleneck], planes: int, blocks: int,
                    stride: int = 1, dilation: int = 1) -> nn.Sequential:
        downsample: nn.Module | None = None
        out_planes = planes * block.expansion
        if stride != 1 or self.inplanes != out_planes:
            if self.shortcut_type == "A":
                downsample = ZeroPadShortcut(out_planes, stride)
            else:
                downsample = nn.Sequential(
                    nn.Conv3d(self.inplanes, out_planes, kernel_size=1, stride=stride,
                              bias=False),
                    nn.BatchNorm3d(out_planes),
                )
        layers = [block(self.inplanes, planes, stride, dilation, downsample)]
        self.inplanes = out_planes
        layers += [block(self.inplanes, planes, dilation=dilation) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    @staticmethod
    def feature_size(spatial: tuple[int, ...]) -> tuple[int, ...]:
        """Spatial size of the feature map for an input of size `spatial` (three halvings)."""
        out = []
        for n in spatial:
            for _ in range(3):  # stem conv, max-pool, layer2
                n = (n - 1) // 2 + 1
            out.append(n)
        return tuple(out)

    def _stem_conv(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu" and torch.is_grad_enabled() and self.conv1.weight.requires_grad:
            return _NativeBackwardConv3d.apply(x, self.conv1.weight, self.conv1.stride,
                                               self.conv1.padding)
        return self.conv1(x)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`(B, C_in, D, H, W)` -> feature map `(B, C, d, h, w)`, pooled `(B, C)`."""
        x = x.contiguous(memory_format=torch.channels_last_3d)
        x = self.maxpool(self.relu(self.bn1(self._stem_conv(x))))
        fmap = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return fmap, fmap.mean(dim=(2, 3, 4))


def medicalnet_state_dict(raw: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Normalise a MedicalNet checkpoint: unwrap `state_dict`, strip `module.`, drop `conv_seg`."""
    if "state_dict" in raw and isinstance(raw["state_dict"], Mapping):
        raw = raw["state_dict"]
    out: dict[str, torch.Tensor] = {}
    for key, value in raw.items():
        key = key.removeprefix("module.")
        if key.startswith("conv_seg."):
            continue
        out[key] = value
    return out


def load_medicalnet(model: ResNet3D, path: str | os.PathLike[str]) -> None:
    """Load MedicalNet weights from a local file into `model` (strict key matching).

    Raises:
        ConfigError: the file is missing or its keys/shapes do not fit `model`.
    """
    if not os.path.isfile(path):
        raise ConfigError("pretrained backbone weights not found", path=str(path),
                          fix="set `model.pretrained` to a local MedicalNet "
                              "resnet_{depth}_23dataset.pth, or to an empty string")
    raw = torch.load(path, map_location="cpu", weights_only=True)
    state = medicalnet_state_dict(raw)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ConfigError(
            f"weights do not fit a depth-{model.depth} ResNet (shortcut "
            f"{model.shortcut_type}, out_channels {model.out_channels}): "
            f"{str(err).splitlines()[0]}",
            path=str(path),
            fix="match `model.depth` to the file (resnet_{depth}_23dataset.pth) and keep "
                "`model.base_width: 64`",
        ) from err
