"""The DCA U-Net wrapper on networks nnU-Net builds from plans: shapes, skips, init, nnU-Net's hooks."""

import copy
from types import SimpleNamespace

import pytest
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
from torch import nn

from nnunet_dca.config import resolved_dca_block
from nnunet_dca.network import DCAUNet, DCAUNetFromPlans
from plans_examples import (
    NUM_CLASSES,
    PATCH_SIZES,
    PLAIN_2D,
    PLAIN_3D,
    RESENC_2D,
    RESENC_3D,
    make_plans,
    single_thread,  # noqa: F401 (autouse)
)

CONFIGURATIONS = ["2d", "3d_fullres", "2d_resenc"]


def architecture(configuration: str) -> dict:
    return make_plans()["configurations"][configuration]["architecture"]


def build_stock(configuration: str, deep_supervision: bool = True, allow_init: bool = True) -> nn.Module:
    arch = architecture(configuration)
    return get_network_from_plans(arch["network_class_name"], arch["arch_kwargs"], arch["_kw_requires_import"],
                                  1, NUM_CLASSES, allow_init=allow_init, deep_supervision=deep_supervision)


def build_from_plans(configuration: str, dca: dict | None = None, allow_init: bool = True) -> nn.Module:
    arch = architecture(configuration)
    arch_kwargs = {"base_network_class_name": arch["network_class_name"], **arch["arch_kwargs"], "dca": dca}
    return get_network_from_plans("nnunet_dca.network.DCAUNetFromPlans", arch_kwargs, arch["_kw_requires_import"],
                                  1, NUM_CLASSES, allow_init=allow_init, deep_supervision=True)


def sample(configuration: str) -> torch.Tensor:
    return torch.rand(2, 1, *PATCH_SIZES[configuration])


def shapes(output) -> list:
    return [o.shape for o in output] if isinstance(output, (list, tuple)) else [output.shape]


@pytest.mark.parametrize("configuration", CONFIGURATIONS)
@pytest.mark.parametrize("deep_supervision", [True, False])
def test_outputs_have_the_stock_shapes(configuration, deep_supervision):
    stock = build_stock(configuration, deep_supervision)
    network = DCAUNet(build_stock(configuration, deep_supervision))
    x = sample(configuration)
    assert shapes(network(x)) == shapes(stock(x))
    assert isinstance(network(x), list) == deep_supervision


@pytest.mark.parametrize("configuration", CONFIGURATIONS)
def test_state_dict_is_the_stock_one_plus_dca(configuration):
    stock_keys = set(build_stock(configuration).state_dict())
    keys = set(DCAUNet(build_stock(configuration)).state_dict())
    assert stock_keys < keys
    assert keys - stock_keys and all(k.startswith("dca.") for k in keys - stock_keys)


@pytest.mark.parametrize("configuration, expected_stages, expected_features", [
    ("2d", 4, [8, 16, 32, 64]),  # 5 skips: the paper's 4
    ("3d_fullres", 3, [8, 16, 32]),  # 4 skips: all but the bottleneck
])
def test_stages_default_to_4_and_never_reach_the_bottleneck(configuration, expected_stages, expected_features):
    network = DCAUNet(build_stock(configuration))
    assert network.stages == expected_stages
    assert network.dca.features == expected_features
    assert DCAUNet(build_stock(configuration), {"stages": 99}).stages == expected_stages
    assert DCAUNet(build_stock(configuration), {"stages": 2}).dca.features == [8, 16]


