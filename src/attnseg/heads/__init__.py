"""Segmentation heads, one file per paper; the attention module sits above the head that uses it. The contract
they all follow is ``attnseg.heads.base.SegHead``.

Select one with ``--model.head=attnseg.heads.<Name>`` (or ``class_path`` in YAML), or by its config
(``--config model/<name>``); ``head_configs()`` lists the shipped heads from those configs (``attnseg.heads.registry``).
"""

from attnseg.heads.aspp import ASPPHead
from attnseg.heads.base import AuxHead, QKVAttention, SegClassifier, SegHead
from attnseg.heads.ccnet import CCNetHead, CrissCrossAttention, CrissCrossAttention3D
from attnseg.heads.danet import ChannelAttention, DANetHead, PositionAttention
from attnseg.heads.dfn import ChannelAttentionBlock, DFNHead, RefinementResidualBlock
from attnseg.heads.fcn import FCNHead
from attnseg.heads.flanet import FLANetHead, FullyAttentionalBlock
from attnseg.heads.psp import PSPHead
from attnseg.heads.registry import HeadConfig, head_configs

__all__ = [
    "ASPPHead",
    "AuxHead",
    "CCNetHead",
    "ChannelAttention",
    "ChannelAttentionBlock",
    "CrissCrossAttention",
    "CrissCrossAttention3D",
    "DANetHead",
    "DFNHead",
    "FCNHead",
    "FLANetHead",
    "FullyAttentionalBlock",
    "HeadConfig",
    "PSPHead",
    "PositionAttention",
    "QKVAttention",
    "RefinementResidualBlock",
    "SegClassifier",
    "SegHead",
    "head_configs",
]
