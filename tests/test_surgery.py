"""Unit tests for the pure key-surgery plans: strip_plan, add_plan, regex_plan, rename_metadata.

No files, no CLI: plans are data over key lists, so every rule and every refusal is checked
here directly. `_metadata` renaming is compared with what torch itself does
(`consume_prefix_in_state_dict_if_present`) on real wrapped models.
"""

from __future__ import annotations

import copy
from collections import OrderedDict

import pytest
import torch
from torch import nn
from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present

from ckpt_tool.errors import SurgeryError, UsageError
from ckpt_tool.seed_models import ConvNet, SigmoidNet, mlp
from ckpt_tool.surgery.rename import add_plan, regex_plan, rename_metadata, strip_plan

KEYS = ["fc.0.weight", "fc.0.bias", "fc.1.weight", "fc.1.bias"]


def renamed(plan) -> list[str]:
    return [new for _, new in plan.pairs]


# --- strip_plan ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "prefix",
    ["module.", "_orig_mod.", "module._orig_mod.", "_orig_mod.module.", "module.module."],
)
def test_strip_default_removes_every_wrapper_chain(prefix: str) -> None:
    plan = strip_plan([prefix + k for k in KEYS])
    assert renamed(plan) == KEYS
    assert len(plan.changed) == len(KEYS)
    assert plan.unmatched == []
    groups = plan.groups()
    assert len(groups) == 1 and groups[0]["count"] == len(KEYS)
    assert prefix in groups[0]["rule"]  # says what it removed
    assert groups[0]["examples"][0] == {"from": prefix + KEYS[0], "to": KEYS[0]}


def test_strip_keeps_key_order_and_inner_occurrences() -> None:
    keys = ["module.b.module.x", "module.a._orig_mod.y", "module.c"]
    plan = strip_plan(keys)
    assert renamed(plan) == ["b.module.x", "a._orig_mod.y", "c"]


def test_strip_default_mixed_wrapper_chains_are_all_stripped() -> None:
    keys = ["module.a", "_orig_mod.b", "module._orig_mod.c"]
    plan = strip_plan(keys)
    assert renamed(plan) == ["a", "b", "c"]
    rules = {g["rule"] for g in plan.groups()}
    assert len(rules) == 3


def test_strip_does_not_touch_lookalike_prefixes() -> None:
    # "modules." and "module_" are not the wrapper prefix
    with pytest.raises(SurgeryError, match="nothing to strip"):
        strip_plan(["modules.a", "module_b.c"])


def test_strip_custom_prefix_lightning() -> None:
    keys = ["model." + k for k in KEYS]
    plan = strip_plan(keys, "model.")
    assert renamed(plan) == KEYS
    assert plan.groups()[0]["rule"].startswith("model.")


def test_strip_custom_prefix_only_that_prefix() -> None:
    keys = ["model.module.a", "model.b"]
    assert renamed(strip_plan(keys, "model.")) == ["module.a", "b"]


def test_strip_partial_refused_with_examples_of_both() -> None:
    keys = ["module.a.weight", "module.b.weight", "c.weight", "d.weight"]
    with pytest.raises(SurgeryError, match=r"--partial") as info:
        strip_plan(keys)
    msg = str(info.value)
    assert "module.a.weight" in msg and "c.weight" in msg
    assert "2 of 4" in msg


def test_strip_partial_custom_prefix_refused() -> None:
    with pytest.raises(SurgeryError, match=r"model\..*--partial"):
        strip_plan(["model.a", "b"], "model.")


def test_strip_partial_allowed_with_flag() -> None:
    keys = ["module.a", "b", "_orig_mod.c"]
    plan = strip_plan(keys, partial=True)
    assert renamed(plan) == ["a", "b", "c"]
    assert len(plan.changed) == 2
    assert any("1 keys without" in n or "left as they are" in n for n in plan.notes)


def test_strip_partial_collision_is_an_error_naming_both() -> None:
    with pytest.raises(SurgeryError, match=r"'module\.a'.*'a'|'a'.*'module\.a'"):
        strip_plan(["module.a", "a"], partial=True)


def test_strip_nothing_to_strip() -> None:
    with pytest.raises(SurgeryError, match="nothing to strip"):
        strip_plan(KEYS)


def test_strip_lightning_hint() -> None:
    with pytest.raises(SurgeryError, match=r"--prefix model\."):
        strip_plan(["model." + k for k in KEYS])


