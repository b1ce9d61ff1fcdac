"""Run kinds: what a run trains (an image classifier, a language model, a text classifier, ...).

A kind is one registered object, as a model is: `@register_kind` over a `RunKind` subclass. It owns
its data config class, how its data is loaded and described, its `Task`, the models it accepts, its
class names, its `dla eval` line, its headline metric and table columns, its callbacks, and the
commands that take its runs. `dla.build`, `dla.experiment`, `dla.sweep`, `dla.report` and the CLI
ask a run's kind (`kind_of(cfg)`) and never branch on it.

This module is the registry alone (it imports nothing of dla's but errors), so that it sits under
everything that asks it, `dla.config` included. The built-in kinds (`dla.kinds.image`,
`dla.kinds.language_model`, `dla.kinds.text_classifier`) stand above the engine they use, and are
imported by name on the first look-up, as are kinds other packages declare under the entry-point
group `dla.kinds`; a kind defined elsewhere registers when its module is imported. A config with no
`kind:` (runs written before kinds were declared) is told apart by `legacy_kind`, the one place that
still infers a kind.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from dla.errors import ConfigError, WrongRunKind


class Column(NamedTuple):
    """A report column: header, summary key, format (pct/float/int/time/str), higher is better (None: not a score)."""

    header: str
    key: str
    fmt: str
    higher: bool | None = None


class RunKind:
    """The interface every kind implements; `name`, `title`, `data_config` and the columns are required."""

    name: str = ""
    title: str = ""  # in words, e.g. "image classifier"
    data_config: type = object  # the dataclass of the config's data section
    models: tuple[str, ...] = ()  # model.name values this kind trains; () accepts any registered model
    commands: frozenset[str] = frozenset()  # commands beyond train, eval and report that take its runs
    unit = "epoch"  # what a round of the loop is called
    table_columns: tuple[tuple[str, str, str], ...] = ()  # (header, key, format) of the terminal tables
    sweep_columns: tuple[tuple[str, str, str], ...] = ()  # a sweep's table.md
    report_columns: tuple[Column, ...] = ()  # the report's columns; the first is the headline
    fallback: Column | None = None  # the headline of an unfinished run (no test metric yet)
    curve_metrics: tuple[str, ...] = ("val_acc", "val_loss")  # a sweep's curves.png: these, of every run

    def check(self, cfg: Any) -> None:
        """Everything about `cfg` that can be checked before any data is loaded or any file written."""
        if cfg.train.ood_every:
            raise ConfigError(f"train.ood_every: OOD tracking is for image classifiers, not a {self.name} run")
        if cfg.train.jarn:
            raise ConfigError(f"train.jarn: JARN regularises an image classifier's input Jacobian, not a {self.name} run")
        if cfg.distill != type(cfg.distill)():
            raise ConfigError(f"distill: knowledge distillation is for image classifiers (teacher=RUN), not a "
                              f"{self.name} run")
        if self.models and cfg.model.name not in self.models:
            raise ConfigError(f"kind {self.name} ({self.title}) trains model.name={' or '.join(self.models)}, "
                              f"not {cfg.model.name}")

    def load_data(self, cfg: Any, data_root: Any, run: Any = None, quiet: bool = False) -> Any:
        """The data `cfg` trains on; `run`: an existing run whose saved state (a tokenizer) is reused."""
        raise NotImplementedError

    def describe_data(self, data: Any) -> str:
        return data.source

    def make_task(self, cfg: Any, data: Any) -> Any:
        """The `Task` for the data, after checking that the config suits it (settings that follow from the
        data, e.g. a language model's vocabulary, are filled in when unset)."""
        raise NotImplementedError

    def build_model(self, cfg: Any) -> Any:
        """The model `cfg` describes, freshly initialised."""
        raise NotImplementedError

    def class_names(self, cfg: Any) -> tuple[str, ...]:
        raise ConfigError(f"a {self.title} has no classes")

    def callbacks(self, cfg: Any, data: Any, data_root: Any) -> list[Any]:
        """Callbacks the config asks for (main process only)."""
        return []

    def on_create(self, run: Any, data: Any) -> None:
        """Write what the run needs besides its config when it is created (e.g. a tokenizer)."""

    def finish(self, model: Any, run: Any, cfg: Any, task: Any, tracker: Any, step: int) -> None:
        """After the test (main process only): write the kind's own outputs into the run (a sample, a model folder)."""

    def summary(self, cfg: Any, data: Any) -> dict[str, Any]:
        """What the kind adds to a finished run's summary.json."""
        return {}

    def prepare_eval(self, run: Any, cfg: Any) -> None:
        """Adjust a finished run's config before `dla eval` reloads its data (e.g. the file it trained on)."""

    def sweep_figures(self, sweep_dir: Any, runs: list[tuple[str, dict, dict, list]]) -> tuple[list, list]:
        """A sweep's own figures and tables besides table.md and curves.png, from its finished runs
        (name, grid point, summary, metrics): ([figure entries], [table entries]) for its manifest."""
        return [], []

    def eval_options(self, cfg: Any, episodes: int | None, seed: int | None) -> None:
        """`dla eval --episodes N --seed S`: set them in `cfg` (an agent's test episodes); others have none."""
        if episodes is not None or seed is not None:
            raise WrongRunKind(f"--episodes and --seed are for reinforcement-learning runs; this is {_article(self.name)} "
                               f"{self.name} run, evaluated on its test split")

    predict_input = "input"  # what `dla predict` takes for this kind (JSON key): "image", "text"

    def predict(self, model: Any, cfg: Any, run: Any, inputs: list[str], top_k: int,
                invert: bool = False) -> list[tuple[str, str, list]]:
        """`dla predict` with a run's model: (input, how it is shown, [(class, probability), ...] best first)."""
        raise NotImplementedError(f"dla predict does not take {self.title} runs")

    def eval_line(self, run: Any, cfg: Any, data: Any, task: Any, test: dict[str, float]) -> tuple[dict[str, Any], str]:
        """What `dla eval` adds to its JSON and the line it prints."""
        return {}, f"{run.path}: {data.source} " + "  ".join(f"test {k} {v:.4f}" for k, v in test.items())


KINDS: dict[str, RunKind] = {}
DATA_SECTIONS: dict[str, type] = {}  # kind -> data config class; dla.config fills in the built-ins' itself


def register_kind(cls: type[RunKind]) -> type[RunKind]:
    """Class decorator: register one instance of a `RunKind` subclass under its `name`."""
    kind = cls()
    if not kind.name or not kind.report_columns or kind.data_config is object:
        raise TypeError(f"{cls.__name__}: a kind needs a name, a data_config and report_columns")
    KINDS[kind.name] = kind
    DATA_SECTIONS[kind.name] = kind.data_config
    return cls


BUILT_IN = ("dla.kinds.image", "dla.kinds.language_model", "dla.kinds.text_classifier", "dla.kinds.agent",
            "dla.kinds.retriever", "dla.kinds.multiple_choice", "dla.kinds.detector", "dla.kinds.embedding")
_loaded = False


def registered() -> dict[str, RunKind]:
    """Every registered kind, the built-ins and the entry points of group `dla.kinds` imported on first use."""
    global _loaded
    if not _loaded:
        _loaded = True
        from importlib import import_module
        from importlib.metadata import entry_points

        for module in BUILT_IN:
            import_module(module)
        for point in entry_points(group="dla.kinds"):
            point.load()
    return KINDS


def get_kind(name: str) -> RunKind:
    if name not in registered():
        raise ConfigError(f"kind: {name!r} is not a registered run kind; valid: {', '.join(sorted(KINDS))}")
    return KINDS[name]


def kind_of(cfg: Any) -> RunKind:
    """The registered kind of an experiment config."""
    return get_kind(cfg.kind)


def kinds_for(command: str) -> list[str]:
    return sorted(k.name for k in registered().values() if command in k.commands)


def require_command(cfg: Any, command: str, path: Any) -> None:
    """Raise `WrongRunKind` when a run's kind does not take `command` (e.g. `dla ood` on a language model)."""
    wanted = kinds_for(command)
    if wanted and cfg.kind not in wanted:  # a command no kind names (dla eval, dla report) takes every run
        need = " or ".join(f"{_article(k)} {k}" for k in wanted) or "no"
        raise WrongRunKind(f"{command} needs {need} run; {path} is {_article(cfg.kind)} {cfg.kind} run")


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


IMAGE_CLASSIFIER, LANGUAGE_MODEL, TEXT_CLASSIFIER = "image-classifier", "language-model", "text-classifier"
RL_AGENT = "rl-agent"
TEXT_DATA = ("inferno",)
TOPIC_DATA = ("ag_news", "yahoo_answers_topics")


def legacy_kind(config: dict[str, Any], summary: dict[str, Any] | None = None) -> str:
    """The kind of a run config written before `kind:` was declared, from its data set (and summary):
    the one place a kind is still inferred."""
    data = (config.get("data") or {}).get("name") if isinstance(config.get("data"), dict) else None
    if config.get("kind") == "hf-text-classifier" or data in TOPIC_DATA:
        return TEXT_CLASSIFIER
    if data in TEXT_DATA or (summary or {}).get("unit") == "round":
        return LANGUAGE_MODEL
    return IMAGE_CLASSIFIER
