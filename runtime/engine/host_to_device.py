"""Host values onto the model's device without making the host wait for the device.

A plain `torch.tensor(values, device="cuda")` copies from pageable memory, which synchronises
the stream: the host would wait for every kernel queued so far (a whole forward pass) before
it could queue the next. From pinned memory the copy is queued like a kernel instead.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

NUMPY_DTYPES = {torch.long: np.int64, torch.int32: np.int32, torch.float32: np.float32, torch.bool: np.bool_}


def to_device(values: Sequence | np.ndarray, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """`values` as a `dtype` tensor on `device`. On CUDA the copy is queued from pinned memory
    (torch keeps the pinned buffer until the copy is done, so `values` may change at once)."""
    tensor = torch.from_numpy(np.asarray(values, dtype=NUMPY_DTYPES[dtype]))
    if device.type == "cpu":
        return tensor
    return tensor.pin_memory().to(device, non_blocking=True)
