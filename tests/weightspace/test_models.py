from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.fx
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from weightspace.models import (
    CNN,
    MLP,
    SIREN,
    VGG,
    ResNet20,
    Sine,
    ViT,
    example_input_for,
    get_model,
    list_models,
    model_from_json,
    model_spec_from_json,
    model_spec_to_json,
    parse_input_shape,
    register_model,
)
from weightspace.models import _registry

FAMILIES = ["cnn", "mlp", "resnet20", "siren", "vgg", "vit"]

# (name, kwargs, expected output size); defaults first, then small non-default configurations
CASES: list[tuple[str, dict[str, Any], int]] = [
    ("mlp", {}, 10),
    ("mlp", {"in_features": 64, "hidden": [16, 8], "out_features": 3, "activation": "tanh"}, 3),
    ("mlp", {"in_features": 5, "hidden": [], "out_features": 2, "bias": False}, 2),
    ("cnn", {}, 10),
    ("cnn", {"in_channels": 3, "channels": [4, 8], "image_size": 8, "num_classes": 5, "flatten": True}, 5),
    ("cnn", {"channels": [4], "image_size": 6, "num_classes": 2, "pool": None, "flatten": True, "kernel_size": 5}, 2),
    ("cnn", {"channels": [4, 4], "image_size": 9, "pool": "avg", "activation": "gelu"}, 10),
    ("cnn", {"channels": [16, 16, 16], "stride": 2, "padding": "tf_same", "pool": None}, 10),
    ("vgg", {}, 10),
    ("vgg", {"in_channels": 1, "image_size": 28, "width": 0.25, "num_classes": 7}, 7),
    ("vgg", {"image_size": 8, "config": [8, "M", 16, "M"], "classifier": [], "num_classes": 4}, 4),
    ("resnet20", {}, 10),
    ("resnet20", {"width": 0.5, "num_classes": 4, "in_channels": 1, "image_size": 16}, 4),
    ("siren", {}, 1),
    ("siren", {"in_features": 3, "hidden": [8, 8, 8], "out_features": 2, "w0": 10.0, "w0_first": 20.0}, 2),
    ("vit", {}, 10),
    ("vit", {"attention": "manual"}, 10),
    (
        "vit",
        {"image_size": 8, "patch": 2, "in_channels": 1, "num_classes": 3, "dim": 16, "depth": 1, "heads": 2,
         "mlp_ratio": 1.5, "attention": "manual"},
        3,
    ),
]
IDS = [f"{name}-{i}" for i, (name, _, _) in enumerate(CASES)]