@pytest.mark.parametrize("configuration", CONFIGURATIONS)
def test_dca_refines_the_first_skips_and_the_rest_pass_unchanged(configuration):
    network = DCAUNet(build_stock(configuration), {"stages": 2})
    seen = {}
    network.encoder.register_forward_hook(lambda module, args, output: seen.update(encoder=output))
    network.dca.register_forward_hook(lambda module, args, output: seen.update(dca_in=args[0], dca_out=output))
    network.decoder.register_forward_pre_hook(lambda module, args: seen.update(decoder=args[0]))
    network(sample(configuration))

    skips, to_decoder = seen["encoder"], seen["decoder"]
    assert len(to_decoder) == len(skips)
    assert all(a is b for a, b in zip(seen["dca_in"], skips[:2]))
    assert all(a is b for a, b in zip(to_decoder[:2], seen["dca_out"]))
    assert all(a is b for a, b in zip(to_decoder[2:], skips[2:]))  # the bottleneck among them
    assert to_decoder[-1] is skips[-1]


def test_dca_block_settings_reach_the_dca_module():
    network = DCAUNet(build_stock("2d"), {"max_tokens": None, "n_blocks": 2, "token_grid": [4, 3],
                                          "spatial_attention": False})
    assert network.dca.max_tokens is None
    assert network.dca.token_grid == (4, 3)
    assert len(network.dca.blocks) == 2
    assert network.dca.blocks[0].spatial_attentions is None
    assert network.dca.blocks[0].channel_attentions is not None


@pytest.mark.parametrize("compiled", [False, True])
def test_nnunet_switches_deep_supervision_through_the_decoder(compiled):
    network = DCAUNet(build_stock("2d"))
    # nnUNetTrainer.set_deep_supervision_enabled reads only these two attributes of the trainer
    trainer = SimpleNamespace(is_ddp=False, network=torch.compile(network) if compiled else network)
    nnUNetTrainer.set_deep_supervision_enabled(trainer, False)
    assert isinstance(network(sample("2d")), torch.Tensor)
    nnUNetTrainer.set_deep_supervision_enabled(trainer, True)
    assert isinstance(network(sample("2d")), list)


@pytest.mark.parametrize("configuration", CONFIGURATIONS)
def test_conv_feature_map_size_is_the_base_networks(configuration):
    size = PATCH_SIZES[configuration]
    assert (DCAUNet(build_stock(configuration)).compute_conv_feature_map_size(size)
            == build_stock(configuration).compute_conv_feature_map_size(size))


def test_a_network_without_encoder_skips_is_refused_by_name():
    with pytest.raises(TypeError, match="Sequential.*PlainConvUNet and ResidualEncoderUNet"):
        DCAUNet(nn.Sequential(nn.Conv2d(1, 2, 3)))


def test_a_dca_unet_is_not_wrapped_twice():
    with pytest.raises(TypeError, match="already has DCA"):
        DCAUNet(DCAUNet(build_stock("2d")))


def test_bad_dca_settings_fail_at_build_time():
    with pytest.raises(ValueError, match="unknown key"):
        DCAUNet(build_stock("2d"), {"heads": 4})
    with pytest.raises(ValueError, match="spatial_heads=3"):  # DCA's own check: heads must divide channels
        DCAUNet(build_stock("2d"), {"spatial_heads": 3})


@pytest.mark.parametrize("configuration", CONFIGURATIONS)
def test_plans_route_builds_with_get_network_from_plans(configuration):
    network = build_from_plans(configuration, {"n_blocks": 2})
    assert type(network) is DCAUNetFromPlans
    assert len(network.dca.blocks) == 2
    x = sample(configuration)
    assert shapes(network(x)) == shapes(build_stock(configuration)(x))


@pytest.mark.parametrize("configuration", CONFIGURATIONS)
def test_plans_route_initializes_the_base_as_stock_and_leaves_dca_alone(configuration):
    torch.manual_seed(0)
    stock = build_stock(configuration, allow_init=False)
    torch.manual_seed(1)
    stock.apply(stock.initialize)

    torch.manual_seed(0)
    network = build_from_plans(configuration, allow_init=False)
    dca_before = copy.deepcopy(network.dca.state_dict())
    torch.manual_seed(1)
    network.apply(network.initialize)  # what get_network_from_plans does

    initialized, dca_after = network.state_dict(), network.dca.state_dict()
    for key, value in stock.state_dict().items():
        assert torch.equal(initialized[key], value), key
    for key, value in dca_before.items():
        assert torch.equal(dca_after[key], value), key


