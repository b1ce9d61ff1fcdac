"""A trained image classifier turned fully convolutional (Lab 1, exercise 2.2).

`to_fcn(model, input_shape)` returns a net that maps an image of any size H x W (at least the
training size) to a grid of class scores, one per window of the training size, with the same
weights:

- MLP: the first Linear layer over the flattened C x H x W image becomes a conv with an H x W
  kernel; later Linear layers become 1x1 convs; BatchNorm1d becomes BatchNorm2d with its statistics.
- CNN, original head: the final adaptive max-pool to 2x2 becomes the fixed max-pool it was at the
  training size; the first FC layer over the 2x2 map becomes a 2x2 conv, the later ones 1x1 convs.
- CNN, GAP head: the global average becomes an average over windows of the last map's training
  size (stride 1) and the linear layer a 1x1 conv. `gap="none"` drops the pooling instead, for
  one score per feature-map cell (the class activation map plus the bias).

On an input of the training size the grid is 1 x 1 and equals the classifier's logits (tested).
On a larger one, cell (i, j) scores the window at (i * stride, j * stride): `FCN.stride` pixels
apart. Padding inside the CNN means a window's score is close to, not exactly, the classifier's
on the crop (exact for the MLP).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

from dla.errors import DlaError
from dla.models.cnn import CNN
from dla.models.registry import Classifier


def _conv_from_linear(linear: nn.Linear, in_channels: int, kernel: tuple[int, int]) -> nn.Conv2d:
    conv = nn.Conv2d(in_channels, linear.out_features, kernel, bias=linear.bias is not None)
    with torch.no_grad():
        conv.weight.copy_(linear.weight.view(linear.out_features, in_channels, *kernel))
        if linear.bias is not None:
            conv.bias.copy_(linear.bias)
    return conv


def _bn2d(bn: nn.BatchNorm1d) -> nn.BatchNorm2d:
    out = nn.BatchNorm2d(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
    out.load_state_dict(bn.state_dict())
    return out


def _convert_head(layers: list[nn.Module], in_channels: int, kernel: tuple[int, int]) -> list[nn.Module]:
    """Linear layers (the first over a C x kh x kw input) as convs; ReLU, Dropout and BatchNorm kept."""
    out: list[nn.Module] = []
    first = True
    channels = in_channels
    for layer in layers:
        if isinstance(layer, nn.Flatten):
            continue
        if isinstance(layer, nn.Linear):
            out.append(_conv_from_linear(layer, channels, kernel if first else (1, 1)))
            channels, first = layer.out_features, False
        elif isinstance(layer, nn.BatchNorm1d):
            out.append(_bn2d(layer))
        elif isinstance(layer, (nn.ReLU, nn.Dropout)):
            out.append(layer)
        else:
            raise DlaError(f"cannot make {type(layer).__name__} fully convolutional")
    return out


class FCN(nn.Module):
    """`normalize`, then `body`: (B, C, H, W) images in [0, 1] -> (B, classes, h, w) scores."""

    def __init__(self, normalize: nn.Module, body: nn.Sequential, window: tuple[int, int], stride: int):
        super().__init__()
        self.normalize = normalize
        self.body = body
        self.window = window  # (h, w) of the training images: what one output cell looks at
        self.stride = stride  # pixels between neighbouring cells

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if h < self.window[0] or w < self.window[1]:
            raise DlaError(f"image of {w}x{h} px is smaller than the {self.window[1]}x{self.window[0]} the net was trained on")
        return self.body(self.normalize(x))


def _feature_size(features: nn.Module, pool: nn.Module, input_shape: tuple[int, int, int]) -> tuple[int, int]:
    """The spatial size of the map that reaches `pool` for one input of `input_shape`."""
    seen: list[tuple[int, int]] = []
    hook = pool.register_forward_pre_hook(lambda _m, args: seen.append(tuple(args[0].shape[-2:])))
    try:
        with torch.no_grad():
            features(torch.zeros(1, *input_shape))
    finally:
        hook.remove()
    return seen[0]


def _cnn_stride(net: CNN) -> int:
    return 2 ** sum(isinstance(m, nn.MaxPool2d) for m in net.features.modules())


def to_fcn(model: nn.Module, input_shape: tuple[int, int, int], gap: Literal["window", "none"] = "window") -> FCN:
    """The fully-convolutional twin of a trained `Classifier` (MLP or CNN), in eval mode."""
    if not isinstance(model, Classifier):
        raise DlaError("to_fcn needs a dla image classifier (normalisation + net)")
    was_training = model.training
    model.eval()
    net = model.net
    c, h, w = input_shape
    if isinstance(net, CNN):
        features = list(net.features.children())
        head = list(net.head.children())
        if isinstance(head[0], nn.AdaptiveAvgPool2d):  # GAP head
            with torch.no_grad():
                fh, fw = net.features(torch.zeros(1, *input_shape)).shape[-2:]
            pool = [nn.AvgPool2d((fh, fw), stride=1)] if gap == "window" else []
            body = [*features, *pool, _conv_from_linear(head[-1], head[-1].in_features, (1, 1))]
            stride = _cnn_stride(net)
        else:  # the original head: the last block ends in AdaptiveMaxPool2d(2)
            last = features[-1]
            adaptive = last.body[-1]
            if not isinstance(adaptive, nn.AdaptiveMaxPool2d):
                raise DlaError("expected the CNN's last block to end in an adaptive max-pool")
            fh, fw = _feature_size(net.features, adaptive, input_shape)
            out = adaptive.output_size if isinstance(adaptive.output_size, tuple) else (adaptive.output_size,) * 2
            if fh % out[0] or fw % out[1]:  # uneven adaptive windows: kernel ceil(n/k), stride floor(n/k)
                kernel = (math.ceil(fh / out[0]), math.ceil(fw / out[1]))
                pool_stride = (fh // out[0], fw // out[1])
            else:
                kernel = pool_stride = (fh // out[0], fw // out[1])
            if pool_stride[0] != pool_stride[1]:
                raise DlaError(f"non-square training images ({w}x{h}) are not supported by to_fcn for this CNN")
            fixed_last = nn.Sequential(*list(last.body.children())[:-1], nn.MaxPool2d(kernel, pool_stride))
            linear = head[1]
            channels = linear.in_features // (out[0] * out[1])
            body = [*features[:-1], fixed_last, *_convert_head(head, channels, out)]
            stride = _cnn_stride(net) * pool_stride[0]
    else:
        layers = list(net.children()) if isinstance(net, nn.Sequential) else []
        if not layers or not isinstance(layers[0], nn.Flatten) or not any(isinstance(m, nn.Linear) for m in layers):
            raise DlaError(f"cannot make {type(net).__name__} fully convolutional: an MLP or a dla CNN is needed")
        body = _convert_head(layers, c, (h, w))
        stride = 1
    fcn = FCN(model.normalize, nn.Sequential(*body), (h, w), stride).eval()
    model.train(was_training)
    return fcn