@pytest.fixture
def fresh_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Lets a test register models without leaking them into the others."""
    monkeypatch.setattr(_registry, "MODELS", _registry.MODELS.copy())


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A user's module on sys.path with model factories, as ``--model pkg.mod:callable`` would name."""
    (tmp_path / "ws_user_models.py").write_text(
        textwrap.dedent(
            """
            from torch import nn

            def make_tiny(width: int = 4, out: int = 2) -> nn.Module:
                return nn.Sequential(nn.Linear(3, width), nn.ReLU(), nn.Linear(width, out))

            def not_a_module():
                return 3

            class Factories:
                @staticmethod
                def wide(width: int = 16) -> nn.Module:
                    return nn.Linear(3, width)

            NOT_CALLABLE = 5
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return "ws_user_models"


# --------------------------------------------------------------------------- families


def test_every_family_is_registered() -> None:
    assert set(FAMILIES) <= set(list_models())
    assert list_models() == sorted(list_models())


@pytest.mark.parametrize(("name", "kwargs", "n_out"), CASES, ids=IDS)
def test_family_builds_and_runs(name: str, kwargs: dict[str, Any], n_out: int) -> None:
    torch.manual_seed(0)
    model = get_model(name, **kwargs)
    assert isinstance(model, nn.Module)
    assert isinstance(model.input_shape, tuple)
    x = model.example_input(3)
    assert x.shape == (3, *model.input_shape)
    assert model(x).shape == (3, n_out)
    assert model(model.example_input()).shape == (2, n_out)


@pytest.mark.parametrize(("name", "kwargs", "n_out"), CASES, ids=IDS)
def test_family_symbolic_trace(name: str, kwargs: dict[str, Any], n_out: int) -> None:
    torch.manual_seed(0)
    model = get_model(name, **kwargs).eval()
    traced = torch.fx.symbolic_trace(model)
    x = model.example_input(4, seed=1)
    torch.testing.assert_close(traced(x), model(x))


@pytest.mark.parametrize("name", FAMILIES)
def test_example_input_is_seeded_and_follows_dtype(name: str) -> None:
    model = get_model(name)
    torch.testing.assert_close(model.example_input(seed=3), model.example_input(seed=3))
    assert not torch.equal(model.example_input(seed=3), model.example_input(seed=4))
    assert model.double().example_input().dtype == torch.float64


def test_mlp_flattens_images_and_key_layout() -> None:
    model = MLP(in_features=64, hidden=(32, 16), out_features=10)
    assert model(torch.rand(5, 1, 8, 8)).shape == (5, 10)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes == {
        "layers.0.weight": (32, 64), "layers.0.bias": (32,),
        "layers.1.weight": (16, 32), "layers.1.bias": (16,),
        "layers.2.weight": (10, 16), "layers.2.bias": (10,),
    }
    assert model.hidden == (32, 16)


def test_cnn_flatten_head_reads_channels_times_pixels() -> None:
    model = CNN(in_channels=1, channels=(16, 32, 32), image_size=28, flatten=True)
    # 28 -> 14 -> 7 -> 3 after three 2x2 pools
    assert model.state_dict()["head.weight"].shape == (10, 32 * 3 * 3)
    gap = CNN(flatten=False)
    assert gap.state_dict()["head.weight"].shape == (10, 32)
    assert [k for k in gap.state_dict() if k.startswith("convs.")] == [
        "convs.0.weight", "convs.0.bias", "convs.1.weight", "convs.1.bias", "convs.2.weight", "convs.2.bias",
    ]


def _tf_same_conv(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, stride: int) -> torch.Tensor:
    """TensorFlow's conv2d(padding="SAME") written out: the output has ceil(n / stride) rows, the
    padding max((out - 1) * stride + k - n, 0) rows, the odd row at the bottom (and so for columns)."""
    n, k = x.shape[-1], w.shape[-1]
    out = -(-n // stride)
    total = max((out - 1) * stride + k - n, 0)
    top = total // 2
    xp = F.pad(x, (top, total - top, top, total - top))
    return F.conv2d(xp, w, b, stride=stride)


@pytest.mark.parametrize("size", [28, 27, 8, 7])
def test_cnn_tf_same_stride_computes_tensorflows_function(size: int) -> None:
    """The Small CNN Zoo's family: stride-2 'SAME' convolutions (asymmetric on even sizes), GAP, dense."""
    torch.manual_seed(size)
    model = CNN(channels=(16, 16, 16), image_size=size, stride=2, padding="tf_same", pool=None)
    assert sum(p.numel() for p in model.parameters()) == 4970
    assert [k for k in model.state_dict()] == [k for k in CNN().state_dict()]  # the keys of the stride-1 family
    x = torch.randn(3, 1, size, size)
    h = x
    for conv in model.convs:
        h = torch.relu(_tf_same_conv(h, conv.weight, conv.bias, 2))
    expected = model.head(h.mean((2, 3)))
    sizes = {28: 4, 27: 4, 8: 1, 7: 1}
    assert h.shape[-1] == model.feature_size == sizes[size]
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)
    # even sizes (28, or 14 after one layer) pad bottom / right only: symmetric padding shifts the grid
    sym = CNN(channels=(16, 16, 16), image_size=size, stride=2, pool=None)
    sym.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert (sym(x) - model(x)).abs().max() > 1e-3


def test_vgg_key_layout_and_width() -> None:
    model = VGG(width=0.5)
    sd = model.state_dict()
    assert sd["convs.0.weight"].shape == (16, 3, 3, 3)
    assert "convs.0.bias" not in sd
    assert {"bns.3.weight", "bns.3.running_mean", "bns.3.running_var", "bns.3.num_batches_tracked"} <= set(sd)
    assert sd["classifier.0.weight"].shape == (128, 64 * 4 * 4)
    assert sd["classifier.1.weight"].shape == (10, 128)


def test_resnet20_shortcuts_where_shape_changes() -> None:
    sd = ResNet20().state_dict()
    assert sd["conv1.weight"].shape == (16, 3, 3, 3)
    assert sd["layer2.0.shortcut.0.weight"].shape == (32, 16, 1, 1)
    assert "layer2.0.shortcut.1.running_var" in sd
    assert sd["layer3.0.shortcut.0.weight"].shape == (64, 32, 1, 1)
    assert not any(k.startswith(("layer1.0.shortcut", "layer2.1.shortcut")) for k in sd)
    assert sd["head.weight"].shape == (10, 64)
    assert sum(1 for k in sd if k.endswith("conv1.weight")) == 1 + 9
    assert ResNet20(width=2).state_dict()["head.weight"].shape == (10, 128)


def test_siren_initialisation_and_sine() -> None:
    torch.manual_seed(0)
    model = SIREN(in_features=2, hidden=(64, 64), out_features=1, w0=30.0)
    assert model.layers[0].weight.abs().max() <= 1 / 2
    assert model.layers[1].weight.abs().max() <= (6 / 64) ** 0.5 / 30
    assert model.state_dict().keys() == {f"layers.{i}.{p}" for i in range(3) for p in ("weight", "bias")}
    x = model.example_input(100)
    assert x.min() >= -1 and x.max() <= 1
    sine = Sine(30.0)
    assert sine.elementwise is True and Sine.elementwise is True
    assert repr(sine) == "Sine(w0=30.0)"
    torch.testing.assert_close(sine(torch.tensor([0.1])), torch.sin(torch.tensor([3.0])))


def test_vit_manual_attention_matches_torch_attention() -> None:
    torch.manual_seed(0)
    reference = ViT(attention="torch").eval()
    manual = ViT(attention="manual").eval()
    renamed = {
        k.replace("attn.in_proj_", "attn.qkv.").replace("attn.out_proj.", "attn.proj."): v
        for k, v in reference.state_dict().items()
    }
    manual.load_state_dict(renamed)
    x = reference.example_input(3)
    torch.testing.assert_close(manual(x), reference(x), atol=1e-5, rtol=1e-4)
    sd = reference.state_dict()
    assert sd["cls_token"].shape == (1, 1, 64)
    assert sd["pos_embed"].shape == (1, 8 * 8 + 1, 64)
    assert sd["patch_embed.weight"].shape == (64, 3, 4, 4)
    assert sd["blocks.1.attn.in_proj_weight"].shape == (192, 64)
    assert sd["blocks.0.mlp.fc1.weight"].shape == (128, 64)


@pytest.mark.parametrize(
    ("name", "kwargs", "hint"),
    [
        ("mlp", {"activation": "swish"}, "unknown activation 'swish'"),
        ("mlp", {"hidden": [8, 0]}, "hidden must be a sequence of positive ints"),
        ("cnn", {"pool": "median"}, "unknown pool"),
        ("cnn", {"channels": []}, "at least one convolution"),
        ("cnn", {"stride": 0}, "stride must be a positive int"),
        ("cnn", {"padding": "same"}, "unknown padding 'same'; choose one of: symmetric, tf_same"),
        ("vgg", {"config": ["M", 8]}, "must start with a convolution"),
        ("vgg", {"image_size": 4}, "too small"),
        ("resnet20", {"width": 0}, "width must be a positive number"),
        ("vit", {"dim": 30, "heads": 4}, "divisible by heads"),
        ("vit", {"image_size": 30, "patch": 4}, "divisible by patch"),
        ("vit", {"attention": "flash"}, "choose one of: manual, torch"),
    ],
)
def test_family_rejects_bad_arguments(name: str, kwargs: dict[str, Any], hint: str) -> None:
    with pytest.raises(ValueError, match=hint):
        get_model(name, **kwargs)


# --------------------------------------------------------------------------- registry


def test_unknown_model_lists_every_choice() -> None:
    with pytest.raises(ValueError) as info:
        get_model("mpl")
    message = str(info.value)
    assert "unknown model 'mpl'" in message
    assert "choose one of: " + ", ".join(list_models()) in message
    assert "package.module:callable" in message


def test_bad_keyword_lists_accepted_arguments() -> None:
    with pytest.raises(ValueError, match=r"bad arguments for model 'mlp'.*accepted: in_features, hidden"):
        get_model("mlp", hiden=(3,))


def test_register_rejects_duplicates_and_bad_names(fresh_registry: None) -> None:
    @register_model("tiny-test", pretty_name="Tiny", reference_url="https://example.org")
    def tiny(width: int = 3) -> nn.Module:
        return nn.Linear(2, width)

    assert "tiny-test" in list_models()
    assert get_model("tiny-test", width=5).out_features == 5
    assert _registry.MODELS.get("tiny-test").pretty_name == "Tiny"
    with pytest.raises(ValueError, match="'tiny-test' is already registered"):
        register_model("tiny-test")(tiny)
    with pytest.raises(ValueError, match="'mlp' is already registered"):
        register_model("mlp")(tiny)
    for bad in ["", "a:b", "two words"]:
        with pytest.raises(ValueError, match="bad name"):
            register_model(bad)


def test_registered_factory_must_return_module(fresh_registry: None) -> None:
    register_model("not-a-module")(lambda: 3)
    with pytest.raises(ValueError, match="returned int, expected a torch.nn.Module"):
        get_model("not-a-module")


def test_callable_spec(user_module: str) -> None:
    model = get_model(f"{user_module}:make_tiny", width=7)
    assert isinstance(model, nn.Sequential)
    assert model[0].out_features == 7
    assert get_model(f"{user_module}:Factories.wide", width=3).out_features == 3
    with pytest.raises(ValueError, match="returned int, expected a torch.nn.Module"):
        get_model(f"{user_module}:not_a_module")
    with pytest.raises(ValueError, match="has no attribute 'missing'"):
        get_model(f"{user_module}:missing")
    with pytest.raises(ValueError, match="not a callable"):
        get_model(f"{user_module}:NOT_CALLABLE")
    with pytest.raises(ValueError, match="cannot import module 'ws_no_such_module'"):
        get_model("ws_no_such_module:make")
    with pytest.raises(ValueError, match=r"bad arguments for ws_user_models:make_tiny.*accepted: width, out"):
        get_model(f"{user_module}:make_tiny", depth=2)
    with pytest.raises(ValueError, match="not of the form package.module:callable"):
        get_model(f"{user_module}:")


# --------------------------------------------------------------------------- JSON specs


@pytest.mark.parametrize(("name", "kwargs", "n_out"), CASES, ids=IDS)
def test_model_json_round_trip(name: str, kwargs: dict[str, Any], n_out: int) -> None:
    text = model_spec_to_json(name, kwargs)
    assert json.loads(text) == {"name": name, "kwargs": json.loads(json.dumps(kwargs))}
    assert model_spec_from_json(text) == (name, json.loads(json.dumps(kwargs)))
    torch.manual_seed(0)
    original = get_model(name, **kwargs)
    torch.manual_seed(0)
    rebuilt = model_from_json(text)
    assert type(rebuilt) is type(original)
    assert rebuilt.input_shape == original.input_shape
    a, b = original.state_dict(), rebuilt.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key])


