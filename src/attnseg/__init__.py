"""attnseg: attention heads for semantic segmentation (DANet, CCNet, FLANet, DFN) on a dilated timm encoder."""

__version__ = "0.1.0"
