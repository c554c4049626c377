"""Input tokens of a step that only the device has: with async scheduling, a decode's input
token is sampled by the step still running, so the host holds a placeholder for it and the
device writes the real token into the step's input ids (model_runner.py, cuda_graphs.py)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(slots=True)
class DeviceTokens:
    """Input tokens that only the device has: input_ids[rows[i]] = source[source_rows[i]]."""

    rows: torch.Tensor
    source: torch.Tensor
    source_rows: torch.Tensor

    def write_into(self, input_ids: torch.Tensor) -> None:
        """Queued on the device after the copy of the host's input ids (whose rows here are
        placeholders) and after the step that samples `source`."""
        input_ids.index_copy_(0, self.rows, self.source.index_select(0, self.source_rows))