def test_model_json_from_tuples_and_callables(user_module: str) -> None:
    text = model_spec_to_json("mlp", {"hidden": (8, 4), "in_features": 6})
    assert text == '{"kwargs":{"hidden":[8,4],"in_features":6},"name":"mlp"}'
    assert model_from_json(text).hidden == (8, 4)
    user_spec = model_spec_to_json(f"{user_module}:make_tiny", {"width": 2})
    with pytest.raises(ValueError, match="--trust-model-code"):  # code named in a file: refused by default
        model_from_json(user_spec)
    assert isinstance(model_from_json(user_spec, trusted=True), nn.Sequential)
    assert isinstance(model_from_json('{"name": "siren"}'), SIREN)


@pytest.mark.parametrize(
    ("text", "hint"),
    [
        ("not json", "not valid JSON"),
        ("[1, 2]", "expected"),
        ('{"kwargs": {}}', "expected"),
        ('{"name": "mlp", "kwargs": [1]}', "'kwargs' must be a JSON object"),
        ('{"name": "mpl"}', "unknown model 'mpl'"),
    ],
)
def test_model_from_json_errors(text: str, hint: str) -> None:
    with pytest.raises(ValueError, match=hint):
        model_from_json(text)


def test_model_spec_to_json_rejects_non_json_values() -> None:
    with pytest.raises(ValueError, match="argument 'init' is a Tensor"):
        model_spec_to_json("mlp", {"init": torch.zeros(2)})
    with pytest.raises(ValueError, match="Out of range float"):
        model_spec_to_json("siren", {"w0": float("nan")})


