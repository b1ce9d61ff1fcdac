"""The run directory: the contract between `dla train` and every later step.

    runs/<experiment>/<run>/
        config.yaml       the fully resolved config
        metrics.jsonl     one JSON object per epoch (language models: per evaluation round): the source of truth
        summary.json      best epoch and metric, test metrics, wall time, params, versions, device
        checkpoints/      best.safetensors (weights), last.pt (resumable state, weights-only)
        tb/               TensorBoard events
        plots/            PNG figures
        tokenizer.json    language models: the tokenizer (BPE fitted on the training text)
        sample.txt        language models: a sample generated from the best weights
        model/            text classifiers: the fine-tuned encoder and tokenizer (`save_pretrained`)
        eval.json         what `dla eval` measured last

The run directory knows files, not experiment configs: `config.yaml` is written from plain data
and read back by `dla.config.load_run_config`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import yaml

from dla.errors import DlaError
from dla.io import atomic_write


CONFIG_END = "# end of the resolved config\n"  # config.yaml's last line: a file without it was cut short
LEGACY_SECTIONS = ("data", "model", "optim", "sched", "train")  # in every run's config.yaml since the first


class RunDir:
    def __init__(self, path: Path):
        self.path = Path(path)
        self._torn: bool | None = None  # set by read_metrics

    config = property(lambda self: self.path / "config.yaml")
    metrics = property(lambda self: self.path / "metrics.jsonl")
    summary = property(lambda self: self.path / "summary.json")
    checkpoints = property(lambda self: self.path / "checkpoints")
    best_weights = property(lambda self: self.path / "checkpoints" / "best.safetensors")
    last_state = property(lambda self: self.path / "checkpoints" / "last.pt")
    tb = property(lambda self: self.path / "tb")
    plots = property(lambda self: self.path / "plots")
    tokenizer = property(lambda self: self.path / "tokenizer.json")  # language models
    sample = property(lambda self: self.path / "sample.txt")  # language models: text generated after training
    hf_model = property(lambda self: self.path / "model")  # text classifiers: save_pretrained folder (from_pretrained)
    detector = property(lambda self: self.path / "detector.json")  # digit detectors: calibration, default threshold

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def label(self) -> str:
        """`parent/name`, e.g. `lab1-mlp/mnist`: how reports name a run."""
        return f"{self.path.parent.name}/{self.name}"

    @classmethod
    def new_path(cls, runs_dir: str | Path, experiment: str, run_name: str | None) -> Path:
        """A fresh, unused path `runs_dir/experiment/run_name` (default: a timestamp)."""
        base = Path(runs_dir) / experiment / (run_name or time.strftime("%Y%m%d-%H%M%S"))
        path, n = base, 1
        while path.exists():
            n += 1
            path = base.with_name(f"{base.name}-{n}")
        return path

    @classmethod
    def create(cls, path: Path, config: dict[str, Any]) -> "RunDir":
        """A new run folder holding `config` (the resolved config as plain data) as config.yaml."""
        run = cls(path)
        run.checkpoints.mkdir(parents=True, exist_ok=False)
        run.plots.mkdir(exist_ok=True)
        text = yaml.safe_dump(config, sort_keys=False) + CONFIG_END
        atomic_write(run.config, lambda tmp: tmp.write_text(text))
        return run

    @classmethod
    def open(cls, path: str | Path) -> "RunDir":
        run = cls(Path(path))
        if not run.config.is_file():
            raise DlaError(f"{path} is not a run directory (no config.yaml); runs are under runs/<experiment>/<run>")
        run.check_config_complete()
        return run

    def check_config_complete(self) -> None:
        """A config.yaml cut short (a prefix of YAML is still YAML) would load with defaults for what
        is missing: refuse it. Runs end theirs with `CONFIG_END`; older runs, written before it (they
        declare no `kind:`), must hold every core section and end with a newline."""
        try:
            text = self.config.read_bytes().decode("utf-8", errors="replace")
        except OSError:
            return  # unreadable: reading the config says so
        if text.endswith(CONFIG_END):
            return
        try:
            if not isinstance(yaml.safe_load(text), dict):
                return  # not YAML of sections at all: reading the config names the problem, with its line
        except yaml.YAMLError:
            return
        lines = text.splitlines()
        missing = [s for s in LEGACY_SECTIONS if not any(line.startswith(f"{s}:") for line in lines)]
        declared = any(line.startswith("kind:") for line in lines)  # written since configs end with the mark
        if missing or declared or not text.endswith("\n"):
            lacks = (f"no {', '.join(missing)} section" if missing else "no end mark" if declared
                     else "its last line is cut")
            raise DlaError(f"{self.config}: incomplete run config ({lacks}): damaged or cut short; "
                           f"this run cannot be used")

    def append_metrics(self, record: dict[str, Any]) -> None:
        with open(self.metrics, "a") as fh:
            fh.write(json.dumps(record) + "\n")

    def rewrite_metrics(self, records: list[dict[str, Any]]) -> None:
        text = "".join(json.dumps(r) + "\n" for r in records)
        atomic_write(self.metrics, lambda tmp: tmp.write_text(text))

    def read_metrics(self) -> list[dict[str, Any]]:
        """The records of metrics.jsonl. A torn last line (a crash mid-write) is skipped and remembered
        (see `torn_metrics`); an unparsable line before the last, or a record whose values are not
        numbers (epoch and step integers; true, false and null allowed), is an error naming file and line."""
        self._torn = False
        if not self.metrics.is_file():
            return []
        lines = [(n, line) for n, line in enumerate(self.metrics.read_bytes().splitlines(), 1) if line.strip()]
        records = []
        for i, (n, line) in enumerate(lines):
            try:
                record = json.loads(line.decode("utf-8"))  # a UnicodeDecodeError is a ValueError
                if not isinstance(record, dict):
                    raise ValueError("not a JSON object")
            except ValueError:
                if i == len(lines) - 1:
                    self._torn = True
                    break
                raise DlaError(f"{self.metrics}:{n}: not a JSON object; the file is damaged") from None
            if problem := _record_problem(record):
                raise DlaError(f"{self.metrics}:{n}: {problem}; the file is damaged")
            records.append(record)
        return records

    def torn_metrics(self) -> bool:
        """Whether the last `read_metrics` skipped a torn (unparsable) last line."""
        if self._torn is None:
            self.read_metrics()
        return bool(self._torn)

    def write_summary(self, summary: dict[str, Any]) -> None:
        text = json.dumps(summary, indent=2) + "\n"
        atomic_write(self.summary, lambda tmp: tmp.write_text(text))

    def read_summary(self) -> dict[str, Any]:
        """summary.json ({} when there is none yet); a damaged one is an error naming it."""
        if not self.summary.is_file():
            return {}
        try:
            summary = json.loads(self.summary.read_bytes().decode("utf-8"))
        except ValueError:  # not JSON, or not UTF-8
            raise DlaError(f"{self.summary}: not valid JSON; the file is damaged") from None
        if not isinstance(summary, dict):
            raise DlaError(f"{self.summary}: not a JSON object (got {json.dumps(summary)[:40]}); the file is damaged")
        return summary


def _record_problem(record: dict[str, Any]) -> str | None:
    """What is wrong with a metrics record's values, or None."""
    for key, value in record.items():
        if key in ("epoch", "step"):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                return f"{key} is {value!r}, not a whole number >= 0"
        elif value is not None and not isinstance(value, (int, float)):
            return f"{key} is {value!r}, not a number"
    return None


def find_runs(paths: list[str | Path]) -> list[RunDir]:
    """Run directories named directly, or found below the given folders (sorted)."""
    runs: list[RunDir] = []
    for p in map(Path, paths):
        if (p / "config.yaml").is_file():
            runs.append(RunDir(p))
        elif p.is_dir():
            runs.extend(RunDir(c.parent) for c in sorted(p.rglob("config.yaml")))
        else:
            raise DlaError(f"{p}: no such run directory")
    if not runs:
        raise DlaError(f"no run directories under {', '.join(map(str, paths))}")
    return runs
