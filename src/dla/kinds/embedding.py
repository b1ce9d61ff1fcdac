"""The image-embedding kind (the original's planned "Siamese models" exercise): metric learning on images.

`dla train lab1-siamese` trains `embed-cnn` (dla.models.embedding) with a triplet loss and semi-hard
mining (dla.train.metric). Validation ranks the validation images against a fixed subset of training
images (Precision@1, MAP@R); the test ranks the test images against every training image. With
`data.classes` the net never sees the other classes, and the test also classifies their images by
nearest class mean from `data.shots` examples per class. The run draws a t-SNE map of the test
embeddings, each of some queries with its 5 nearest training images, and the few-shot accuracies.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dla.config import EmbeddingDataConfig
from dla.errors import ConfigError
from dla.kind import Column, RunKind, register_kind

IMAGE_EMBEDDING = "image-embedding"
TSNE_POINTS, QUERIES, NEIGHBOURS = 2000, 8, 5


@dataclass
class EmbeddingData:
    images: Any  # dla.data.vision.ImageData: the classes trained on
    unseen: Any  # ImageSet of the test images of the classes left out (None without data.classes)

    @property
    def source(self) -> str:
        return self.images.source

    @property
    def test_source(self) -> str:
        return self.images.test_source


@register_kind
class ImageEmbedding(RunKind):
    name = IMAGE_EMBEDDING
    title = "image embedding"
    data_config = EmbeddingDataConfig
    models = ("embed-cnn",)
    table_columns = (("run", "name", "str"), ("data", "data", "str"), ("params", "params", "int"),
                     ("test P@1 (%)", "test_precision1", "pct"), ("test MAP@R (%)", "test_map_r", "pct"),
                     ("time (s)", "train_time_s", "time"))
    sweep_columns = (("Run", "name", "str"), ("test P@1", "test_precision1", "pct"), ("test MAP@R", "test_map_r", "pct"),
                     ("best epoch", "best_epoch", "int"), ("time (s)", "train_time_s", "time"))
    report_columns = (Column("test P@1 (%)", "test_precision1", "pct", True), Column("test MAP@R (%)", "test_map_r", "pct", True),
                      Column("1-shot (%)", "test_fewshot1", "pct", True), Column("5-shot (%)", "test_fewshot5", "pct", True),
                      Column("params", "params", "int"), Column("train time (s)", "train_time_s", "time"))
    fallback = Column("best val P@1 (%)", "best_val_precision1", "pct", True)
    curve_metrics = ("val_precision1", "val_map_r")

    def check(self, cfg):
        super().check(cfg)
        if cfg.train.monitor.removeprefix("val_") not in ("loss", "precision1", "map_r"):
            raise ConfigError(f"train.monitor: an embedding is monitored by val_precision1, val_map_r or val_loss, "
                              f"not {cfg.train.monitor}")
        if cfg.train.adversarial != "none" or cfg.train.label_smoothing:
            raise ConfigError("train.adversarial and train.label_smoothing are for classifiers, not an image embedding")

    def load_data(self, cfg, data_root, run=None, quiet=False):
        import torch

        from dla.data.vision import ImageSet, get_spec, load_arrays, load_image_data

        d = cfg.data
        images = load_image_data(d.name, data_root, d.val_size, d.split_seed, d.train_subset, d.test_subset, d.download,
                                 d.classes)
        unseen = None
        if d.classes:
            _, test, _ = load_arrays(d.name, data_root, d.download)
            held = [c for c in range(len(get_spec(d.name).classes)) if c not in d.classes]
            mask = torch.isin(test.y, torch.tensor(held))
            unseen = ImageSet(test.x[mask], test.y[mask])
            if min(int((test.y == c).sum()) for c in held) <= max(d.shots):
                raise ConfigError(f"data.shots: {max(d.shots)} examples per class leave no query of some held-out class")
        if cfg.data.gallery > len(images.train):
            raise ConfigError(f"data.gallery={cfg.data.gallery} exceeds the {len(images.train)} training images")
        return EmbeddingData(images, unseen)

    def describe_data(self, data):
        i = data.images
        text = f"{i.source}: {len(i.train)} train / {len(i.val)} val / {len(i.test)} test"
        return text + (f"; {len(data.unseen)} test images of unseen classes" if data.unseen is not None else "")

    def make_task(self, cfg, data):
        from dla.train.metric import EmbeddingTask

        if cfg.train.batch_size > len(data.images.train):
            raise ConfigError(f"train.batch_size={cfg.train.batch_size} exceeds the {len(data.images.train)} training images")
        return EmbeddingTask(data.images, cfg.model.margin, cfg.data.gallery, data.unseen, tuple(cfg.data.shots),
                             cfg.data.episodes, cfg.seed)

    def build_model(self, cfg):
        from dla.data.vision import get_spec, input_shape
        from dla.models import build_model

        spec = get_spec(cfg.data.name)
        return build_model(cfg.model, input_shape(cfg), 0, spec.mean, spec.std)

    def class_names(self, cfg):
        from dla.data.vision import get_spec

        names = get_spec(cfg.data.name).classes
        return tuple(names[i] for i in cfg.data.classes) if cfg.data.classes else names

    def finish(self, model, run, cfg, task, tracker, step):
        """plots/embedding.png (t-SNE of test embeddings), plots/neighbours.png (queries and their nearest training
        images) and, with unseen classes, plots/fewshot.png."""
        import torch

        from dla.data.batches import to_unit_float
        from dla.data.vision import get_spec
        from dla.manifest import PLOTS_TITLE, write_manifest
        from dla.report.plots import plot_bars, pyplot, save_figure, show_image

        out = task.outputs
        if "test" not in out:
            return
        plt = pyplot()
        data = task.data
        names = get_spec(cfg.data.name).classes
        classes = cfg.data.classes or list(range(len(names)))
        figures = []
        n = min(TSNE_POINTS, len(out["test"]))
        from sklearn.manifold import TSNE

        xy = TSNE(2, init="pca", random_state=cfg.seed, perplexity=min(30.0, max(2.0, n / 4 - 1))).fit_transform(
            out["test"][:n].numpy())
        fig, ax = plt.subplots(figsize=(6, 5.4))
        labels = data.test.y[:n]
        for k in labels.unique().tolist():
            sel = (labels == k).numpy()
            ax.scatter(xy[sel, 0], xy[sel, 1], s=4, label=names[classes[k]], alpha=0.7)
        ax.legend(markerscale=3, fontsize=7, loc="best")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"{cfg.name}: t-SNE of {n} test embeddings (dim {cfg.model.embed_dim})", fontsize=9)
        save_figure(fig, run.plots / "embedding.png")
        figures.append({"file": "embedding.png", "caption": "t-SNE map of the test embeddings, coloured by class"})

        q = min(QUERIES, len(out["test"]))
        sims = torch.nn.functional.normalize(out["test"][:q], dim=1) @ torch.nn.functional.normalize(out["gallery"], dim=1).T
        near = sims.topk(NEIGHBOURS, dim=1).indices
        fig, axes = plt.subplots(q, NEIGHBOURS + 1, figsize=(1.4 * (NEIGHBOURS + 1), 1.5 * q), squeeze=False)
        for i in range(q):
            truth = int(data.test.y[i])
            show_image(axes[i, 0], to_unit_float(data.test.x[i]), title=f"query: {names[classes[truth]]}", fontsize=7)
            for j, idx in enumerate(near[i].tolist()):
                got = int(data.train.y[idx])
                show_image(axes[i, j + 1], to_unit_float(data.train.x[idx]), title=names[classes[got]],
                           color="green" if got == truth else "red", fontsize=7)
        fig.suptitle("test queries and their 5 nearest training images (green: same class)", fontsize=9)
        save_figure(fig, run.plots / "neighbours.png")
        figures.append({"file": "neighbours.png", "caption": "each test query with its 5 nearest training images"})
        if task.unseen is not None and task.test_metrics:
            shots = {f"{k}-shot": {"accuracy": task.test_metrics[f"fewshot{k}"]} for k in task.shots}
            unseen = len(task.unseen.y.unique())
            plot_bars(shots, run.plots / "fewshot.png", f"{cfg.name}: nearest class mean on {len(task.unseen)} "
                      f"images of {unseen} unseen classes (chance {100 / unseen:.0f}%)", "accuracy")
            figures.append({"file": "fewshot.png", "caption": "few-shot accuracy on the classes left out of training"})
        write_manifest(run.plots, "plots", PLOTS_TITLE, figures)

    def eval_line(self, run, cfg, data, task, test):
        few = "".join(f"  {k}-shot {100 * test[f'fewshot{k}']:.2f}%" for k in task.shots if f"fewshot{k}" in test)
        return {}, (f"{run.path}: {data.test_source} test P@1 {100 * test['precision1']:.2f}%  MAP@R "
                    f"{100 * test['map_r']:.2f}%{few}")
