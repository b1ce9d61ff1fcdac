"""The image-classifier kind (Labs 1 and 3): MLPs and CNNs on MNIST, Fashion-MNIST and CIFAR-10."""

from __future__ import annotations

from dla.config import DataConfig, load_run_config
from dla.data.vision import get_spec, input_shape, load_image_data
from dla.errors import ConfigError, WrongRunKind
from dla.kind import IMAGE_CLASSIFIER, Column, RunKind, register_kind
from dla.models import build_model
from dla.rundir import RunDir
from dla.train.checkpoint import load_weights


@register_kind
class ImageClassifier(RunKind):
    name = IMAGE_CLASSIFIER
    title = "image classifier"
    data_config = DataConfig
    models = ()  # any registered image model (the language and text kinds' models are refused in check)
    commands = frozenset({"dla predict", "dla ood", "dla attack", "dla cam", "dla detect"})
    table_columns = (("run", "name", "str"), ("data", "data", "str"), ("params", "params", "int"),
                     ("best epoch", "best_epoch", "str"), ("test acc (%)", "test_acc", "pct"),
                     ("test loss", "test_loss", "float"), ("time (s)", "train_time_s", "time"))
    sweep_columns = (("Net", "name", "str"), ("Accuracy", "test_acc", "pct"), ("Loss", "test_loss", "float"),
                     ("params", "params", "int"), ("best epoch", "best_epoch", "str"),
                     ("epochs run", "epochs_run", "str"), ("time (s)", "train_time_s", "time"), ("data", "data", "str"))
    report_columns = (Column("test acc (%)", "test_acc", "pct", True), Column("test loss", "test_loss", "float", False),
                      Column("best epoch", "best_epoch", "int"), Column("epochs", "epochs_run", "int"),
                      Column("params", "params", "int"), Column("train time (s)", "train_time_s", "time"))
    fallback = Column("best val acc (%)", "best_val_acc", "pct", True)

    def check(self, cfg):
        if cfg.model.name in ("gpt", "hf-encoder", "policy-mlp", "policy-cnn", "dense-fcn", "embed-cnn"):
            raise ConfigError(f"model.name={cfg.model.name} does not classify images; use mlp or cnn")
        if cfg.train.ood_every:  # OOD tracking is for image classifiers (RunKind.check refuses it)
            from dla.analysis.ood_tracking import check_ood_tracking  # scikit-learn: 2 s of start-up, only when used

            check_ood_tracking(cfg)
        if cfg.distill.teacher is not None:
            self.teacher_config(cfg)
        if cfg.train.jarn and (cfg.train.adversarial != "none" or cfg.distill.teacher is not None):
            raise ConfigError("train.jarn with train.adversarial or distill.teacher: choose one training objective")

    def teacher_config(self, cfg):
        """The teacher run and its config, checked against the student's: an image classifier of the same data
        and classes, with trained weights."""
        if cfg.train.adversarial != "none":
            raise ConfigError("distill.teacher with train.adversarial: choose one (the teacher scores clean images)")
        run = RunDir.open(cfg.distill.teacher)
        tcfg = load_run_config(run)
        if tcfg.kind != self.name:
            raise WrongRunKind(f"teacher={run.path}: a teacher must be an {self.name} run; this is a {tcfg.kind} run")
        same = ("name", "classes", "background_class", "canvas")
        differs = [k for k in same if getattr(tcfg.data, k, None) != getattr(cfg.data, k, None)]
        if differs:
            k = differs[0]
            raise ConfigError(f"teacher={run.path}: trained on data.{k}={getattr(tcfg.data, k)}, the student on "
                              f"{getattr(cfg.data, k)}; a teacher must classify the same images into the same classes")
        if not run.best_weights.is_file():
            raise ConfigError(f"teacher={run.path}: has no trained weights ({run.best_weights.name} missing): "
                              f"an unfinished run")
        return run, tcfg

    def load_data(self, cfg, data_root, run=None, quiet=False):
        d = cfg.data
        return load_image_data(d.name, data_root, d.val_size, d.split_seed, d.train_subset, d.test_subset, d.download,
                               d.classes, d.canvas, d.background_class)

    def describe_data(self, data):
        return f"{data.source}: {len(data.train)} train / {len(data.val)} val / {len(data.test)} test"

    def make_task(self, cfg, data):
        from dla.train.tasks import ImageTask

        if cfg.train.batch_size > len(data.train):
            raise ConfigError(f"train.batch_size={cfg.train.batch_size} exceeds the {len(data.train)} training images")
        teacher = None
        if cfg.distill.teacher is not None:
            run, tcfg = self.teacher_config(cfg)
            teacher = self.build_model(tcfg)
            load_weights(teacher, run.best_weights)
            teacher.eval()
            for p in teacher.parameters():
                p.requires_grad_(False)
        jarn = None
        if cfg.train.jarn:
            from dla.train.jarn import Jarn

            jarn = Jarn(input_shape(cfg)[0], cfg.train, cfg.seed)
        return ImageTask(data, cfg.data.augment, teacher, cfg.distill.temperature, cfg.distill.alpha, jarn)

    def summary(self, cfg, data):
        if cfg.distill.teacher is None:
            return {}
        import json

        run = RunDir.open(cfg.distill.teacher)
        teacher = json.loads(run.summary.read_text()) if run.summary.is_file() else {}
        return {"teacher": str(run.path), "teacher_params": teacher.get("params"), "teacher_test_acc": teacher.get("test_acc")}

    def build_model(self, cfg):
        spec = get_spec(cfg.data.name)
        return build_model(cfg.model, input_shape(cfg), len(self.class_names(cfg)), spec.mean, spec.std)

    def class_names(self, cfg):
        names = get_spec(cfg.data.name).classes
        names = tuple(names[i] for i in cfg.data.classes) if cfg.data.classes else names
        return (*names, "background") if cfg.data.background_class else names

    def callbacks(self, cfg, data, data_root):
        callbacks = []
        if cfg.train.grad_stats_every:
            from dla.analysis.gradients import GradientStats

            callbacks.append(GradientStats(cfg.train.grad_stats_every))
        if cfg.train.ood_every:
            from dla.analysis.ood_tracking import OODTracking

            callbacks.append(OODTracking.for_run(cfg, data, data_root))
        return callbacks

    predict_input = "image"

    def predict(self, model, cfg, run, inputs, top_k, invert=False):
        """Each image file read as the run's input (greyscale or RGB, resized), every one checked before the
        model runs, so one unreadable file (or a decompression bomb) fails with one line naming it."""
        import torch

        from dla.data.imagefile import read_image

        c, h, w = input_shape(cfg)
        images = [read_image(p, "L" if c == 1 else "RGB", (w, h)) for p in inputs]
        classes = self.class_names(cfg)
        x = torch.stack(images)
        with torch.inference_mode():
            probs = model(1.0 - x if invert else x).softmax(1)
        top = probs.topk(min(top_k, len(classes)), dim=1)
        return [(str(path), str(path), [(classes[i], float(v)) for v, i in zip(vals, idx)])
                for path, vals, idx in zip(inputs, top.values.tolist(), top.indices.tolist())]

    def eval_line(self, run, cfg, data, task, test):
        return {}, f"{run.path}: {data.source} test loss {test['loss']:.4f}  test acc {test['acc']:.4f}"