def test_strip_empty_prefix_is_usage_error() -> None:
    with pytest.raises(UsageError, match="empty"):
        strip_plan(KEYS, "")


def test_strip_would_leave_empty_key() -> None:
    with pytest.raises(SurgeryError, match="empty key"):
        strip_plan(["model.", "model.a"], "model.")


# --- add_plan -----------------------------------------------------------------------------------


def test_add_default_module() -> None:
    plan = add_plan(KEYS)
    assert renamed(plan) == ["module." + k for k in KEYS]
    assert plan.groups()[0]["count"] == len(KEYS)


def test_add_custom_prefix() -> None:
    assert renamed(add_plan(KEYS, "model.")) == ["model." + k for k in KEYS]


def test_add_refuses_when_already_present() -> None:
    with pytest.raises(SurgeryError, match=r"already start with 'module\.'"):
        add_plan(["module.a", "b"])


def test_add_refuses_all_present_custom() -> None:
    with pytest.raises(SurgeryError, match=r"2 of 2 keys already"):
        add_plan(["model.a", "model.b"], "model.")


def test_add_empty_prefix_is_usage_error() -> None:
    with pytest.raises(UsageError):
        add_plan(KEYS, "")


def test_add_then_strip_roundtrip() -> None:
    keys = ["a.weight", "b.bias", "_orig_mod_like.c"]
    added = renamed(add_plan(keys))
    assert renamed(strip_plan(added)) == keys


# --- regex_plan ---------------------------------------------------------------------------------


def test_regex_applied_in_order() -> None:
    keys = ["backbone.fc.weight", "backbone.conv.weight"]
    plan = regex_plan(keys, [r"^backbone\.=", r"^fc\.=head."])
    assert renamed(plan) == ["head.weight", "conv.weight"]
    # order matters: the second map first would not match anything
    plan2 = regex_plan(keys, [r"^fc\.=head.", r"^backbone\.="])
    assert renamed(plan2) == ["fc.weight", "conv.weight"]
    assert plan2.unmatched == [r"^fc\.=head."]


def test_regex_groups_and_backrefs() -> None:
    plan = regex_plan(["layer1.0.w", "layer2.3.w"], [r"layer(\d)\.(\d)=blocks.\1_\2"])
    assert renamed(plan) == ["blocks.1_0.w", "blocks.2_3.w"]


def test_regex_split_at_first_equals() -> None:
    plan = regex_plan(["a.w"], ["a=b=c"])
    assert renamed(plan) == ["b=c.w"]


def test_regex_unmatched_reported() -> None:
    plan = regex_plan(KEYS, [r"^fc\.=head.", r"nothing_like_this=x"])
    assert plan.unmatched == ["nothing_like_this=x"]
    assert any("nothing_like_this" in n for n in plan.notes)
    assert renamed(plan) == [k.replace("fc.", "head.", 1) for k in KEYS]


def test_regex_that_renames_nothing_is_refused() -> None:
    """Exit 0 means done: maps that rename no key (matching or not) would write a copy."""
    with pytest.raises(SurgeryError, match="renames no key; nothing to rename"):
        regex_plan(KEYS, [r"fc=fc"])
    with pytest.raises(SurgeryError, match="keys look like"):
        regex_plan(KEYS, [r"^encoder\.=enc."])
    plan = regex_plan(KEYS, [r"fc=fc", r"^fc=head"])  # one map matching without change
    assert plan.unmatched == [] and plan.changed


def test_regex_conflict_names_both_keys() -> None:
    keys = ["layer1.weight", "layer2.weight"]
    with pytest.raises(
        SurgeryError, match=r"'layer1\.weight' and 'layer2\.weight'.*'layer\.weight'"
    ):
        regex_plan(keys, [r"layer\d=layer"])


def test_regex_conflict_with_unchanged_key() -> None:
    with pytest.raises(SurgeryError, match=r"'a'.*'b'|'b'.*'a'"):
        regex_plan(["a", "b"], ["^b$=a"])


def test_regex_empty_result_refused() -> None:
    with pytest.raises(SurgeryError, match="empty key"):
        regex_plan(["a", "b"], ["^a$="])


@pytest.mark.parametrize(
    ("maps", "match"),
    [
        (["no-equals-sign"], "REGEX=REPLACEMENT"),
        (["=x"], "empty"),
        (["(unclosed=x"], "invalid regular expression"),
        ([r"a=\9"], "bad replacement"),
        ([], "at least one"),
    ],
)
def test_regex_bad_maps_are_usage_errors(maps: list[str], match: str) -> None:
    with pytest.raises(UsageError, match=match):
        regex_plan(["a.w"], maps)