# --------------------------------------------------------------------------- input shapes


@pytest.mark.parametrize(
    ("text", "shape"),
    [("784", (784,)), ("3,32,32", (3, 32, 32)), (" 1, 8 ,8 ", (1, 8, 8)), ("(3, 4)", (3, 4)), ("784,", (784,)),
     (10, (10,)), ([2, 3], (2, 3))],
)
def test_parse_input_shape(text: Any, shape: tuple[int, ...]) -> None:
    assert parse_input_shape(text) == shape


@pytest.mark.parametrize("text", ["", "a", "3,,4", "3,-1", "0", "1.5", "3;32", [], [3, 0], True])
def test_parse_input_shape_rejects(text: Any) -> None:
    with pytest.raises(ValueError, match="parse_input_shape: expected comma-separated positive integers"):
        parse_input_shape(text)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=10_000), min_size=1, max_size=5))
def test_parse_input_shape_round_trips(shape: list[int]) -> None:
    assert parse_input_shape(",".join(map(str, shape))) == tuple(shape)


def test_example_input_for() -> None:
    model = get_model("cnn")
    torch.testing.assert_close(example_input_for(model, batch_size=3), model.example_input(3))
    assert example_input_for(get_model("mlp", in_features=64), "1,8,8").shape == (2, 1, 8, 8)
    plain = nn.Sequential(nn.Flatten(), nn.Linear(12, 2))
    with pytest.raises(ValueError, match="pass --input-shape"):
        example_input_for(plain)
    assert example_input_for(plain, "3,4", batch_size=5).shape == (5, 3, 4)
    torch.testing.assert_close(example_input_for(plain, (3, 4), seed=1), example_input_for(plain, "3,4", seed=1))
    plain.input_shape = (12,)
    assert example_input_for(plain).shape == (2, 12)
    assert example_input_for(plain.double()).dtype == torch.float64


@settings(max_examples=15, deadline=None)
@given(
    in_features=st.integers(1, 12),
    hidden=st.lists(st.integers(1, 12), max_size=3),
    out_features=st.integers(1, 5),
    batch=st.integers(1, 4),
)
def test_mlp_any_shape_traces(in_features: int, hidden: list[int], out_features: int, batch: int) -> None:
    model = MLP(in_features, hidden, out_features)
    x = model.example_input(batch)
    traced = torch.fx.symbolic_trace(model)
    torch.testing.assert_close(traced(x), model(x))
    assert model(x).shape == (batch, out_features)
