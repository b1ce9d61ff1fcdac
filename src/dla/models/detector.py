"""A fully-convolutional digit detector trained densely on canvases (Lab 1, exercise 2.2, its second half).

Where `dla.models.fcn` turns a 28x28 classifier into a net that slides over an image, this net is
trained on the dense task itself, in the context it will see: canvases of many digits of 12-64 px.
It is a centre-plus-size detector in the manner of CenterNet (Zhou et al., "Objects as Points",
2019), small enough for a CPU:

    encoder   conv3x3 stride 2 (1 -> w), then four stages, each a stride-2 conv3x3 and a conv3x3
              (widths 2w, 4w, 8w, 8w; strides 4, 8, 16, 32); BN and ReLU after every conv
    decoder   a feature pyramid (lateral 1x1 convs to `fpn` channels, nearest upsampling, sums)
              back to stride 4, one conv3x3
    head      conv3x3 + ReLU, then a 1x1 conv to `classes` centre heatmaps, 2 log-sizes and 2 offsets

One forward pass per image, whatever the digit size: the stride-16 and stride-32 maps see the
largest digits whole, the stride-4 map places the smallest. Every cell of the stride-4 output says
"a digit of class k is centred in this cell" (heatmap logit), how far into the cell the centre
lies (offset in [0, 1) of a cell) and the digit's width and height (log of size / stride).
Targets, the loss and the decoding into boxes are in `dla.analysis.dense_detect`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dla.errors import ConfigError
from dla.models.registry import register_model

STRIDE = 4  # pixels per output cell
HEAT_PRIOR = 0.01  # the heatmap's initial probability everywhere (focal-loss init, Lin et al. 2017)


@dataclass
class DenseDetectorConfig:
    name: str = "dense-fcn"
    width: int = 16  # channels of the stride-2 map; the stages use 2w, 4w, 8w, 8w
    fpn: int = 48  # channels of the pyramid and the head

    def validate(self) -> None:
        if not 1 <= self.width <= 512 or not 1 <= self.fpn <= 1024:
            raise ConfigError(f"model.width and model.fpn: must be in [1, 512] and [1, 1024], got {self.width}, {self.fpn}")


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class DenseDetector(nn.Module):
    """(B, C, H, W) images in [0, 1] (H, W multiples of 32 are best; others are padded) -> the raw head
    (B, classes + 4, ceil(H/4), ceil(W/4)): heatmap logits, then log-width, log-height, x and y offsets."""

    stride = STRIDE

    def __init__(self, normalize: nn.Module, in_channels: int, classes: int, width: int = 16, fpn: int = 48):
        super().__init__()
        self.normalize = normalize
        self.classes = classes
        widths = (2 * width, 4 * width, 8 * width, 8 * width)
        self.stem = _conv(in_channels, width, 2)
        stages, cin = [], width
        for w in widths:
            stages.append(nn.Sequential(_conv(cin, w, 2), _conv(w, w)))
            cin = w
        self.stages = nn.ModuleList(stages)
        self.lateral = nn.ModuleList(nn.Conv2d(w, fpn, 1) for w in widths)
        self.smooth = _conv(fpn, fpn)
        self.head = nn.Sequential(nn.Conv2d(fpn, fpn, 3, 1, 1), nn.ReLU(inplace=True), nn.Conv2d(fpn, classes + 4, 1))
        with torch.no_grad():
            last = self.head[-1]
            last.weight.mul_(0.1)
            last.bias.zero_()
            last.bias[:classes] = -torch.log(torch.tensor((1 - HEAT_PRIOR) / HEAT_PRIOR))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        ph, pw = -h % 32, -w % 32
        if ph or pw:  # pad with black to a multiple of the coarsest stride
            x = F.pad(x, (0, pw, 0, ph))
        feats, y = [], self.stem(self.normalize(x))
        for stage in self.stages:
            y = stage(y)
            feats.append(y)
        top = self.lateral[-1](feats[-1])
        for lateral, f in zip(reversed(self.lateral[:-1]), reversed(feats[:-1])):
            top = lateral(f) + F.interpolate(top, size=f.shape[-2:], mode="nearest")
        out = self.head(self.smooth(top))
        return out[..., : -(-h // STRIDE), : -(-w // STRIDE)]


@register_model("dense-fcn", DenseDetectorConfig)
def build_dense_detector(cfg: DenseDetectorConfig, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """The bare net; `dla.kinds.detector` puts the data set's normalisation in front of it."""
    return DenseDetector(nn.Identity(), input_shape[0], num_classes, cfg.width, cfg.fpn)
