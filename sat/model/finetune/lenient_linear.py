"""Linear layers that load whatever weights a checkpoint has for them: the original's
``HackLinear``, ``HackColumnParallelLinear`` and ``HackRowParallelLinear`` (``lora2``).

``weight`` and ``bias`` are copied in when present; a missing one keeps its current value and
is not reported. Any other key under the layer's prefix is still reported as unexpected.
"""

from __future__ import annotations

import torch

from sat.mpu import ColumnParallelLinear, RowParallelLinear


class _LoadWhatIsThere:
    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ) -> None:
        present = {key: value for key, value in state_dict.items() if key.startswith(prefix)}
        with torch.no_grad():
            for name in ("weight", "bias"):
                tensor = present.pop(prefix + name, None)
                if tensor is not None and getattr(self, name, None) is not None:
                    getattr(self, name).copy_(tensor)
        if strict:
            unexpected_keys.extend(present)


class HackLinear(_LoadWhatIsThere, torch.nn.Linear):
    """``torch.nn.Linear`` loading only the tensors a checkpoint has."""


class HackColumnParallelLinear(_LoadWhatIsThere, ColumnParallelLinear):
    """``ColumnParallelLinear`` loading only the tensors a checkpoint has."""


class HackRowParallelLinear(_LoadWhatIsThere, RowParallelLinear):
    """``RowParallelLinear`` loading only the tensors a checkpoint has."""
