"""The language-model kind (Lab 2.1): a GPT trained from scratch on a text corpus (the Inferno)."""

from __future__ import annotations

from dla.config import TextDataConfig
from dla.data.text import build_text_data, load_corpus, load_tokenizer
from dla.errors import ConfigError
from dla.kind import LANGUAGE_MODEL, Column, RunKind, register_kind
from dla.models import MODELS


@register_kind
class LanguageModel(RunKind):
    name = LANGUAGE_MODEL
    title = "language model"
    data_config = TextDataConfig
    models = ("gpt",)
    commands = frozenset({"dla generate"})
    unit = "round"
    table_columns = (("run", "name", "str"), ("data", "data", "str"), ("params", "params", "int"),
                     ("best step", "best_step", "str"), ("best val loss", "best_val_loss", "float"),
                     ("test loss (nats/token)", "test_loss", "float"), ("test bits/char", "test_bpc", "float"),
                     ("time (s)", "train_time_s", "time"))
    sweep_columns = (("Net", "name", "str"), ("test loss (nats/token)", "test_loss", "float"),
                     ("last-position loss", "test_last_pos_loss", "float"), ("test bits/char", "test_bpc", "float"),
                     ("best val loss", "best_val_loss", "float"), ("params", "params", "int"),
                     ("steps to best", "best_step", "str"), ("steps run", "steps", "str"),
                     ("time (s)", "wall_time_s", "time"))
    report_columns = (Column("test loss (nats/token)", "test_loss", "float", False),
                      Column("test bits/char", "test_bpc", "float", False),
                      Column("best val loss", "best_val_loss", "float", False), Column("best step", "best_step", "int"),
                      Column("params", "params", "int"), Column("time (s)", "wall_time_s", "time"))
    fallback = Column("best val loss", "best_val_loss", "float", False)

    def check(self, cfg):
        if cfg.model.name != "gpt":
            raise ConfigError(f"data.name={cfg.data.name} is text: it needs model.name=gpt, not {cfg.model.name}")
        if cfg.train.max_steps is None:
            raise ConfigError("language models train for a number of steps: set train.max_steps (e.g. 5000)")
        if cfg.train.monitor not in ("val_loss", "val_bpc"):
            raise ConfigError("language models have no accuracy: set train.monitor=val_loss")
        super().check(cfg)

    def load_data(self, cfg, data_root, run=None, quiet=False):
        d = cfg.data
        tokenizer = load_tokenizer(run.tokenizer) if run is not None else None
        text, source = load_corpus(d.name, data_root, d.path, d.download)
        return build_text_data(text, source, d.splits, d.tokenizer, d.vocab_size, d.min_frequency, tok=tokenizer)

    def describe_data(self, data):
        return data.describe()

    def make_task(self, cfg, data):
        from dla.train.tasks import LMTask

        vocab, block = data.tokenizer.vocab_size, cfg.data.block_size
        if cfg.model.vocab_size not in (None, vocab):
            raise ConfigError(f"model.vocab_size={cfg.model.vocab_size} differs from the tokenizer's {vocab}; leave it unset")
        if cfg.model.block_size is not None and cfg.model.block_size < block:
            raise ConfigError(f"model.block_size={cfg.model.block_size} is shorter than data.block_size={block}, "
                              f"the training windows; leave it unset or make it >= {block}")
        cfg.model.vocab_size = vocab
        cfg.model.block_size = cfg.model.block_size or block
        return LMTask(data, block, cfg.seed)

    def build_model(self, cfg):
        return MODELS[cfg.model.name].build(cfg.model, (cfg.data.block_size,), cfg.model.vocab_size)

    def class_names(self, cfg):
        raise ConfigError("a language model has a vocabulary, not classes")

    def callbacks(self, cfg, data, data_root):
        if not cfg.train.grad_stats_every:
            return []
        from dla.analysis.gradients import GradientStats

        return [GradientStats(cfg.train.grad_stats_every)]

    def on_create(self, run, data):
        data.tokenizer.save(run.tokenizer)

    def finish(self, model, run, cfg, task, tracker, step):
        """A 500-character sample from the best weights, to sample.txt and the tracker."""
        from dla.generation import default_prompt, sample_text

        text = sample_text(model, task.data.tokenizer, default_prompt(cfg), chars=500, seed=cfg.seed)
        run.sample.write_text(text)
        tracker.text("sample", text, step)
        print(f"\nsample ({run.sample}):\n{text}\n")
        if getattr(model, "moe_layers", None):  # the experts' shares at every evaluation
            from dla.manifest import PLOTS_TITLE, write_manifest
            from dla.report.plots import plot_routing

            plot_routing(run.read_metrics(), model.moe_layers, cfg.model.moe_experts, run.plots / "routing.png",
                         f"{cfg.name}: {cfg.model.moe_experts} experts, top-{cfg.model.moe_top_k}")
            write_manifest(run.plots, "plots", PLOTS_TITLE,
                           [{"file": "routing.png", "caption": "Mixture-of-Experts routing: each expert's share"}])

    def summary(self, cfg, data):
        return {"test_split": "val (two-way split)"} if data.test_is_val else {}

    def eval_line(self, run, cfg, data, task, test):
        line = f"{run.path}: {data.source} test loss {test['loss']:.4f} nats/token, {test['bpc']:.4f} bits/char"
        if "last_pos_loss" in test:
            line += (f"; last-position loss of {cfg.data.block_size}-token windows {test['last_pos_loss']:.4f} "
                     f"({test['last_pos_windows']:,} windows scored, standard error {test['last_pos_se']:.4f})")
        return {}, line
