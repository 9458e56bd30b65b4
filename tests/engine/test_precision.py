"""precision and channels_last: what autocast really computes in, what the solves get, and how auto resolves."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mela.data.base import ImageSplit
from mela.data.samplers import TaskShape
from mela.engine import precision
from mela.engine.precision import FP32, Compute, ComputeSettings
from mela.errors import MelaError
from mela.methods.evaluator import EvalProtocol, evaluate_model, extract_features
from mela.methods.ridge import task_ridge_loss
from mela.models.feature_model import Classifier, FeatureModel, ModelSpec

CPU = torch.device("cpu")
BF16 = Compute("cpu", "bf16", False)


def _model(name: str = "convnet4", channels: int = 3, **kwargs) -> FeatureModel:
    torch.manual_seed(0)
    return FeatureModel(ModelSpec(name, {"in_channels": channels, **kwargs}))


def _conv_output_dtypes(model: torch.nn.Module, compute: Compute, x: torch.Tensor) -> set[torch.dtype]:
    """The dtypes the convolutions produced during one ``compute.forward``."""
    seen: set[torch.dtype] = set()
    hooks = [m.register_forward_hook(lambda _m, _i, out: seen.add(out.dtype))
             for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    out = compute.forward(model, x)
    for hook in hooks:
        hook.remove()
    assert out.dtype == torch.float32  # whatever ran inside, what leaves is float32
    return seen


def test_bf16_autocast_on_the_cpu_really_computes_the_convolutions_in_bfloat16() -> None:
    model, x = _model(), torch.randn(4, 3, 32, 32)
    assert _conv_output_dtypes(model, BF16, x) == {torch.bfloat16}


def test_fp32_computes_the_convolutions_in_float32() -> None:
    model, x = _model(), torch.randn(4, 3, 32, 32)
    assert _conv_output_dtypes(model, Compute("cpu", "fp32", False), x) == {torch.float32}


def test_a_classifier_s_logits_leave_bf16_autocast_as_float32() -> None:
    classifier = Classifier(_model(), [7, 3])
    outputs = BF16.forward(classifier, torch.randn(2, 3, 32, 32))
    assert [o.dtype for o in outputs] == [torch.float32, torch.float32]
    assert [o.shape for o in outputs] == [(2, 7), (2, 3)]


def _episode(compute: Compute) -> dict[str, torch.Tensor]:
    """The ridge loss of one fixed 5-way 2-shot 3-query task on features computed under ``compute``."""
    model = _model("convnet4", 1).eval()
    x = torch.rand(5 * 5, 1, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        features = compute.forward(model, x).view(1, 5, 5, -1)
    labels = torch.arange(5)
    return task_ridge_loss(features[:, :, :2].flatten(1, 2), labels.repeat_interleave(2)[None],
                           features[:, :, 2:].flatten(1, 2), labels.repeat_interleave(3)[None], 5, 1e-3, True)


def test_the_ridge_loss_under_bf16_is_solved_in_float32_and_matches_fp32() -> None:
    low, full = _episode(BF16), _episode(Compute())
    assert {key: value.dtype for key, value in low.items()} == dict.fromkeys(full, torch.float32)
    for key in ("loss", "mse", "hinge", "weight_mse"):
        # bfloat16 keeps 8 bits of mantissa: the features move by a few tenths of a percent, and so do the losses.
        assert float(low[key]) == pytest.approx(float(full[key]), rel=1e-2), key
    assert float(low["loss"]) != float(full["loss"])  # the bf16 pass really ran


def test_features_extracted_under_bf16_are_float32_and_the_heads_agree_with_fp32() -> None:
    rng = np.random.default_rng(0)
    centres = rng.integers(40, 216, (6, 1, 1, 1))
    images = np.clip(centres.repeat(10, 0) + rng.normal(0, 25, (60, 32, 32, 1)), 0, 255).astype(np.uint8)
    split = ImageSplit(images, np.repeat(np.arange(6), 10))
    model = _model("convnet4", 1)
    low = extract_features(model, split.images, (0.5,), (0.25,), CPU, compute=BF16)
    full = extract_features(model, split.images, (0.5,), (0.25,), CPU)
    assert low.dtype == full.dtype == torch.float32
    assert torch.allclose(low, full, rtol=0.05, atol=0.02 * float(full.abs().max()))
    shape = [TaskShape(3, 1, 4)]
    acc_low = evaluate_model(model, split, shape, 40, EvalProtocol(), (0.5,), (0.25,), CPU, BF16)[0].overall.acc
    acc_full = evaluate_model(model, split, shape, 40, EvalProtocol(), (0.5,), (0.25,), CPU)[0].overall.acc
    assert abs(acc_low - acc_full) <= 5.0


@pytest.mark.parametrize(("name", "size"), [("convnet4", 32), ("resnet12", 32)])
def test_a_channels_last_model_gives_the_contiguous_model_s_output(name: str, size: int) -> None:
    model = _model(name).eval()
    x = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(x)
        layout = Compute("cpu", "fp32", True)
        layout.prepare(model)
        got = layout.forward(model, x)
    convs = [m.weight for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_auto_is_fp32_on_a_cpu_without_native_bfloat16_and_bf16_only_when_asked(monkeypatch) -> None:
    monkeypatch.delenv("MELA_CPU_BF16", raising=False)
    monkeypatch.setattr(precision, "native_cpu_bf16", lambda: None)
    chosen = ComputeSettings().resolve(CPU, "convnet4")
    assert chosen.precision == "fp32" and "no native bfloat16" in chosen.reason
    assert ComputeSettings("bf16").resolve(CPU, "convnet4").precision == "bf16"
    assert ComputeSettings("FP32").resolve(CPU, "convnet4").precision == "fp32"


def test_auto_is_bf16_with_channels_last_on_a_cpu_with_native_bfloat16_and_the_log_says_why(monkeypatch) -> None:
    monkeypatch.setattr(precision, "native_cpu_bf16", lambda: "AVX512-BF16")
    chosen = ComputeSettings().resolve(CPU, "resnet12")
    assert chosen == Compute("cpu", "bf16", True)  # channels_last: measured faster under bf16 for every conv net
    assert chosen.describe() == "precision bf16 (auto: this CPU has native bfloat16 (AVX512-BF16)), channels_last on"
    assert ComputeSettings().resolve(CPU, "residual_mlp") == Compute("cpu", "bf16", False)  # no convolutions
    assert ComputeSettings("fp32").resolve(CPU, "resnet12") == Compute("cpu", "fp32", False)
    assert ComputeSettings(channels_last=False).resolve(CPU, "convnet4") == Compute("cpu", "bf16", False)


def test_native_cpu_bfloat16_reads_the_processor_probes_and_the_environment_switch(monkeypatch) -> None:
    monkeypatch.delenv("MELA_CPU_BF16", raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
    assert precision.native_cpu_bf16() == "AVX512-BF16"
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    assert precision.native_cpu_bf16() == "AMX"
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    assert precision.native_cpu_bf16() is None
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
    monkeypatch.setenv("MELA_CPU_BF16", "0")
    assert precision.native_cpu_bf16() is None
    assert ComputeSettings().resolve(CPU, "convnet4").reason == "auto: MELA_CPU_BF16=0"


def test_bf16_autocast_on_the_cpu_leaves_the_features_float32_and_close_to_fp32() -> None:
    torch.manual_seed(0)
    model = FeatureModel(ModelSpec("convnet4", {"in_channels": 1})).eval()
    x = torch.randn(8, 1, 32, 32)
    with torch.no_grad():
        exact = FP32.forward(model, x)
        fast = Compute("cpu", "bf16", True).forward(model, x)
    assert fast.dtype == torch.float32
    cosine = torch.nn.functional.cosine_similarity(exact, fast, dim=1)
    assert float(cosine.min()) > 0.99  # bf16 keeps 8 bits of mantissa: close, not equal
    assert not torch.equal(exact, fast)


def test_channels_last_auto_follows_the_cpu_measurements_and_an_explicit_choice_wins(monkeypatch) -> None:
    monkeypatch.setattr(precision, "native_cpu_bf16", lambda: None)
    assert ComputeSettings().resolve(CPU, "convnet4").channels_last is True
    assert ComputeSettings().resolve(CPU, "resnet12").channels_last is False  # measured slower on the CPU
    assert ComputeSettings().resolve(CPU, "residual_mlp").channels_last is False
    assert ComputeSettings(channels_last=True).resolve(CPU, "resnet12").channels_last is True
    assert ComputeSettings(channels_last=False).resolve(CPU, "convnet4").channels_last is False


def test_on_a_gpu_auto_takes_bf16_where_supported_and_bf16_without_support_is_one_line(monkeypatch) -> None:
    cuda = torch.device("cuda:0")
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda _device=None: "Tesla V100-SXM2-16GB")
    monkeypatch.setattr(precision, "bf16_supported", lambda device: device.type == "cpu")
    assert ComputeSettings().resolve(cuda, "resnet12") == Compute("cuda", "fp32", True)
    with pytest.raises(MelaError) as caught:
        ComputeSettings("bf16").resolve(cuda, "resnet12")
    message = str(caught.value)
    assert message == ("precision=bf16 was asked for but cuda:0 (Tesla V100-SXM2-16GB) has no bfloat16 support; use "
                       "precision=fp32 or precision=auto")
    monkeypatch.setattr(precision, "bf16_supported", lambda device: True)
    assert ComputeSettings().resolve(cuda, "resnet12") == Compute("cuda", "bf16", True)


def test_bad_values_are_one_line_errors_listing_the_valid_ones() -> None:
    with pytest.raises(MelaError, match=r"^precision must be one of auto, fp32, bf16, got 'fp16'$"):
        ComputeSettings("fp16")
    with pytest.raises(MelaError, match=r"^channels_last must be auto, true or false, got 'yes please'$"):
        ComputeSettings(channels_last="yes please")  # type: ignore[arg-type]


def test_the_run_log_states_the_resolved_choice() -> None:
    assert Compute("cuda", "bf16", True).describe() == "precision bf16, channels_last on"
    assert Compute().describe() == "precision fp32, channels_last off"
    assert Compute("cpu", "fp32", False, "auto: why").describe() == "precision fp32 (auto: why), channels_last off"
