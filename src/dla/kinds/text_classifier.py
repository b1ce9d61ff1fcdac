"""The text-classifier kind (Lab 2.3): a pretrained encoder fine-tuned for topic classification."""

from __future__ import annotations

from pathlib import Path

from dla.config import TopicDataConfig
from dla.errors import ConfigError
from dla.kind import TEXT_CLASSIFIER, Column, RunKind, register_kind
from dla.kinds.image import ImageClassifier
from dla.models import MODELS


@register_kind
class TextClassifier(RunKind):
    name = TEXT_CLASSIFIER
    title = "text classifier"
    data_config = TopicDataConfig
    models = ("hf-encoder",)
    commands = frozenset({"dla predict", "dla hf eval", "dla hf finetune", "dla hf features-baseline"})
    table_columns = ImageClassifier.table_columns  # a classifier's: accuracy and loss
    sweep_columns = ImageClassifier.sweep_columns
    report_columns = (Column("test acc (%)", "test_acc", "pct", True), Column("test macro-F1", "test_f1", "float", True),
                      Column("test loss", "test_loss", "float", False), Column("best epoch", "best_epoch", "int"),
                      Column("params", "params", "int"), Column("train time (s)", "train_time_s", "time"))
    fallback = Column("best val acc (%)", "best_val_acc", "pct", True)

    def check(self, cfg):
        if cfg.model.name != "hf-encoder":
            raise ConfigError(f"data.name={cfg.data.name} is topic classification: it needs model.name=hf-encoder "
                              f"(model.pretrained=minilm or a Hub id), not {cfg.model.name}")
        super().check(cfg)

    def load_data(self, cfg, data_root, run=None, quiet=False):
        from dla.data.topics import prepare_topics

        return prepare_topics(cfg.data, cfg.model.pretrained, data_root, None, quiet=quiet)

    def make_task(self, cfg, data):
        from dla.train.tasks import TextClassifierTask

        train_size = len(data.data.train)
        if cfg.train.batch_size > train_size:
            raise ConfigError(f"train.batch_size={cfg.train.batch_size} exceeds the {train_size} training texts")
        return TextClassifierTask(data, cfg.data.group_by_length)

    def build_model(self, cfg):
        return MODELS[cfg.model.name].build(cfg.model, (), len(self.class_names(cfg)))

    def class_names(self, cfg):
        from dla.data.topics import TOPIC_CLASSES

        return TOPIC_CLASSES[cfg.data.name]

    predict_input = "text"

    def predict(self, model, cfg, run, inputs, top_k, invert=False):
        import torch

        from dla.hub import pretrained_tokenizer, quiet_transformers

        quiet_transformers()
        tokenizer = pretrained_tokenizer(str(run.hf_model) if run.hf_model.is_dir() else cfg.model.pretrained)
        classes = self.class_names(cfg)
        enc = tokenizer(inputs, truncation=True, max_length=cfg.data.max_length or 512, padding=True, return_tensors="pt")
        with torch.inference_mode():
            probs = model(**enc).logits.float().softmax(1)
        top = probs.topk(min(top_k, len(classes)), dim=1)
        return [(text, text if len(text) <= 60 else text[:57] + "...", [(classes[i], float(v)) for v, i in zip(vals, idx)])
                for text, vals, idx in zip(inputs, top.values.tolist(), top.indices.tolist())]

    def finish(self, model, run, cfg, task, tracker, step):
        """`save_pretrained` of the best weights and the tokenizer (RUN/model), and the test confusion matrix."""
        from dla.models.encoder import save_pretrained
        from dla.manifest import PLOTS_TITLE, write_manifest
        from dla.report.plots import plot_confusion
        from dla.train.tasks import macro_f1

        model.config.id2label = dict(enumerate(task.classes))
        model.config.label2id = {c: i for i, c in enumerate(task.classes)}
        save_pretrained(model, task.inputs.tokenizer, run.path / "model")
        confusion = task.confusion["test"]
        acc = float(confusion.trace() / confusion.sum())
        plot_confusion(confusion.long().numpy(), task.classes, run.plots / "confusion.png",
                       f"{cfg.name}: test acc {100 * acc:.2f}%, macro-F1 {macro_f1(confusion):.4f}")
        write_manifest(run.plots, "plots", PLOTS_TITLE, [{"file": "confusion.png", "caption": "test confusion matrix"}])

    def prepare_eval(self, run, cfg):
        recorded = run.read_summary().get("data_files", {})
        if cfg.data.path is None and recorded.get("file") and Path(recorded["file"]).is_file():
            cfg.data.path = recorded["file"]  # the file the run was trained on, wherever this command runs

    def eval_line(self, run, cfg, data, task, test):
        from dla.report.tables import confusion_text

        n = len(data.data.test)
        return {"n": n}, (f"{run.path}: {data.source} test split ({n} texts): accuracy {test['acc']:.4f}  "
                          f"macro-F1 {test['f1']:.4f}  loss {test['loss']:.4f}\n"
                          + confusion_text(task.confusion["test"].long().numpy(), self.class_names(cfg)))