# the default DCA U-Net starts as the stock U-Net

# configuration: (architecture, patch size)
ARCHITECTURES = {"2d": (PLAIN_2D, PATCH_SIZES["2d"]), "3d_fullres": (PLAIN_3D, PATCH_SIZES["3d_fullres"]),
                 "2d_resenc": (RESENC_2D, PATCH_SIZES["2d"]), "3d_resenc": (RESENC_3D, PATCH_SIZES["3d_fullres"])}


def stock_network(arch: dict) -> nn.Module:
    return get_network_from_plans(arch["network_class_name"], arch["arch_kwargs"], arch["_kw_requires_import"], 1,
                                  NUM_CLASSES, deep_supervision=True)


def dca_network(arch: dict, route: str, dca: dict) -> nn.Module:
    if route == "wrapper":  # what the trainers build
        return DCAUNet(stock_network(arch), dca)
    arch_kwargs = {"base_network_class_name": arch["network_class_name"], **arch["arch_kwargs"], "dca": dca}
    return get_network_from_plans("nnunet_dca.network.DCAUNetFromPlans", arch_kwargs, arch["_kw_requires_import"],
                                  1, NUM_CLASSES, deep_supervision=True)


def outputs_of_stock_with_the_same_weights(network: nn.Module, arch: dict, x: torch.Tensor, train: bool) -> list:
    """The outputs of a separately built stock U-Net given the DCA U-Net's encoder and decoder weights."""
    stock = stock_network(arch)
    stock.load_state_dict({key: value for key, value in network.state_dict().items() if not key.startswith("dca.")})
    with torch.no_grad():
        return stock.train(train)(x)


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("route", ["wrapper", "plans"])
@pytest.mark.parametrize("configuration", list(ARCHITECTURES))
def test_the_default_dca_unet_starts_as_the_stock_unet_with_the_same_weights(configuration, route, train):
    torch.manual_seed(0)
    arch, patch_size = ARCHITECTURES[configuration]
    network = dca_network(arch, route, resolved_dca_block(None)).train(train)  # add-config writes the block resolved
    x = torch.randn(2, 1, *patch_size)
    with torch.no_grad():
        outputs = network(x)
    expected = outputs_of_stock_with_the_same_weights(network, arch, x, train)
    assert len(outputs) == len(expected)
    assert all(torch.equal(o, e) for o, e in zip(outputs, expected))


@pytest.mark.parametrize("route", ["wrapper", "plans"])
def test_the_papers_merge_does_not_start_as_the_stock_unet(route):
    torch.manual_seed(0)
    network = dca_network(PLAIN_2D, route, resolved_dca_block({"merge": "paper"})).eval()
    x = torch.randn(2, 1, *PATCH_SIZES["2d"])
    with torch.no_grad():
        output = network(x)[0]
    expected = outputs_of_stock_with_the_same_weights(network, PLAIN_2D, x, train=False)[0]
    assert (output - expected).abs().max() > 0.01 * (expected.max() - expected.min())


def test_a_plans_route_block_written_before_the_merge_key_builds_the_papers_merge():
    network = build_from_plans("2d", {key: value for key, value in resolved_dca_block(None).items() if key != "merge"})
    assert network.dca.merge == "paper" and network.dca.output_norms is not None


@pytest.mark.parametrize("block", [None, {"stages": 3}])
def test_a_plans_route_block_written_by_hand_takes_the_residual_default(block):
    network = build_from_plans("2d", block)
    assert network.dca.merge == "residual" and network.dca.output_norms is None


def test_plans_route_names_an_unknown_base_class():
    arch = architecture("2d")
    with pytest.raises(ValueError, match="not.a.Network"):
        DCAUNetFromPlans(1, NUM_CLASSES, "not.a.Network", **arch["arch_kwargs"])
