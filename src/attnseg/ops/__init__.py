"""The attention kernels the heads use, each an autograd function with a hand-written backward, exact to the
formula (``tests/helpers/reference.py`` holds the naive versions the tests compare them with):

- ``criss_cross``: CCNet's criss-cross attention over rows and columns;
- ``query_block_attention``: DANet's position attention over blocks of queries (CPU path);
- ``channel_attention``: DANet's channel attention;
- ``shared_key_heads``: attention with values wider than queries and keys, as flash-eligible heads (PAM on CUDA).
"""

from attnseg.ops.channel import channel_attention, channel_weights, flushed_softmax
from attnseg.ops.criss_cross import criss_cross, criss_cross_weights, lines, memory_format
from attnseg.ops.query_blocks import query_block_attention
from attnseg.ops.shared_heads import shared_key_heads

__all__ = [
    "channel_attention",
    "channel_weights",
    "criss_cross",
    "criss_cross_weights",
    "flushed_softmax",
    "lines",
    "memory_format",
    "query_block_attention",
    "shared_key_heads",
]
