"""The `dla` command line."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from dla.errors import DlaError


def _data_root(args: argparse.Namespace) -> Path:
    from dla.data.vision import default_data_root

    return Path(args.data_root).expanduser() if args.data_root else default_data_root()


def cmd_train(args: argparse.Namespace, cfg=None) -> int:
    """`dla train EXPERIMENT [key=value ...]` or `--resume RUN`; `cfg`: an already loaded experiment."""
    from dla import experiment
    from dla.config import load_experiment, load_run_config
    from dla.rundir import RunDir

    if args.resume:
        if args.experiment or args.overrides:
            raise DlaError("--resume RUN_DIR takes no experiment or overrides: the run's config.yaml is used as is")
        run = RunDir.open(args.resume)
        experiment.train(load_run_config(run), _data_root(args), resume=run)
        return 0
    if not args.experiment:
        raise DlaError("give an experiment (e.g. dla train lab1-mlp) or --resume RUN_DIR")
    if "=" in args.experiment:  # tolerate `dla train key=value` mistakes with a clear message
        raise DlaError(f"{args.experiment!r} looks like an override; the experiment name comes first")
    cfg = cfg or load_experiment(args.experiment, list(args.overrides))
    try:
        experiment.train(cfg, _data_root(args))
    except KeyboardInterrupt:
        print("\ninterrupted; the last finished epoch is saved: dla train --resume <run dir>", file=sys.stderr)
        return 130
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from dla.experiment import evaluate_run

    result, line = evaluate_run(args.run, _data_root(args))
    print(json.dumps(result) if args.json else line)
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from dla.build import open_run
    from dla.config import TEXT_CLASSIFIER, run_kind

    run, cfg = open_run(args.run)
    if run_kind(cfg) == TEXT_CLASSIFIER:  # a fine-tuned text classifier (Lab 2.3): the arguments are texts
        from dla.hf.cli import predict_command

        return predict_command(args)
    import torch
    from PIL import Image, UnidentifiedImageError

    from dla.build import class_names, load_run_model
    from dla.data.vision import get_spec

    model, cfg = load_run_model(run)
    c, h, w = get_spec(cfg.data.name).shape
    classes = class_names(cfg)
    for path in args.images:
        try:
            image = Image.open(path).convert("L" if c == 1 else "RGB").resize((w, h), Image.BILINEAR)
        except (OSError, UnidentifiedImageError) as exc:
            raise DlaError(f"{path}: cannot read as an image ({exc})") from None
        x = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).view(h, w, c).permute(2, 0, 1)
        x = x.float().div(255).unsqueeze(0)
        if args.invert:
            x = 1.0 - x
        with torch.inference_mode():
            probs = model(x).softmax(1)[0]
        top = probs.topk(min(args.top_k, len(classes)))
        ranked = [(classes[i], float(p)) for p, i in zip(top.values, top.indices)]
        if args.json:
            print(json.dumps({"image": str(path), "top": [{"class": k, "prob": p} for k, p in ranked]}))
        else:
            print(f"{path}: " + "  ".join(f"{k} {p:.3f}" for k, p in ranked))
    return 0


def write_stream(pieces) -> int:
    """Print text pieces as they come (a generator's prompt first); Ctrl-C ends the text, not the command."""
    try:
        for piece in pieces:
            sys.stdout.write(piece)
            sys.stdout.flush()
    except KeyboardInterrupt:
        pass
    sys.stdout.write("\n")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from dla.generate_run import generate_from_run

    return write_stream(generate_from_run(args.run, args.prompt, args.max_new_tokens, args.temperature, args.top_k,
                                          args.top_p, args.seed))


def cmd_report(args: argparse.Namespace) -> int:
    from dla.report.plots import plot_overlaid
    from dla.report.tables import markdown_table, run_columns
    from dla.rundir import find_runs

    runs = find_runs(args.runs)
    rows, histories = [], {}
    for run in runs:
        summary = run.read_summary()
        rows.append({**summary, "name": run.label})
        if history := run.read_metrics():
            histories[run.label] = history
    table = markdown_table(rows, run_columns(rows))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(table)
    print(table, end="")
    if histories:
        plot = plot_overlaid(histories, out / "curves.png")
        print(f"wrote {out / 'table.md'} and {plot}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from dla.sweep import run_sweep

    try:
        run_sweep(args.sweep, list(args.overrides), _data_root(args))
    except KeyboardInterrupt:
        print("\ninterrupted; run the same command again to resume the sweep", file=sys.stderr)
        return 130
    return 0


def cmd_gradients(args: argparse.Namespace) -> int:
    from dla.analysis.gradients import gradient_report
    from dla.rundir import find_runs

    table, paths = gradient_report(find_runs(args.runs), Path(args.out))
    print(table, end="")
    print(f"wrote {', '.join(map(str, paths))}")
    return 0


def cmd_ood(args: argparse.Namespace) -> int:
    from dla.analysis.ood_study import run_odin_grid, run_ood
    from dla.rundir import RunDir

    run = RunDir.open(args.run)
    sets = [s.strip() for s in args.ood.split(",") if s.strip()]
    if args.odin_grid:
        for name in sets:
            run_odin_grid(run, name, _data_root(args), n=args.n)
    else:
        detectors = [d.strip() for d in args.detectors.split(",") if d.strip()]
        run_ood(run, sets, detectors, _data_root(args), n=args.n, odin_t=args.odin_t, odin_eps=args.odin_eps)
    print(f"wrote {run.path / 'ood'}")
    return 0


def cmd_attack(args: argparse.Namespace) -> int:
    from dla.analysis.adversarial import accuracy_under_attack, parse_eps, plot_gallery
    from dla.build import class_names, load_data, load_run_model
    from dla.data.batches import to_unit_float
    from dla.data.ood import sample
    from dla.report.plots import plot_xy
    from dla.report.tables import markdown_table
    from dla.rundir import RunDir

    try:
        epsilons = parse_eps(args.eps)
    except ValueError as exc:
        raise DlaError(str(exc)) from None
    run = RunDir.open(args.run)
    model, cfg = load_run_model(run)
    data = load_data(cfg, _data_root(args))
    test = sample(data.test, args.n, 0)
    x, y = to_unit_float(test.x), test.y
    rows = accuracy_under_attack(model, x, y, args.method, epsilons, args.steps)
    out = run.path / "attack"
    table = markdown_table(
        rows, (("eps", "eps", "sci"), ("eps x 255", "eps_255", "time"), ("accuracy (%)", "acc", "pct"))
    )
    header = f"{args.method} on {len(y)} {data.source} test images; run {run.path}\n\n"
    out.mkdir(exist_ok=True)
    (out / f"{args.method}.md").write_text(header + table)
    plot_xy({args.method: [(r["eps_255"], 100 * r["acc"]) for r in rows]}, out / f"{args.method}_accuracy.png",
            xlabel="eps (x 1/255)", ylabel="test accuracy (%)")
    plot_gallery(model, x[:6], y[:6], class_names(cfg), args.method, epsilons,
                 out / f"{args.method}_gallery.png", args.steps)
    print(header + table, end="")
    print(f"wrote {out}")
    return 0


def cmd_data_list(args: argparse.Namespace) -> int:
    from dla.data import text
    from dla.data.vision import SPECS, locate

    root = _data_root(args)
    print(f"data root: {root}")
    print(f"{'name':15} {'status':9} {'checksum':9} location")
    for name in SPECS:
        loc = locate(name, root)
        checksum = "bad" if loc.bad else ("ok" if loc.found else "-")
        where = f"{loc.directory} ({loc.source})" if loc.directory else f"not found; {SPECS[name].import_hint}"
        extra = f"  missing: {', '.join(loc.missing)}" if loc.found and loc.missing else ""
        print(f"{name:15} {loc.status:9} {checksum:9} {where}{extra}")
    inferno = text.inferno_path(root)
    if inferno.is_file():
        ok = text.md5(inferno.read_bytes()) == text.INFERNO_MD5
        print(f"{'inferno':15} {'complete':9} {'ok' if ok else 'differs':9} {inferno}")
    else:
        print(f"{'inferno':15} {'missing':9} {'-':9} not found; {text.INFERNO_HINT}")
    return 0


def cmd_data_import(args: argparse.Namespace) -> int:
    from dla.data.vision import import_dataset

    root = _data_root(args)
    if args.name == "inferno":
        from dla.data.text import import_inferno

        print(f"inferno: checksum ok, imported into {import_inferno(Path(args.path), root)}")
        return 0
    loc = import_dataset(args.name, Path(args.path), root)
    missing = f" (still missing: {', '.join(loc.missing)})" if loc.missing else ""
    print(f"{args.name}: checksums ok, imported into {loc.directory}{missing}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dla",
        description="Deep Learning Applications labs as reproducible experiments.",
        epilog="Example: dla data import mnist ../shared/data/mnist && dla train lab1-mlp optim.lr=3e-3 train.epochs=5",
    )
    parser.add_argument("--data-root", help="where data sets live (default: $DLA_DATA_ROOT or ~/.cache/dla/data)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("train", help="train an experiment (or resume a run) into runs/<experiment>/<run>")
    p.add_argument("experiment", nargs="?", help="experiment name (configs/NAME.yaml) or a YAML path")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. optim.lr=3e-3 train.epochs=5 data=fashion-mnist")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its last checkpoint")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="test metrics of a run's best weights")
    p.add_argument("run", help="run directory")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("predict", help="top-k classes for image files, with a run's best weights")
    p.add_argument("run", help="run directory")
    p.add_argument("images", nargs="+", help="PNG or JPEG files")
    p.add_argument("--top-k", type=int, default=3)
    p.add_argument("--invert", action="store_true", help="invert grey levels (dark digit on light paper)")
    p.add_argument("--json", action="store_true", help="one JSON object per image")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("generate", help="stream text from a Lab 2.1 language-model run")
    p.add_argument("run", help="run directory of a language model (e.g. runs/lab2-gpt-char/<run>)")
    p.add_argument("--prompt", help='text to continue (default: "Nel mezzo del cammin"); \\n for a line break')
    p.add_argument("--max-new-tokens", type=int, default=500)
    p.add_argument("--temperature", type=float, default=0.8, help="0 for greedy decoding")
    p.add_argument("--top-k", type=int, default=50, help="0 to disable")
    p.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling; 1 to disable")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("report", help="a Markdown table and overlaid validation curves of runs")
    p.add_argument("runs", nargs="+", help="run directories, or folders to search for them")
    p.add_argument("--out", default="report", help="folder for table.md and curves.png (default: report)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("sweep", help="run a grid of experiments (e.g. lab1-depth), resumable, with table and plots")
    p.add_argument("sweep", help="sweep name (configs/NAME.yaml with a sweep: section)")
    p.add_argument("overrides", nargs="*", help="key=value for every run, e.g. budget=cpu data=fashion-mnist")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("gradients", help="gradient-flow plots and summary from runs' gradients.jsonl (Lab 1.3)")
    p.add_argument("runs", nargs="+", help="run directories, or folders to search for them")
    p.add_argument("--out", default="report/gradients", help="output folder (default: report/gradients)")
    p.set_defaults(func=cmd_gradients)

    p = sub.add_parser("ood", help="OOD detection scores, metrics and plots for a run (Lab 3.1, 3.3)")
    p.add_argument("run", help="run directory")
    p.add_argument("--ood", default="mnist", help="OOD sets, comma-separated: mnist, fashion-mnist, cifar10, "
                   "noise-uniform, noise-gaussian, heldout (classes a data.classes run never saw); "
                   "online also svhn, cifar100; default mnist")
    p.add_argument("--detectors", default="msp,maxlogit,energy,odin,mahalanobis")
    p.add_argument("--n", type=int, default=2000, help="images per set (default 2000)")
    p.add_argument("--odin-t", type=float, default=1000.0)
    p.add_argument("--odin-eps", type=float, default=0.0014)
    p.add_argument("--odin-grid", action="store_true", help="the T x eps grid, best chosen on a validation half")
    p.set_defaults(func=cmd_ood)

    p = sub.add_parser("attack", help="accuracy under FGSM or PGD attack, table, plot and gallery (Lab 3.2)")
    p.add_argument("run", help="run directory")
    p.add_argument("--method", choices=["fgsm", "pgd"], default="fgsm")
    p.add_argument("--eps", default="0,1/255,2/255,4/255,8/255,16/255,32/255", help="comma-separated, e.g. 0,8/255")
    p.add_argument("--steps", type=int, default=10, help="PGD steps (step size 2.5 eps / steps)")
    p.add_argument("--n", type=int, default=1000, help="test images to attack (default 1000)")
    p.set_defaults(func=cmd_attack)

    from dla.hf.cli import add_hf_parser

    add_hf_parser(sub, {"train": cmd_train, "eval": cmd_eval, "write_stream": write_stream, "data_root": _data_root})

    p = sub.add_parser("data", help="list or import data sets (offline use)")
    data_sub = p.add_subparsers(dest="data_command", metavar="ACTION")
    data_sub.required = True
    q = data_sub.add_parser("list", help="each data set: present or missing, where, checksum")
    q.set_defaults(func=cmd_data_list)
    q = data_sub.add_parser("import", help="verify a local copy and put it where the loaders find it")
    q.add_argument("name", choices=["mnist", "fashion-mnist", "cifar10", "inferno"])
    q.add_argument("path", help="a folder (searched recursively) or a file")
    q.set_defaults(func=cmd_data_import)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except DlaError as exc:
        print(f"dla: error: {exc}", file=sys.stderr)
        return exc.exit_code
