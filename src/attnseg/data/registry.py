"""The datasets ``data.dataset`` can name without a module path."""

from attnseg.data.ade20k import ADE20K
from attnseg.data.camvid import CamVid
from attnseg.data.cityscapes import Cityscapes
from attnseg.data.coco_stuff import COCOStuff
from attnseg.data.frame_folders import FrameFolders
from attnseg.data.pascal_context import PascalContext
from attnseg.data.synthetic import SyntheticShapes
from attnseg.data.synthetic_clips import SyntheticClips
from attnseg.data.voc import VOC

DATASETS = {
    "SyntheticShapes": SyntheticShapes,
    "SyntheticClips": SyntheticClips,
    "CamVid": CamVid,
    "Cityscapes": Cityscapes,
    "VOC": VOC,
    "ADE20K": ADE20K,
    "PascalContext": PascalContext,
    "COCOStuff": COCOStuff,
    "FrameFolders": FrameFolders,
}
