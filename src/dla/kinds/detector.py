"""The digit-detector kind (Lab 1, exercise 2.2): a fully-convolutional net trained densely on canvases.

`dla train lab1-fcn-dense` trains `dense-fcn` (dla.models.detector) on canvases made afresh every
epoch from the training digits (dla.analysis.detect_task). Its test calibrates the scores on
validation canvases and scores every layout group of `dla.data.canvas.LAYOUTS`; the run keeps
the calibration and the default threshold in `detector.json` (`RunDir.detector`), which `dla detect RUN` reads, and
draws the reliability diagram and a crowded test canvas into plots/.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from dla.config import DetectionDataConfig
from dla.errors import ConfigError
from dla.kind import Column, RunKind, register_kind

DIGIT_DETECTOR = "digit-detector"


@dataclass
class DetectionData:
    """The digits (train / val / test splits of an MNIST-family set) and the training canvases' settings."""

    digits: Any  # dla.data.vision.ImageData
    canvases: DetectionDataConfig

    @property
    def source(self) -> str:
        return f"{self.digits.source} digits on canvases"

    @property
    def test_source(self) -> str:
        return self.source


@register_kind
class DigitDetector(RunKind):
    name = DIGIT_DETECTOR
    title = "digit detector"
    data_config = DetectionDataConfig
    models = ("dense-fcn",)
    commands = frozenset({"dla detect"})
    table_columns = (("run", "name", "str"), ("data", "data", "str"), ("params", "params", "int"),
                     ("test F1 (%)", "test_f1", "pct"), ("test mAP@0.5 (%)", "test_map50", "pct"),
                     ("threshold", "test_threshold", "float"), ("time (s)", "train_time_s", "time"))
    sweep_columns = (("Run", "name", "str"), ("test F1", "test_f1", "pct"), ("test mAP@0.5", "test_map50", "pct"),
                     ("best epoch", "best_epoch", "int"), ("time (s)", "train_time_s", "time"))
    report_columns = (Column("test F1 (%)", "test_f1", "pct", True), Column("test mAP@0.5 (%)", "test_map50", "pct", True),
                      Column("F1 crowded (%)", "test_f1_crowded", "pct", True),
                      Column("F1 small (%)", "test_f1_small", "pct", True),
                      Column("threshold", "test_threshold", "float"), Column("params", "params", "int"),
                      Column("train time (s)", "train_time_s", "time"))
    fallback = Column("best val mAP@0.5 (%)", "best_val_map50", "pct", True)
    curve_metrics = ("val_map50", "val_loss")

    def check(self, cfg):
        super().check(cfg)
        if cfg.train.monitor.removeprefix("val_") not in ("loss", "map50", "f1", "precision", "recall"):
            raise ConfigError(f"train.monitor: a detector is monitored by val_map50, val_f1, val_loss, val_precision "
                              f"or val_recall, not {cfg.train.monitor}")
        if cfg.train.adversarial != "none" or cfg.train.label_smoothing:
            raise ConfigError("train.adversarial and train.label_smoothing are for classifiers, not a digit detector")
        if cfg.train.batch_size > cfg.data.canvases:
            raise ConfigError(f"train.batch_size={cfg.train.batch_size} exceeds the {cfg.data.canvases} training "
                              f"canvases of an epoch (data.canvases)")

    def load_data(self, cfg, data_root, run=None, quiet=False):
        from dla.data.vision import load_image_data

        d = cfg.data
        return DetectionData(load_image_data(d.name, data_root, d.val_size, d.split_seed, d.train_subset, None,
                                             d.download), d)

    def describe_data(self, data):
        d, digits = data.canvases, data.digits
        return (f"{digits.source} digits ({len(digits.train)} train / {len(digits.val)} val / {len(digits.test)} test), "
                f"{d.canvases} new {d.canvas}x{d.canvas} canvases an epoch, {d.digits[0]}-{d.digits[1]} digits "
                f"at {d.digit_sizes[0]}-{d.digit_sizes[1]} px, {round(100 * d.packed)}% packed {d.gap} px apart")

    def make_task(self, cfg, data):
        from dla.analysis.detect_task import DetectionTask

        return DetectionTask(data.digits, cfg.data, len(self.class_names(cfg)))

    def build_model(self, cfg):
        from dla.data.vision import get_spec
        from dla.models import MODELS, Normalize

        spec = get_spec(cfg.data.name)
        net = MODELS[cfg.model.name].build(cfg.model, spec.shape, len(spec.classes))
        net.normalize = Normalize(spec.mean, spec.std)
        return net

    def class_names(self, cfg):
        from dla.data.vision import get_spec

        return get_spec(cfg.data.name).classes

    def summary(self, cfg, data):
        return {"classes": list(self.class_names(cfg))}

    def finish(self, model, run, cfg, task, tracker, step):
        """detector.json (calibration, default threshold), the reliability diagram and a crowded test canvas."""
        from dla.io import atomic_text
        from dla.manifest import PLOTS_TITLE, write_manifest

        atomic_text(run.detector, json.dumps(task.detector, indent=2) + "\n")
        figures = []
        if task.reliability is not None:
            from dla.analysis.detect_study import plot_reliability

            plot_reliability(*task.reliability, task.detector["threshold"], run.plots / "reliability.png",
                             f"{cfg.name}: test detections of every layout group")
            figures.append({"file": "reliability.png", "caption": "calibrated score against the share of right "
                            "detections (test canvases)"})
        if task.examples is not None:
            from dla.analysis.detect_study import plot_examples

            canv, preds = task.examples
            plot_examples(canv.images[:8], list(zip(canv.boxes[:8], canv.labels[:8])), preds[:8], self.class_names(cfg),
                          run.plots / "detections.png",
                          f"crowded test canvases at the default threshold {task.detector['threshold']:.2f}")
            figures.append({"file": "detections.png", "caption": "crowded test canvases: detections (red), true boxes "
                            "(green)"})
        write_manifest(run.plots, "plots", PLOTS_TITLE, figures)

    def eval_line(self, run, cfg, data, task, test):
        from dla.data.canvas import LAYOUTS

        groups = "  ".join(f"{g} {100 * test[f'f1_{g}']:.1f}" for g in LAYOUTS)
        return ({"detector": task.detector},
                f"{run.path}: test F1 {100 * test['f1']:.2f}%  mAP@0.5 {100 * test['map50']:.2f}% at threshold "
                f"{test['threshold']:.2f}; F1 by layout: {groups}")
