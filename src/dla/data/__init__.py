"""Data sets held in memory as uint8 tensors, and batches built from them with tensor ops."""

from dla.data.batches import eval_batches, train_batches
from dla.data.vision import SPECS, ImageData, default_data_root, import_dataset, load_image_data, locate

__all__ = [
    "SPECS",
    "ImageData",
    "default_data_root",
    "eval_batches",
    "import_dataset",
    "load_image_data",
    "locate",
    "train_batches",
]
