"""Backbones: output shapes, gradients, DropBlock behaviour, size errors, residual MLP."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mela.errors import MelaError
from mela.models import available_models, create_model
from mela.models.mlp import ResidualMLP
from mela.models.resnet12 import DropBlock

# name -> (input sizes to try, documented feat_dim); wrn_28_10 is heavy, so one small size.
BACKBONES = {
    "resnet12": ((32, 84), 640),
    "seresnet12": ((32, 48), 640),
    "resnet18": ((32, 40), 512),
    "wrn_28_10": ((16,), 640),
    "convnet4": ((32, 84), 64),
}


def test_every_registered_image_backbone_is_covered_by_the_shape_test() -> None:
    assert set(available_models()) - {"residual_mlp"} == set(BACKBONES)


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_backbone_maps_images_of_each_size_to_flat_features_of_its_feat_dim(name: str) -> None:
    torch.manual_seed(0)
    sizes, feat_dim = BACKBONES[name]
    model = create_model(name).eval()
    assert model.feat_dim == feat_dim
    with torch.no_grad():
        for size in sizes:
            out = model(torch.randn(2, 3, size, size))
            assert out.shape == (2, feat_dim)
            assert torch.isfinite(out).all()


def test_convnet4_takes_one_channel_glyph_images_and_hidden_sets_its_width() -> None:
    torch.manual_seed(0)
    model = create_model("convnet4", in_channels=1, hidden=32)
    out = model(torch.rand(5, 1, 32, 32))
    assert model.feat_dim == 32
    assert out.shape == (5, 32)


@pytest.mark.parametrize("name", ["convnet4", "resnet12", "seresnet12"])
def test_gradient_reaches_every_parameter_of_the_backbone(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, in_channels=1).train()
    model(torch.randn(3, 1, 16, 16)).pow(2).mean().backward()
    for param_name, param in model.named_parameters():
        assert param.grad is not None, param_name
        assert torch.isfinite(param.grad).all(), param_name
    first_conv = next(p for n, p in model.named_parameters() if p.dim() == 4)
    assert first_conv.grad.abs().sum() > 0


def test_dropblock_is_identity_in_eval_mode() -> None:
    torch.manual_seed(0)
    block = DropBlock(drop_rate=0.5, block_size=3).eval()
    x = torch.randn(2, 4, 9, 9)
    assert torch.equal(block(x), x)


def test_dropblock_in_train_mode_zeroes_whole_squares_and_rescales_the_rest() -> None:
    torch.manual_seed(0)
    block = DropBlock(drop_rate=0.3, block_size=3).train()
    x = torch.ones(4, 8, 9, 9)
    out = block(x)
    dropped = out == 0
    assert 0.05 < dropped.float().mean().item() < 0.45
    kept = out[~dropped]
    # Kept activations are scaled up so the expected sum is unchanged.
    assert torch.allclose(kept, torch.full_like(kept, x.numel() / kept.numel()))
    # Every dropped pixel lies inside a fully dropped 3x3 square.
    full_squares = 1.0 - F.max_pool2d(1.0 - dropped.float(), 3, stride=1)
    covered = F.max_pool2d(F.pad(full_squares, (2, 2, 2, 2)), 3, stride=1).bool()
    assert torch.equal(covered, dropped)


def test_dropblock_shrinks_its_block_to_feature_maps_smaller_than_the_block() -> None:
    torch.manual_seed(0)
    out = DropBlock(drop_rate=0.2, block_size=5).train()(torch.ones(64, 16, 2, 2))
    dropped = (out == 0).float()
    assert 0.1 < dropped.mean().item() < 0.3
    # A 2x2 map holds one 2x2 block: each channel is dropped whole or not at all.
    per_map = dropped.mean(dim=(2, 3))
    assert torch.all((per_map == 0) | (per_map == 1))


def test_resnet12_is_deterministic_in_eval_mode_and_stochastic_in_train_mode() -> None:
    torch.manual_seed(0)
    model = create_model("resnet12", drop_rate=0.1)
    x = torch.randn(2, 3, 16, 16)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
        model.train()
        assert not torch.allclose(model(x), model(x))


def test_resnet12_without_dropout_is_deterministic_in_train_mode() -> None:
    torch.manual_seed(0)
    model = create_model("resnet12", drop_rate=0.0).train()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(model(x), model(x))


def test_resnet12_without_average_pooling_pools_with_a_global_max() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    avg = create_model("resnet12", avg_pool=True).eval()
    mx = create_model("resnet12", avg_pool=False).eval()
    mx.load_state_dict(avg.state_dict())
    with torch.no_grad():
        stages = avg.stages(x)
        assert torch.allclose(avg(x), stages.mean(dim=(2, 3)))
        assert torch.allclose(mx(x), stages.amax(dim=(2, 3)))


@pytest.mark.parametrize(("name", "size", "needed"), [("resnet12", 4, 16), ("seresnet12", 15, 16), ("convnet4", 8, 16)])
def test_input_too_small_for_the_downsampling_raises_a_mela_error_with_the_sizes(
    name: str, size: int, needed: int
) -> None:
    model = create_model(name).eval()
    expected = f"input {size}x{size} is too small for {name}: it needs at least {needed}x{needed}"
    with pytest.raises(MelaError, match=expected):
        model(torch.randn(1, 3, size, size))


def test_smallest_allowed_input_runs_through_resnet12() -> None:
    out = create_model("resnet12").eval()(torch.randn(1, 3, 16, 16))
    assert out.shape == (1, 640)


def test_input_with_the_wrong_channel_count_raises_a_mela_error_naming_in_channels() -> None:
    model = create_model("convnet4")
    expected = "input has 1 channels but convnet4 was built for 3; create it with in_channels=1"
    with pytest.raises(MelaError, match=expected):
        model(torch.randn(2, 1, 32, 32))


def test_input_that_is_not_a_batch_of_images_raises_a_mela_error() -> None:
    with pytest.raises(MelaError, match="resnet18 takes a"):
        create_model("resnet18")(torch.randn(3, 32, 32))


def test_residual_mlp_with_zeroed_linear_layers_reduces_to_layer_norm_of_its_input() -> None:
    torch.manual_seed(0)
    mlp = create_model("residual_mlp", dim=16)
    assert isinstance(mlp, ResidualMLP)
    assert mlp.feat_dim == 16
    linears = [m for m in mlp.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 3
    with torch.no_grad():
        for linear in linears:
            linear.weight.zero_()
            linear.bias.zero_()
    x = torch.randn(5, 16) * 3 + 1
    mean = x.mean(dim=-1, keepdim=True)
    var = x.var(dim=-1, unbiased=False, keepdim=True)
    expected = (x - mean) / torch.sqrt(var + 1e-5)
    assert torch.allclose(mlp(x), expected, atol=1e-5)
    assert torch.allclose(mlp(x), F.layer_norm(x, (16,)), atol=1e-6)


def test_residual_mlp_with_default_init_adds_its_three_layer_branch_before_the_norm() -> None:
    torch.manual_seed(0)
    mlp = ResidualMLP(8)
    x = torch.randn(4, 8)
    branch = mlp.fc3(torch.relu(mlp.fc2(torch.relu(mlp.fc1(x)))))
    assert torch.allclose(mlp(x), F.layer_norm(x + branch, (8,)), atol=1e-6)
    assert not torch.allclose(mlp(x), F.layer_norm(x, (8,)), atol=1e-3)


def test_residual_mlp_on_features_of_the_wrong_size_raises_a_mela_error() -> None:
    with pytest.raises(MelaError, match="create it with dim=5"):
        ResidualMLP(8)(torch.randn(2, 5))
