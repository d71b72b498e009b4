"""3D ResNet backbone: shapes per depth and MedicalNet checkpoint compatibility."""

from __future__ import annotations

import pytest
import torch

from mmfusion.errors import ConfigError
from mmfusion.model.backbone import RESNET_SPECS, ResNet3D, load_medicalnet


def medicalnet_keys(depth: int, width: int = 64) -> dict[str, tuple[int, ...]]:
    """Key -> shape of a MedicalNet checkpoint, written from Tencent/MedicalNet resnet.py.

    Independent of our module: stem, `_make_layer` (downsample only for shortcut 'B'),
    and the `conv_seg` head that MedicalNet stores too.
    """
    kind, layers, shortcut = RESNET_SPECS[depth]
    expansion = 1 if kind == "basic" else 4
    keys: dict[str, tuple[int, ...]] = {}

    def bn(prefix: str, c: int) -> None:
        for name in ("weight", "bias", "running_mean", "running_var"):
            keys[f"{prefix}.{name}"] = (c,)
        keys[f"{prefix}.num_batches_tracked"] = ()

    keys["conv1.weight"] = (width, 1, 7, 7, 7)
    bn("bn1", width)
    inplanes = width
    for i, (planes, blocks, stride) in enumerate(
        zip((width, 2 * width, 4 * width, 8 * width), layers, (1, 2, 1, 1), strict=True),
        start=1,
    ):
        for j in range(blocks):
            p = f"layer{i}.{j}"
            if kind == "basic":
                keys[f"{p}.conv1.weight"] = (planes, inplanes, 3, 3, 3)
                bn(f"{p}.bn1", planes)
                keys[f"{p}.conv2.weight"] = (planes, planes, 3, 3, 3)
                bn(f"{p}.bn2", planes)
            else:
                keys[f"{p}.conv1.weight"] = (planes, inplanes, 1, 1, 1)
                bn(f"{p}.bn1", planes)
                keys[f"{p}.conv2.weight"] = (planes, planes, 3, 3, 3)
                bn(f"{p}.bn2", planes)
                keys[f"{p}.conv3.weight"] = (planes * 4, planes, 1, 1, 1)
                bn(f"{p}.bn3", planes * 4)
            needs_down = j == 0 and (stride != 1 or inplanes != planes * expansion)
            if needs_down and shortcut == "B":
                keys[f"{p}.downsample.0.weight"] = (planes * expansion, inplanes, 1, 1, 1)
                bn(f"{p}.downsample.1", planes * expansion)
            inplanes = planes * expansion
    keys["conv_seg.0.weight"] = (inplanes, 32, 2, 2, 2)
    keys["conv_seg.0.bias"] = (32,)
    return keys


def fake_checkpoint(depth: int, with_counters: bool = True) -> dict:
    gen = torch.Generator().manual_seed(depth)
    state = {}
    for key, shape in medicalnet_keys(depth).items():
        if key.endswith("num_batches_tracked"):
            if with_counters:
                state[f"module.{key}"] = torch.tensor(7)
            continue
        state[f"module.{key}"] = torch.randn(shape, generator=gen)
    return {"state_dict": state, "epoch": 200}


@pytest.mark.parametrize("depth", [10, 18, 34, 50])
def test_medicalnet_checkpoint_loads_strictly(depth, tmp_path):
    path = tmp_path / f"resnet_{depth}_23dataset.pth"
    ckpt = fake_checkpoint(depth)
    torch.save(ckpt, path)
    model = ResNet3D(depth)
    load_medicalnet(model, path)
    state = model.state_dict()
    expected = {k.removeprefix("module."): v for k, v in ckpt["state_dict"].items()
                if ".conv_seg." not in k and not k.startswith("module.conv_seg")}
    assert set(state) == set(expected)
    for key, value in expected.items():
        assert torch.equal(state[key], value), key


def test_checkpoint_without_bn_counters_loads(tmp_path):
    path = tmp_path / "old.pth"
    torch.save(fake_checkpoint(10, with_counters=False), path)
    load_medicalnet(ResNet3D(10), path)


def test_wrong_depth_and_missing_file_raise_config_error(tmp_path):
    path = tmp_path / "resnet_10.pth"
    torch.save(fake_checkpoint(10), path)
    with pytest.raises(ConfigError, match="depth-18"):
        load_medicalnet(ResNet3D(18), path)
    with pytest.raises(ConfigError, match="not found"):
        load_medicalnet(ResNet3D(18), tmp_path / "absent.pth")


@pytest.mark.parametrize(
    ("depth", "width", "size", "channels"),
    [(10, 8, (12, 20, 20), 64), (18, 8, (9, 16, 17), 64), (34, 4, (8, 16, 16), 32),
     (50, 4, (8, 16, 16), 128)],
)
def test_shapes(depth, width, size, channels):
    model = ResNet3D(depth, base_width=width)
    fmap, emb = model(torch.randn(2, 1, *size))
    assert model.out_channels == channels
    assert fmap.shape == (2, channels, *ResNet3D.feature_size(size))
    assert emb.shape == (2, channels)
    assert torch.allclose(emb, fmap.mean(dim=(2, 3, 4)))


def test_unknown_depth():
    with pytest.raises(ConfigError, match=r"unsupported ResNet depth 101.*\[10, 18, 34, 50\]"):
        ResNet3D(101)


def test_stem_gradient_is_finite_and_exact_on_small_patches():
    """Regression: oneDNN's conv3d weight gradient breaks on e.g. 6×10×10 inputs."""
    torch.manual_seed(0)
    model = ResNet3D(10, base_width=4).double()
    for _ in range(20):
        x = torch.randn(2, 1, 6, 10, 10, dtype=torch.double)
        grad = torch.autograd.grad(model(x)[1].sum(), model.conv1.weight)[0]
        assert torch.isfinite(grad).all()
    with torch.backends.mkldnn.flags(enabled=False):
        y = torch.nn.functional.conv3d(x, model.conv1.weight, None, 2, 3)
        y = model.maxpool(model.relu(model.bn1(y)))
        y = model.layer4(model.layer3(model.layer2(model.layer1(y))))
        ref = torch.autograd.grad(y.mean(dim=(2, 3, 4)).sum(), model.conv1.weight)[0]
    assert torch.allclose(grad, ref)


@pytest.mark.parametrize("size", [(5, 9, 9), (6, 10, 10), (7, 11, 11), (8, 24, 24),
                                  (20, 48, 48)])
def test_stem_weight_gradient_matches_float64_reference(size):
    """The float32 stem weight gradient (a forward conv) equals ATen's native float64 one."""
    torch.manual_seed(0)
    model = ResNet3D(10, base_width=4)
    x = torch.randn(3, 1, *size)
    out = model._stem_conv(x)
    g = torch.randn_like(out)
    grad = torch.autograd.grad(out, model.conv1.weight, g)[0]
    with torch.backends.mkldnn.flags(enabled=False):
        ref = torch.ops.aten.convolution_backward(
            g.double(), x.double(), model.conv1.weight.double(), None, [2, 2, 2], [3, 3, 3],
            [1, 1, 1], False, [0, 0, 0], 1, [False, True, False])[1]
    assert torch.isfinite(grad).all()
    assert torch.allclose(grad.double(), ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())