def test_regex_groups_report() -> None:
    plan = regex_plan(["x.a", "x.b", "y.c"], [r"^x\.=z."])
    groups = plan.groups()
    assert groups == [
        {
            "rule": r"^x\.=z.",
            "count": 2,
            "examples": [{"from": "x.a", "to": "z.a"}, {"from": "x.b", "to": "z.b"}],
        }
    ]


# --- rename_metadata vs torch -------------------------------------------------------------------


def _torch_consumed(sd: OrderedDict, *prefixes: str) -> OrderedDict:
    ref = copy.copy(sd)
    ref._metadata = copy.deepcopy(sd._metadata)  # type: ignore[attr-defined]
    for p in prefixes:
        consume_prefix_in_state_dict_if_present(ref, p)
    return ref._metadata  # type: ignore[attr-defined]


def _compiled(m: nn.Module) -> nn.Module:
    return torch.compile(m)  # wrapper only; never run


WRAPS = {
    "dp": (lambda m: nn.DataParallel(m), ("module.",)),
    "compile": (_compiled, ("_orig_mod.",)),
    "dp_compile": (lambda m: nn.DataParallel(_compiled(m)), ("module.", "_orig_mod.")),
    "compile_dp": (lambda m: _compiled(nn.DataParallel(m)), ("_orig_mod.", "module.")),
}
MODELS = {
    "mlp": mlp,
    "convnet": ConvNet,
    "sigmoidnet": SigmoidNet,
    "batchnorm_root": lambda: nn.BatchNorm2d(3),  # inner root has version 2, wrapper 1
}


@pytest.mark.parametrize("wrap", list(WRAPS))
@pytest.mark.parametrize("model", list(MODELS))
def test_strip_metadata_matches_torch(model: str, wrap: str) -> None:
    inner = MODELS[model]()
    fn, prefixes = WRAPS[wrap]
    sd = fn(inner).state_dict()
    plan = strip_plan(list(sd))
    got = rename_metadata(sd._metadata, plan.meta_fn)
    assert dict(got) == dict(_torch_consumed(sd, *prefixes))
    # and equal to the unwrapped model's own metadata
    assert dict(got) == dict(inner.state_dict()._metadata)
    assert [new for _, new in plan.pairs] == list(inner.state_dict())


@pytest.mark.parametrize("model", list(MODELS))
def test_add_metadata_matches_dataparallel(model: str) -> None:
    inner = MODELS[model]()
    sd = inner.state_dict()
    plan = add_plan(list(sd))
    got = rename_metadata(sd._metadata, plan.meta_fn, add_root=True)
    wrapped = nn.DataParallel(inner).state_dict()
    assert set(got) == set(wrapped._metadata)
    # every inner module keeps its own version info under the new name
    for path, info in sd._metadata.items():
        new = "module" + ("." + path if path else "")
        assert got[new] == info
    assert [new for _, new in plan.pairs] == list(wrapped)


def test_lightning_prefix_metadata_matches_torch() -> None:
    class Lit(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = ConvNet()

    sd = Lit().state_dict()
    plan = strip_plan(list(sd), "model.")
    got = rename_metadata(sd._metadata, plan.meta_fn)
    assert dict(got) == dict(_torch_consumed(sd, "model."))


def test_regex_metadata_follows_keys() -> None:
    sd = ConvNet().state_dict()
    plan = regex_plan(list(sd), [r"^layer(\d)\.=block\1."])
    got = rename_metadata(sd._metadata, plan.meta_fn)
    assert set(got) == {
        "",
        "block1",
        "block1.0",
        "block1.1",
        "block1.2",
        "block1.3",
        "block2",
        "block2.0",
        "block2.1",
        "block2.2",
        "block2.3",
        "fc",
    }
    assert got["block1.1"] == sd._metadata["layer1.1"]  # BN version 2 kept


def test_rename_metadata_passthrough() -> None:
    meta = OrderedDict([("", {"version": 1}), ("a", {"version": 2})])
    assert rename_metadata(meta, None) is meta
    assert rename_metadata("not a dict", lambda s: s) == "not a dict"
    out = rename_metadata(meta, lambda s: "x." + s if s else s)
    assert isinstance(out, OrderedDict)
    assert dict(out) == {"": {"version": 1}, "x.a": {"version": 2}}
