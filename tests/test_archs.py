"""The architecture registry: names -> modules (seed, torchvision, timm, pkg:factory, file.py:Cls).

Real builders only (torchvision and timm are dev dependencies); models are small or built once.
Every refusal must be a CkptError with a one-line message that names the argument or the name.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import run_cli, run_json
from torch import nn

from ckpt_tool import archs
from ckpt_tool.archs import available, build, construct, parse_arch_args, resolve
from ckpt_tool.errors import ArchBuildFailed, ArchNotFound, InputNotFound, UsageError
from ckpt_tool.keys import natural_key
from ckpt_tool.seed_models import ConvNet, ResNet34, SigmoidNet

MODEL_FILE = """
from torch import nn


class Tiny(nn.Module):
    def __init__(self, num_classes=10, width=4):
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3)
        self.head = nn.Linear(width, num_classes)


def make_plain(width=4):
    return nn.Sequential(nn.Conv2d(3, width, 3))


def not_a_model():
    return 42


VALUE = 3
"""


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("archs") / "user_models.py"
    path.write_text(MODEL_FILE)
    return path


# --- seed models --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "cls"),
    [("convnet", ConvNet), ("seed_resnet34", ResNet34), ("sigmoid_net", SigmoidNet)],
)
def test_seed_names_resolve_to_seed_classes(name: str, cls: type) -> None:
    spec = resolve(name)
    assert (spec.source, spec.name, spec.factory) == ("seed", name, cls)
    assert resolve(f"seed/{name}").factory is cls


def test_seed_shortcuts_map_to_each_constructor() -> None:
    conv = build("convnet", num_classes=5, in_chans=3)
    assert conv.fc.out_features == 5 and conv.layer1[0].in_channels == 3
    res = construct("seed_resnet34", num_classes=4, in_chans=1)
    assert res.model.fc.out_features == 4 and res.model.pre[0].in_channels == 1
    assert (res.num_classes, res.in_chans, res.input_conv) == (4, 1, None)
    m = build("mlp", {"hidden": 32}, num_classes=3)
    assert [m.fc1.out_features, m.fc2.out_features] == [32, 3]
    s = build("sigmoid_net", {"in_features": 4}, num_classes=2)
    assert s.fc[0].in_features == 4 and s.fc[-1].out_features == 2


@pytest.mark.parametrize("name", ["mlp", "sigmoid_net"])
def test_in_chans_on_a_feature_model_names_its_argument(name: str) -> None:
    with pytest.raises(ArchBuildFailed, match="in_features"):
        build(name, in_chans=3)


def test_seed_is_set_before_building() -> None:
    a = build("convnet", seed=7).state_dict()
    b = build("convnet", seed=7).state_dict()
    c = build("convnet", seed=8).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["fc.weight"], c["fc.weight"])


# --- torchvision and timm -----------------------------------------------------------------------


def test_bare_name_in_both_zoos_resolves_to_torchvision_and_says_how_to_get_timm() -> None:
    spec = resolve("resnet18")
    assert spec.source == "torchvision" and spec.label == "torchvision/resnet18"
    assert any("timm/resnet18" in n for n in spec.notes)
    assert resolve("torchvision/resnet18").notes == []
    timm_spec = resolve("timm/resnet18")
    assert timm_spec.source == "timm" and timm_spec.notes == []
    assert resolve("resnet18d").source == "timm"  # only in timm


def test_builders_never_load_weights() -> None:
    assert resolve("resnet18").factory.keywords == {"weights": None}  # type: ignore[attr-defined]
    detection = resolve("fasterrcnn_resnet50_fpn").factory
    assert detection.keywords == {"weights": None, "weights_backbone": None}  # type: ignore[attr-defined]
    assert resolve("timm/resnet18").factory.keywords == {"pretrained": False}  # type: ignore[attr-defined]
    for name, arg in (("resnet18", "weights"), ("timm/resnet18", "pretrained")):
        with pytest.raises(UsageError, match=f"--arch-arg {arg}: building never loads weights"):
            build(name, {arg: True})


def test_torchvision_num_classes_and_first_conv_adapted_for_in_chans() -> None:
    built = construct("resnet18", num_classes=3, in_chans=1, seed=0)
    model = built.model
    assert model.fc.out_features == 3
    assert built.input_conv == "conv1" and model.conv1.in_channels == 1
    assert any("rebuilt its first convolution conv1 for 1 input" in n for n in built.notes)
    assert model.conv1.kernel_size == (7, 7) and model.conv1.stride == (2, 2)
    assert model.conv1.bias is None
    model.eval()
    with torch.no_grad():
        assert model(torch.zeros(1, 1, 32, 32)).shape == (1, 3)


def test_timm_takes_num_classes_and_in_chans_itself() -> None:
    built = construct("timm/resnet18", num_classes=2, in_chans=4)
    assert built.model.conv1.in_channels == 4 and built.model.fc.out_features == 2
    assert built.input_conv is None and built.kwargs == {"num_classes": 2, "in_chans": 4}


def test_constructor_rejecting_an_argument_names_it() -> None:
    with pytest.raises(ArchBuildFailed, match=r"rejected argument 'depth'.*ResNet"):
        build("resnet18", {"depth": 3})
    with pytest.raises(ArchBuildFailed, match=r"convnet takes no argument 'depth' \(it takes: "):
        build("convnet", {"depth": 3})


def test_shortcut_and_arch_arg_for_the_same_thing_conflict() -> None:
    with pytest.raises(UsageError, match="either --num-classes or --arch-arg num_classes"):
        build("convnet", {"num_classes": 3}, num_classes=4)


# --- unknown names ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "close"),
    [
        ("resnet343", "resnet34"),
        ("convnett", "convnet"),
        ("torchvision/resnet343", "torchvision/resnet34"),
    ],
)
def test_unknown_name_lists_close_matches(name: str, close: str) -> None:
    with pytest.raises(ArchNotFound, match="unknown architecture") as info:
        resolve(name)
    assert close in info.value.message and "ckpt archs" in info.value.message
    assert "\n" not in info.value.message


def test_hub_names_are_refused() -> None:
    with pytest.raises(ArchNotFound, match="hub names"):
        resolve("timm/hf-hub:timm/resnet18.a1_in1k")


# --- module:factory and file.py:Class -----------------------------------------------------------


def test_package_module_factory() -> None:
    spec = resolve("ckpt_tool.seed_models:ConvNet")
    assert spec.source == "module" and spec.factory is ConvNet and spec.tag == "ConvNet"
    model = build("torchvision.models:resnet18", num_classes=3)
    assert model.fc.out_features == 3
    with pytest.raises(ArchNotFound, match="cannot be imported"):
        resolve("no_such_package_xyz.models:Net")
    with pytest.raises(ArchNotFound, match="close matches: ConvNet"):
        resolve("ckpt_tool.seed_models:ConvNett")


def test_file_class_builds_with_shortcuts(model_file: Path) -> None:
    built = construct(f"{model_file}:Tiny", {"width": 6}, num_classes=3)
    assert built.spec.source == "file" and built.spec.tag == "Tiny"
    assert built.model.head.out_features == 3 and built.model.conv.out_channels == 6
    # --in-chans on a factory without in_chans: its first convolution is rebuilt
    adapted = construct(f"{model_file}:Tiny", in_chans=1)
    assert adapted.input_conv == "conv" and adapted.model.conv.in_channels == 1


def test_file_refusals(model_file: Path, tmp_path: Path) -> None:
    with pytest.raises(ArchBuildFailed, match=r"takes no num_classes argument \(it takes: width\)"):
        build(f"{model_file}:make_plain", num_classes=3)
    with pytest.raises(ArchNotFound, match="close matches: Tiny"):
        resolve(f"{model_file}:Tin")
    with pytest.raises(ArchNotFound, match="not a class or factory"):
        resolve(f"{model_file}:VALUE")
    with pytest.raises(ArchBuildFailed, match=r"returned a int, not a torch\.nn\.Module"):
        build(f"{model_file}:not_a_model")
    with pytest.raises(InputNotFound, match="no such Python file"):
        resolve(f"{tmp_path / 'missing.py'}:Net")
    broken = tmp_path / "broken.py"
    broken.write_text("raise RuntimeError('boom')\n")
    with pytest.raises(ArchBuildFailed, match=r"running it failed \(RuntimeError: boom\)"):
        resolve(f"{broken}:Net")


def test_file_can_import_its_neighbours(tmp_path: Path) -> None:
    (tmp_path / "blocks_for_arch_test.py").write_text(
        "from torch import nn\n\ndef block():\n    return nn.Linear(2, 2)\n"
    )
    (tmp_path / "net.py").write_text(
        textwrap.dedent(
            """
            from torch import nn
            from blocks_for_arch_test import block

            def Net():
                return nn.Sequential(block())
            """
        )
    )
    assert isinstance(build(f"{tmp_path / 'net.py'}:Net")[0], nn.Linear)


# --- arguments ----------------------------------------------------------------------------------


def test_parse_arch_args_literals_else_strings() -> None:
    got = parse_arch_args(["num_classes=4", "act=relu", "sizes=(1, 2)", "drop=0.5", "b=True"])
    assert got == {"num_classes": 4, "act": "relu", "sizes": (1, 2), "drop": 0.5, "b": True}
    assert parse_arch_args(["name=a=b"]) == {"name": "a=b"}
    for bad in ("num_classes", "1x=3", "=3"):
        with pytest.raises(UsageError, match="expected NAME=VALUE"):
            parse_arch_args([bad])
    with pytest.raises(UsageError, match="given twice"):
        parse_arch_args(["a=1", "a=2"])


# --- listing ------------------------------------------------------------------------------------


def test_available_lists_every_source_naturally_sorted() -> None:
    data = available()
    assert data["seed"]["names"] == ["convnet", "mlp", "seed_resnet34", "sigmoid_net"]
    for source in ("torchvision", "timm"):
        names = data[source]["names"]
        assert data[source]["installed"] and data[source]["count"] == len(names) > 100
        assert names == sorted(names, key=natural_key)
    tv = data["torchvision"]["names"]
    assert tv.index("resnet18") < tv.index("resnet101")
    assert archs.torchvision_names() == tuple(tv)


def test_archs_cli_json_and_filter() -> None:
    code, data = run_json(["archs", "--filter", "resnet1*"])
    assert code == 0
    assert set(data) == {"seed", "torchvision", "timm"}
    assert data["torchvision"]["names"] == ["resnet18", "resnet101", "resnet152"]
    assert all(n.startswith("resnet1") for n in data["timm"]["names"])
    assert data["seed"] == {"installed": True, "names": [], "count": 0}
    result = run_cli(["archs", "--filter", "conv*"])
    assert result.exit_code == 0
    assert "convnet" in result.stdout and "torchvision/NAME" in result.stdout
    json.dumps(data)


def test_transplant_cli_unknown_arch_is_one_line(tmp_path: Path) -> None:
    src = tmp_path / "m.pth"
    torch.save(ConvNet().state_dict(), src)
    result = run_cli(["transplant", src, "--into", "resnet343"])
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr.count("\n") == 1
    assert "resnet343: unknown architecture; close matches: resnet34" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pth"]
