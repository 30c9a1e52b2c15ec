"""Checks every official model and every HF family goes through (shared by their tests)."""

from __future__ import annotations

import os
import re
from collections.abc import Callable

import pytest
import torch

from sat.hf import MappingError, from_hf, hf_to_sat_state_dict, read_hf_weights, save_hf, to_hf
from sat.model import AutoModel
from sat.training.model_io import save_checkpoint

Forward = Callable[[torch.nn.Module], torch.Tensor]


def check_hf_round_trip(hf_model, sat_forward: Forward, hf_forward: Forward, tmp_path, atol: float = 1e-5) -> float:
    """Convert ``hf_model`` with the production code; outputs must agree within ``atol``, the
    way back must give the identical HF state dict, and ``save_hf`` must load in transformers
    with the same outputs. Returns the max abs difference sat vs HF."""
    hf_model.eval()
    model, _ = from_hf(hf_model)
    with torch.no_grad():
        expected = hf_forward(hf_model)
        difference = (sat_forward(model) - expected).abs().max().item()
    assert difference <= atol, difference
    print(f"parity {type(hf_model).__name__} ({hf_model.config.model_type}): max abs difference {difference:.2e}")

    back = to_hf(model).state_dict()
    original = hf_model.state_dict()
    assert set(back) == set(original)
    for key, value in original.items():
        assert torch.equal(back[key], value), key

    directory = os.path.join(str(tmp_path), "hf")
    save_hf(model, directory)
    # A tied weight is written once, as save_pretrained writes it; sat reads the directory back.
    saved = read_hf_weights(directory)
    for key, source in hf_model.all_tied_weights_keys.items():
        if torch.equal(original[key], original[source]):
            assert key not in saved and source in saved, (key, source)
    again, sat_state = from_hf(directory)[0].state_dict(), model.state_dict()
    assert set(again) == set(sat_state)
    for key, value in sat_state.items():
        assert torch.equal(again[key], value), key
    reloaded = type(hf_model).from_pretrained(directory).eval()
    with torch.no_grad():
        # Not bitwise: safetensors places tensors 8-byte aligned, and a matrix product over a
        # differently aligned copy of the same weights may round differently (seen: 9e-7).
        assert (hf_forward(reloaded) - expected).abs().max() <= 1e-6
    return difference


def check_left_padded_batch(hf_model, input_ids: torch.Tensor, pad: int = 4, atol: float = 1e-5) -> float:
    """The sat model of causal LM ``hf_model`` on a batch whose second row starts with ``pad``
    padding tokens (positions counted from the first real token) agrees with transformers on
    every real token. Returns the max abs difference."""
    hf_model.eval()
    model, _ = from_hf(hf_model)
    batch, seq = input_ids.shape
    attention = torch.ones(batch, seq, dtype=torch.long)
    attention[1, :pad] = 0  # left padding
    positions = (attention.cumsum(-1) - 1).clamp(min=0)
    mask = torch.ones(seq, seq).tril() * attention[:, None, None, :]  # [b, 1, s, s]
    with torch.no_grad():
        expected = hf_model(input_ids, attention_mask=attention, position_ids=positions).logits
        got = model(input_ids, positions, mask)[0]
    difference = (got - expected)[attention.bool()].abs().max().item()
    assert difference <= atol, difference
    return difference


def check_sat_model(model: torch.nn.Module, args, forward: Forward, tmp_path) -> None:
    """Forward and backward run with finite gradients on every parameter, eval mode is
    deterministic, and save -> AutoModel.from_pretrained reproduces the outputs exactly."""
    model.train()
    model.zero_grad()
    out = forward(model)
    out.float().square().mean().backward()
    for name, param in model.named_parameters():
        if param.requires_grad:
            assert param.grad is not None and torch.isfinite(param.grad).all(), name

    model.eval()
    with torch.no_grad():
        first, second = forward(model), forward(model)
    assert torch.equal(first, second)

    args.save = os.path.join(str(tmp_path), "sat")
    save_checkpoint(1, model, None, None, args)
    loaded, _ = AutoModel.from_pretrained(args.save)
    assert type(loaded) is type(model)
    with torch.no_grad():
        assert torch.equal(forward(loaded), first)


def check_unmatched_keys(hf_model, extra_key: str, missing_key: str) -> None:
    """The production map rejects an HF state dict with an unknown key, and one lacking a key,
    naming the key."""
    state = hf_model.state_dict()
    state[extra_key] = torch.zeros(1)
    with pytest.raises(MappingError, match=rf"no sat counterpart: \['{re.escape(extra_key)}'\]"):
        hf_to_sat_state_dict(state, hf_model.config)
    del state[extra_key], state[missing_key]
    with pytest.raises(MappingError, match=rf"lacks \['{re.escape(missing_key)}'\]"):
        hf_to_sat_state_dict(state, hf_model.config)


# Attention with a mask tensor runs the fused SDPA kernel, whose float32 rounding differs from the
# original's eager softmax product: a few ulps of the outputs' scale (measured 2.7e-6 on
# EVA-02 outputs of magnitude 2.7, about 9 ulps).
_ULPS_OF_SCALE = 16 * torch.finfo(torch.float32).eps


def assert_recorded(outputs: dict, path: str, atol: float = 1e-6) -> None:
    """``outputs`` (name -> tensor) equal those saved at ``path`` (by the original library),
    within ``atol`` or 16 float32 ulps of the recorded outputs' largest magnitude, the larger."""
    recorded = torch.load(path, weights_only=True)
    assert recorded.keys() == outputs.keys()
    for kind, value in recorded.items():
        bound = max(atol, _ULPS_OF_SCALE * value.abs().max().item())
        assert (outputs[kind] - value).abs().max() < bound, kind


def check_written_here_loads_in_original(folder: str, outputs: Callable, tmp_path, atol: float = 1e-6) -> None:
    """A committed checkpoint written by this project (``folder``) gives the outputs the original
    library recorded for it (``logits_by_original.pt``), and saving it again writes the same
    tensors under the same keys, in the same order."""
    model, args = AutoModel.from_pretrained(folder)
    assert_recorded(outputs(model), os.path.join(folder, "logits_by_original.pt"), atol)
    args.save = str(tmp_path)
    save_checkpoint(1, model, None, None, args)
    states = os.path.join("1", "mp_rank_00_model_states.pt")
    written = torch.load(os.path.join(str(tmp_path), states), weights_only=True)["module"]
    committed = torch.load(os.path.join(folder, states), weights_only=True)["module"]
    assert list(written) == list(committed)
    assert all(torch.equal(written[key], value) for key, value in committed.items())
