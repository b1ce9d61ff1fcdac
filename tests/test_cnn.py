import pytest
import torch

from dla.config import load_experiment
from dla.errors import ConfigError
from dla.models import build_model, count_parameters
from dla.models.cnn import CNN, CNNConfig, blocks_for_depth, original_cnn


@pytest.mark.parametrize("depth, blocks", [(9, 1), (17, 2), (48, 6), (49, 6), (25, 3), (33, 4), (10, 2)])
def test_depth_rule(depth, blocks):
    assert blocks_for_depth(depth) == blocks


def convs_on_main_path(model: CNN) -> int:
    shortcut = {id(m) for blk in model.features[1:] for m in blk.shortcut.modules()}
    return sum(isinstance(m, torch.nn.Conv2d) and id(m) not in shortcut for m in model.modules())


@pytest.mark.parametrize("depth, convs", [(9, 9), (17, 17), (48, 49)])
def test_conv_count_follows_the_rule(depth, convs):
    assert convs_on_main_path(original_cnn(depth, residual=True)) == convs


# Parameter counts of the original lab's networks (CIFAR-10, 10 classes): the 2048-1024-1024 head
# alone is 3,159,050; each residual net adds three strided 1x1 projections with BN.
ORIGINAL_PARAMS = {
    (9, False): 10_205_578,
    (9, True): 10_379_402,
    (17, False): 16_476_298,
    (17, True): 16_650_122,
    (48, False): 41_559_178,
    (48, True): 41_733_002,
}


@pytest.mark.parametrize("depth, residual", list(ORIGINAL_PARAMS))
def test_original_parameter_counts(depth, residual):
    model = original_cnn(depth, residual)
    assert count_parameters(model) == ORIGINAL_PARAMS[(depth, residual)]
    head = sum(p.numel() for p in model.head.parameters())
    assert head == 2048 * 1024 + 1024 + 1024 * 1024 + 1024 + 1024 * 10 + 10
    projections = sum(p.numel() for blk in model.features[1:] for p in blk.shortcut.parameters())
    # 1x1 projections 64->128, 128->256, 256->512, each with a BN (weight and bias)
    expected = (64 * 128 + 2 * 128) + (128 * 256 + 2 * 256) + (256 * 512 + 2 * 512) if residual else 0
    assert projections == expected


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("head", ["original", "gap"])
def test_shapes(shape, residual, head):
    cfg = CNNConfig(depth=17, residual=residual, width=4, head=head, fc_width=16)
    model = build_model(cfg, shape, 10, (0.5,) * shape[0], (0.5,) * shape[0]).eval()
    x = torch.rand(3, *shape)
    assert model(x).shape == (3, 10)
    # channels_last input and weights work too (the head flattens rather than views)
    model = model.to(memory_format=torch.channels_last)
    assert model(x.contiguous(memory_format=torch.channels_last)).shape == (3, 10)


def test_residual_blocks_add_their_input():
    model = CNN(CNNConfig(depth=17, residual=True, width=4), 3, 10).eval()
    block = model.features[1]  # first block of stage 1: same shape in and out, identity shortcut
    x = torch.rand(2, 4, 8, 8)
    assert torch.allclose(block(x), torch.relu(block.body(x) + x))
    plain = CNN(CNNConfig(depth=17, residual=False, width=4), 3, 10).eval()
    assert torch.allclose(plain.features[1](x), plain.features[1].body(x))


def test_depth_below_nine_is_rejected():
    with pytest.raises(ConfigError, match="model.depth: must be >= 9"):
        load_experiment("lab1-cnn", ["model.depth=5"])


def test_sweep_is_not_an_experiment():
    with pytest.raises(ConfigError, match="lab1-depth is a sweep"):
        load_experiment("lab1-depth")
