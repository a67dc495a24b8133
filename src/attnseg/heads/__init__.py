"""Segmentation heads, one file per paper; the attention module sits above the head that uses it.

Select one with ``--model.head=attnseg.heads.<Name>`` (or ``class_path`` in YAML).
"""

from attnseg.heads.fcn import AuxHead, FCNHead

__all__ = ["AuxHead", "FCNHead"]
