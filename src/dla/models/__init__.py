"""Models by name: `MODELS[name]` holds the config dataclass and the builder."""

from dla.models import cnn, detector, embedding, encoder, gpt, mlp, policy, textpairs  # noqa: F401  (register "cnn", "dense-fcn", "embed-cnn", "hf-encoder", "gpt", "mlp",
#   "policy-*", "hf-bi-encoder", "hf-choice-ranker", "hf-multiple-choice")
from dla.models.registry import (
    MODELS,
    Classifier,
    Normalize,
    build_model,
    count_parameters,
    register_model,
)

__all__ = ["MODELS", "Classifier", "Normalize", "build_model", "count_parameters", "register_model"]
