"""The multiple-choice kind (Lab 2, exercise 3.2): score each option for a context, pick the best.

Offline: AG News, an article's description as the context and its title among `data.options`
titles of the same topic (`lab2-multiple-choice`: a trained head on the frozen encoder with a margin
ranking loss, the course's suggestion; `lab2-multiple-choice-finetune`: the whole encoder with a
multiple-choice head). Online: SWAG (`lab2-multiple-choice-swag`). The test pass also scores the
frozen encoder's cosine, the number training has to beat, beside chance.
"""

from __future__ import annotations

from dla.config import ChoiceDataConfig
from dla.errors import ConfigError
from dla.kind import Column, RunKind, register_kind

MULTIPLE_CHOICE = "multiple-choice"


@register_kind
class MultipleChoiceKind(RunKind):
    name = MULTIPLE_CHOICE
    title = "multiple-choice model"
    data_config = ChoiceDataConfig
    models = ("hf-choice-ranker", "hf-multiple-choice")
    table_columns = (("run", "name", "str"), ("data", "data", "str"), ("model", "model", "str"),
                     ("test acc (%)", "test_acc", "pct"), ("frozen cosine acc (%)", "frozen_cosine_acc", "pct"),
                     ("chance (%)", "chance_acc", "pct"), ("time (s)", "train_time_s", "time"))
    sweep_columns = (("Run", "name", "str"), ("test acc (%)", "test_acc", "pct"), ("best epoch", "best_epoch", "int"),
                     ("time (s)", "train_time_s", "time"))
    report_columns = (Column("test acc (%)", "test_acc", "pct", True),
                      Column("frozen cosine acc (%)", "frozen_cosine_acc", "pct", True),
                      Column("chance (%)", "chance_acc", "pct"), Column("test loss", "test_loss", "float", False),
                      Column("params", "params", "int"), Column("trained params", "trainable_params", "int"),
                      Column("train time (s)", "train_time_s", "time"))
    fallback = Column("best val acc (%)", "best_val_acc", "pct", True)

    def check(self, cfg):
        super().check(cfg)
        if cfg.train.monitor not in ("val_acc", "val_loss"):
            raise ConfigError(f"train.monitor: a multiple-choice model is monitored by val_acc or val_loss, "
                              f"not {cfg.train.monitor}")
        if cfg.train.adversarial != "none" or cfg.train.label_smoothing:
            raise ConfigError("train.adversarial and train.label_smoothing are for classifiers, not a multiple-choice model")

    def load_data(self, cfg, data_root, run=None, quiet=False):
        from dla.data.textpairs import load_choices

        data = load_choices(cfg.data, data_root)
        if not quiet:
            print(f"data: {data.source}; " + ", ".join(f"{k} {v}" for k, v in data.describe().items()))
        return data

    def make_task(self, cfg, data):
        from dla.hub import pretrained_tokenizer
        from dla.models import MODELS
        from dla.models.textpairs import BiEncoderConfig, MultipleChoice
        from dla.train.textpairs import ChoiceTask

        n = len(data.splits["train"])
        if cfg.train.batch_size > n:
            raise ConfigError(f"train.batch_size={cfg.train.batch_size} exceeds the {n} training questions")
        pairs = cfg.model.name == "hf-multiple-choice"
        loss, margin = (MultipleChoice.loss, 0.0) if pairs else ("margin", cfg.model.margin)
        frozen_cfg = BiEncoderConfig(pretrained=cfg.model.pretrained)
        frozen = (lambda: MODELS["hf-bi-encoder"].build(frozen_cfg, (), 0)) if cfg.data.baselines else None
        return ChoiceTask(data, pretrained_tokenizer(cfg.model.pretrained), cfg.data.max_length, pairs, loss, margin,
                          frozen, cfg.data.group_by_length)

    def build_model(self, cfg):
        from dla.models import MODELS

        return MODELS[cfg.model.name].build(cfg.model, (), 0)

    def finish(self, model, run, cfg, task, tracker, step):
        """A bar plot of the test accuracy against the frozen encoder's cosine and chance."""
        from dla.manifest import PLOTS_TITLE, write_manifest
        from dla.report.plots import plot_bars

        groups = {"trained": {"test accuracy": task.test_acc}}
        if "frozen_cosine_acc" in task.baselines:
            groups = {"frozen encoder, cosine": {"test accuracy": task.baselines["frozen_cosine_acc"]}, **groups}
        plot_bars(groups, run.plots / "choice.png", f"{cfg.name} ({cfg.model.name}): {len(task.data.splits['test'])} "
                  f"test questions, {task.n} options", "accuracy", ("chance", 1 / task.n))
        write_manifest(run.plots, "plots", PLOTS_TITLE,
                       [{"file": "choice.png", "caption": "test accuracy against the frozen encoder and chance"}])

    def eval_line(self, run, cfg, data, task, test):
        line = (f"{run.path}: {data.source}: {len(data.splits['test'])} test questions: accuracy {test['acc']:.4f} "
                f"(chance {1 / task.n:.4f})")
        if "frozen_cosine_acc" in task.baselines:
            line += f", frozen encoder cosine {task.baselines['frozen_cosine_acc']:.4f}"
        return dict(task.baselines), line
