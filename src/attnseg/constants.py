"""Values every part of the package agrees on."""

# ImageNet's input normalisation (timm's and torchvision's): the default where an encoder's weights name no other
# (attnseg.weights.normalization)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MONITOR = "val/mIoU"  # the score a fit is judged by: the best checkpoint, the run summary, schedulers on plateau
IGNORE_INDEX = 255  # the void label: datasets map unlabelled pixels to it; losses and metrics skip it
# The signals that ask a fit to stop (a scheduler ending the job; SLURM's warning before preemption). The main process
# handles them (attnseg.interruption.Interruption); DataLoader workers ignore them unless the main process sends them
# (attnseg.signals.ignore_stop_signals).
STOP_SIGNALS = ("SIGTERM", "SIGUSR1")
# Up to this many classes, the per-class IoU is also one series (chart) per class on the loggers; beyond (ADE20K's 150,
# COCO-Stuff's 171) only the IoU table (attnseg.callbacks.ClassTables) holds it: a chart per class would bury the rest.
MAX_CLASS_SERIES = 20


def class_series(num_classes: int) -> bool:
    """Whether the per-class IoU of ``num_classes`` classes goes to the loggers as one series per class."""
    return num_classes <= MAX_CLASS_SERIES
