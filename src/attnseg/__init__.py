"""attnseg: attention heads for semantic segmentation (DANet, CCNet, FLANet, DFN) on a dilated timm encoder."""

__version__ = "0.1.0"


def __getattr__(name: str):
    """``from attnseg import Segmenter`` (imported on first use: ``import attnseg`` stays light)."""
    if name == "Segmenter":
        from attnseg.segmenter import Segmenter

        return Segmenter
    raise AttributeError(f"module 'attnseg' has no attribute {name!r}")
