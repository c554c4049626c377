"""Triton kernels that fuse the small per-token operations of a decoder layer (norms, the gated
activation, RoPE), for the llama-family forward on CUDA. Each replaces a chain of elementwise
torch kernels, and the memory round trips between them, with one launch.

Importing this package imports triton: import it only where Triton kernels will run.
"""

from .rms_norm import add_rms_norm, rms_norm
from .rotary import rotary_embedding
from .silu_and_mul import silu_and_mul

__all__ = ["add_rms_norm", "rms_norm", "rotary_embedding", "silu_and_mul"]
