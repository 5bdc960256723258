"""``gossip.torch``: torch state_dicts in and out of gossip, without a network. Float tensors travel
and are averaged (bfloat16 as float32, float16 as float16), integer buffers (BatchNorm's
``num_batches_tracked``) are kept, and both ends of a weighted pair hold bit-identical tensors."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from gossip.mixing import weighted_average  # noqa: E402
from gossip.torch import averaged, from_params, to_params, wire_dtype  # noqa: E402


def net(seed: int) -> Any:
    """A small MLP with BatchNorm, one layer in bfloat16 and one in float16."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Linear(8, 6),
        torch.nn.BatchNorm1d(6),
        torch.nn.ReLU(),
        torch.nn.Linear(6, 5).to(torch.bfloat16),
        torch.nn.Linear(5, 3).to(torch.float16),
    )
    model.train()
    for _ in range(seed + 1):  # move BatchNorm's running statistics and counter away from their start
        model[1](model[0](torch.randn(16, 8)))
    return model


def same_bits(x: Any, y: Any) -> bool:
    if x.dtype != y.dtype or x.shape != y.shape:
        return False
    return bool(torch.equal(x.reshape(-1).view(torch.uint8), y.reshape(-1).view(torch.uint8)))


def test_float_tensors_travel_and_integer_buffers_stay() -> None:
    sd = net(0).state_dict()
    params = to_params(sd)
    assert sorted(params) == averaged(sd)
    assert "1.num_batches_tracked" in sd and "1.num_batches_tracked" not in params
    assert {"1.running_mean", "1.running_var", "1.weight", "0.weight"} <= params.keys()
    assert params["0.weight"].dtype == np.float32
    assert params["3.weight"].dtype == np.float32  # bfloat16 travels as float32
    assert params["4.weight"].dtype == np.float16
    assert wire_dtype(torch.int64) is None and wire_dtype(torch.bool) is None
    # Fresh copies: training on after step must not change what was sent.
    params["0.weight"][0, 0] += 1
    assert sd["0.weight"][0, 0].item() != params["0.weight"][0, 0]


def test_round_trip_is_the_identity_to_the_bit_bf16_and_fp16_included() -> None:
    sd = net(1).state_dict()
    back = from_params(to_params(sd), sd)
    assert list(back) == list(sd)
    for name in sd:
        assert same_bits(back[name], sd[name]), name
    assert back["1.num_batches_tracked"] is sd["1.num_batches_tracked"]  # kept: the very tensor


def test_a_weighted_pair_ends_bit_identical_and_keeps_its_own_counters() -> None:
    a, b = net(2).state_dict(), net(3).state_dict()
    assert a["1.num_batches_tracked"].item() == 3 and b["1.num_batches_tracked"].item() == 4
    na, nb = 120, 37
    pa, pb = to_params(a), to_params(b)
    mixed_a = from_params(weighted_average(pa, pb, na, nb), a)
    mixed_b = from_params(weighted_average(pb, pa, nb, na), b)
    for name in averaged(a):
        assert same_bits(mixed_a[name], mixed_b[name]), name
        assert mixed_a[name].dtype == a[name].dtype
        # The weighted mean, computed in float64 and rounded to the tensor's dtype.
        expected = (a[name].double() * na + b[name].double() * nb) / (na + nb)
        tolerance = {torch.bfloat16: 1e-2, torch.float16: 2e-3}.get(a[name].dtype, 1e-6)
        torch.testing.assert_close(mixed_a[name].double(), expected, rtol=tolerance, atol=tolerance)
    # Counters are each node's own.
    assert mixed_a["1.num_batches_tracked"].item() == 3 and mixed_b["1.num_batches_tracked"].item() == 4
    # The result loads into the model (same keys, shapes, dtypes).
    model = net(2)
    model.load_state_dict(mixed_a)


def test_bf16_is_averaged_in_float32_and_rounded_once() -> None:
    # Weights 1/3 and 2/3: in bfloat16's 8-bit significand the weights and both products would round;
    # here the average is the float32 one, rounded to bfloat16 once (round to nearest even).
    x = {"w": torch.tensor([1.0, 3.0, -7.5, 0.1], dtype=torch.bfloat16)}
    y = {"w": torch.tensor([1.0078125, 3.015625, 2.0, 100.0], dtype=torch.bfloat16)}
    mixed = from_params(weighted_average(to_params(x), to_params(y), 1, 2), x)["w"]
    w1, w2 = torch.tensor(1 / 3, dtype=torch.float32), torch.tensor(2 / 3, dtype=torch.float32)
    expected = (x["w"].float() * w1 + y["w"].float() * w2).to(torch.bfloat16)
    assert same_bits(mixed, expected)
    in_bf16 = x["w"] * w1.to(torch.bfloat16) + y["w"] * w2.to(torch.bfloat16)
    assert not same_bits(mixed, in_bf16)  # the rule matters for these values


def test_bad_state_dicts_get_clear_errors() -> None:
    sd = net(0).state_dict()
    with pytest.raises(ValueError, match="no floating-point tensor"):
        to_params({"n": torch.tensor(3)})
    with pytest.raises(ValueError, match=r"not a torch\.Tensor"):
        to_params({"w": np.zeros(3)})
    params = to_params(sd)
    del params["0.bias"]
    with pytest.raises(ValueError, match=r"missing \['0.bias'\]"):
        from_params(params, sd)
    params = to_params(sd)
    params["0.bias"] = params["0.bias"][:2]
    with pytest.raises(ValueError, match=r"0\.bias"):
        from_params(params, sd)


def test_importing_gossip_does_not_import_torch() -> None:
    code = "import sys, gossip, gossip.sync, gossip.worker, gossip.torch; assert 'torch' not in sys.modules, 'torch'"
    subprocess.run([sys.executable, "-c", code], check=True)
