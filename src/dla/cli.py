"""The `dla` command line."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from dla import __version__
from dla.cli_types import (
    Registry,
    attack_target,
    canvas_int,
    eps_list,
    finite_float,
    nonneg_float,
    nonneg_int,
    positive_float,
    positive_float_list,
    name_list,
    positive_int,
    seed_int,
    size_list,
    top_p_float,
)
from dla.errors import DlaError

# The registries' names, read when first needed (an option given, its --help printed), so that --help stays fast
DETECTORS = Registry("dla.analysis.ood", "DETECTORS")
ATTACKS = Registry("dla.attacks", "ATTACKS")
CAM_METHODS = Registry("dla.analysis.cam", "METHODS")
LAYOUT_NAMES = Registry("dla.data.canvas", "LAYOUTS")


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

    result, line = evaluate_run(args.run, _data_root(args), getattr(args, "command_name", "dla eval"),
                                getattr(args, "episodes", None), getattr(args, "seed", None))
    print(json.dumps(result) if args.json else line)
    return 0


def cmd_play(args: argparse.Namespace) -> int:
    from dla.rl.play import play

    out, returns = play(args.run, args.episodes, Path(args.out) if args.out else None, args.seed)
    print(f"{out}: {len(returns)} episode(s), returns " + ", ".join(f"{r:.1f}" for r in returns))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from dla.build import predict_run

    # images for an image classifier, texts for a text classifier (Lab 2.3)
    kind, rows = predict_run(args.run, list(args.images), args.top_k, args.invert)
    for item, shown, ranked in rows:
        if args.json:
            print(json.dumps({kind.predict_input: item, "top": [{"class": k, "prob": p} for k, p in ranked]}))
        else:
            print(f"{shown}: " + "  ".join(f"{k} {p:.3f}" for k, p in ranked))
    return 0


def cmd_retrieve(args: argparse.Namespace) -> int:
    from dla.build import retrieve_from_run

    for query, ranked in retrieve_from_run(args.run, list(args.query), args.k, _data_root(args)):
        if args.json:
            print(json.dumps({"query": query, "top": [{"id": d, "score": s, "text": t} for d, s, t in ranked]}))
            continue
        print(f"query: {query}")
        for rank, (doc, score, text) in enumerate(ranked, 1):
            print(f"  {rank}. [{doc}] {score:.3f}  {text if len(text) <= 100 else text[:97] + '...'}")
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
    from dla.build import generate_from_run

    return write_stream(generate_from_run(args.run, args.prompt, args.max_new_tokens, args.temperature, args.top_k,
                                          args.top_p, args.seed))


def cmd_report(args: argparse.Namespace) -> int:
    from dla.report.site import build_site

    site = build_site(args.runs, args.out)
    print(site.table, end="")
    print(f"wrote {site.index}")
    return 0


def _check_report_after(args: argparse.Namespace) -> None:
    """With --report, check before the work that report/ can take the report (a new folder or a dla report)."""
    if args.report:
        from dla.report.site import check_report_out

        check_report_out("report")


def _report_after(args: argparse.Namespace, path: Path) -> None:
    """After a study command: refresh the HTML report of the runs folder holding `path` (--report), or say how."""
    runs = Path("runs")
    root = runs if runs.is_dir() and Path(path).resolve().is_relative_to(runs.resolve()) else Path(path).parent
    if args.report:
        from dla.report.site import build_site

        print(f"report: {build_site([root], 'report').index}")
    else:
        print(f"to look at the results: dla report {root} --out report")


def cmd_sweep(args: argparse.Namespace) -> int:
    from dla.sweep import run_sweep

    _check_report_after(args)
    try:
        sweep_dir = run_sweep(args.sweep, list(args.overrides), _data_root(args))
    except KeyboardInterrupt:
        print("\ninterrupted; run the same command again to resume the sweep", file=sys.stderr)
        return 130
    _report_after(args, sweep_dir)
    return 0


def cmd_gradients(args: argparse.Namespace) -> int:
    from dla.analysis.gradients import gradient_report
    from dla.rundir import find_runs

    table, paths = gradient_report(find_runs(args.runs), Path(args.out))
    print(table, end="")
    print(f"wrote {', '.join(map(str, paths))}")
    return 0


def cmd_ood(args: argparse.Namespace) -> int:
    from dla.analysis.ood_study import run_odin_grids, run_ood
    from dla.rundir import RunDir

    run = RunDir.open(args.run)  # the study checks its kind, every set and the numbers before any work
    _check_report_after(args)
    sets = [s.strip() for s in args.ood.split(",") if s.strip()] if args.ood is not None else None
    if args.odin_grid:
        run_odin_grids(run, sets, _data_root(args), n=args.n)
    else:
        run_ood(run, sets, args.detectors, _data_root(args), n=args.n, odin_t=args.odin_t, odin_eps=args.odin_eps)
    print(f"wrote {run.path / 'ood'}")
    _report_after(args, run.path)
    return 0


def cmd_attack(args: argparse.Namespace) -> int:
    from dla.analysis.attack_study import run_attack
    from dla.rundir import RunDir

    run = RunDir.open(args.run)  # the study checks its kind and the options
    _check_report_after(args)
    result = run_attack(run, args.method, args.eps, args.steps, args.n, _data_root(args), args.target, args.c)
    print(result["header"] + result["table"], end="")
    print(f"wrote {result['out']}")
    _report_after(args, run.path)
    return 0


def cmd_cam(args: argparse.Namespace) -> int:
    from dla.analysis.cam_study import run_cam, run_pointing_game
    from dla.rundir import RunDir

    run = RunDir.open(args.run)  # the study checks its kind
    if args.pointing_game:
        if args.images:
            raise DlaError("--pointing-game draws its own canvases of test digits: give no image files")
        methods = [args.method] if args.method else None
        result = run_pointing_game(run, methods, args.canvases, args.canvas_size, args.seed, _data_root(args))
        print(result["header"] + result["table"], end="")
    else:
        result = run_cam(run, args.images, args.method, args.cls, args.n, _data_root(args))
        print("\n".join(result["lines"]))
    print(f"wrote {result['out']}")
    return 0


def cmd_detect(args: argparse.Namespace) -> int:
    from dla.analysis.detect_study import run_detect, run_detect_eval
    from dla.rundir import RunDir

    if not args.images and not args.eval:
        raise DlaError("give image files to search, or --eval for the measured test canvases")
    run = RunDir.open(args.run)  # the study checks its kind
    if args.images:
        result = run_detect(run, args.images, args.threshold, args.stride, args.sizes, args.nms_iou)
        print("\n".join(result["lines"]))
    if args.eval:
        result = run_detect_eval(run, args.threshold, args.stride, args.sizes, args.nms_iou, args.canvases,
                                 _data_root(args), args.layouts)
        print(result["header"] + result["table"], end="")
    print(f"wrote {result['out']}")
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




class Parser(argparse.ArgumentParser):
    """argparse with short errors: the problem and where to find the usage, not the whole usage block."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n(see: {self.prog} --help)\n")


# ---------------------------------------------------------------- dla hf (Labs 2.2, 2.3)

def cmd_tokenize(args: argparse.Namespace) -> int:
    from dla.hub import quiet_transformers
    from dla.data.tokens import tokenize_with

    quiet_transformers()
    result = tokenize_with(args.text, args.tokenizer)
    print(json.dumps(result.as_dict()) if args.json else result.format())
    return 0


def cmd_hf_generate(args: argparse.Namespace) -> int:
    if args.run:  # a Lab 2.1 run: the same stream as `dla generate RUN`
        from dla.build import generate_from_run

        return args.write_stream(generate_from_run(args.run, args.prompt, args.max_new_tokens or args.max_length,
                                                   args.temperature, args.top_k, args.top_p, args.seed))
    from dla.generation import Sampling, generate, load_causal_lm, stream_to_stdout
    from dla.hub import quiet_transformers

    quiet_transformers()
    sampling = Sampling(args.max_length, args.max_new_tokens, args.temperature, args.top_k or None, args.top_p,
                        args.num_return_sequences, args.seed)
    sampling.kwargs()  # bad settings fail before the model loads
    model, tokenizer = load_causal_lm(args.model)
    prompt = args.prompt if args.prompt is not None else "Once upon a time"
    if sampling.num_return_sequences == 1:
        generate(model, tokenizer, prompt, sampling, streamer=stream_to_stdout(tokenizer))
        return 0
    for i, text in enumerate(generate(model, tokenizer, prompt, sampling), 1):
        print(f"--- sequence {i} ---\n{text}")
    return 0


def _offline_hint(cfg, exc: DlaError) -> DlaError:
    """Point users without the Hub at the offline experiment."""
    text = str(exc)
    if cfg.data.name == "ag_news" or "lab2-finetune-agnews" in text or not ("offline" in text or "network" in text):
        return exc
    return type(exc)(f"{text}; offline, run lab2-finetune-agnews instead")


def _text_classifier_config(args: argparse.Namespace):
    from dla.config import load_experiment
    from dla.kind import kinds_for

    cfg = load_experiment(args.experiment, args.overrides)
    if cfg.kind not in kinds_for("dla hf finetune"):
        raise DlaError(f"{args.experiment} trains a {cfg.kind}, not a text classifier; run it with dla train")
    return cfg


def cmd_finetune(args: argparse.Namespace) -> int:
    """`dla hf finetune EXPERIMENT` is `dla train EXPERIMENT` for text-classification experiments."""
    from dla.hub import quiet_transformers

    quiet_transformers()
    if args.resume:
        return args.train(args)
    if not args.experiment:
        raise DlaError("give an experiment (e.g. dla hf finetune lab2-finetune-agnews) or --resume RUN_DIR")
    cfg = _text_classifier_config(args)
    try:
        return args.train(args, cfg)
    except DlaError as exc:
        raise _offline_hint(cfg, exc) from None


def cmd_features(args: argparse.Namespace) -> int:
    from dla.analysis.features import features_baseline
    from dla.hub import quiet_transformers

    cfg = _text_classifier_config(args)
    quiet_transformers()
    try:
        features_baseline(cfg, args.data_root_path(args))
    except DlaError as exc:
        raise _offline_hint(cfg, exc) from None
    return 0


def add_hf_parser(sub: argparse._SubParsersAction) -> None:
    """`dla hf tokenize|generate|finetune|features-baseline|eval`: `finetune`, `eval`, `generate --run` and the
    baseline reuse `dla train`, `dla eval`, the stream printer and the data root of the main commands."""
    p = sub.add_parser("hf", help="Hugging Face: GPT-2 tokenizer and generation, fine-tuning an encoder (Lab 2.2, 2.3)")
    hf = p.add_subparsers(dest="hf_command", metavar="ACTION")
    hf.required = True

    q = hf.add_parser("tokenize", help="words, tokens, ids and the decoded text of a sentence")
    q.add_argument("text", help='e.g. "This is an example sentence to encode into tokens."')
    q.add_argument("--tokenizer", default="gpt2", help="Hub id or folder (default gpt2; offline: ../shared/data/gpt2-tokenizer)")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_tokenize)

    q = hf.add_parser("generate", help="sample from a causal LM with generate(), streamed (the original: gpt2, seed 42)")
    q.add_argument("--model", default="gpt2", help="Hub id or folder of a causal LM (default gpt2)")
    q.add_argument("--run", help="a Lab 2.1 run directory instead of a Hugging Face model")
    q.add_argument("--prompt", help='text to continue (default "Once upon a time")')
    q.add_argument("--max-length", type=positive_int, default=50, help="prompt + new tokens (default 50); with --run, new tokens")
    q.add_argument("--max-new-tokens", type=positive_int,
                   help="new tokens, whatever the prompt length (overrides --max-length)")
    q.add_argument("--temperature", type=nonneg_float, default=0.7, help="0 for greedy decoding (default 0.7)")
    q.add_argument("--top-k", type=nonneg_int, default=50, help="0 to disable (default 50)")
    q.add_argument("--top-p", type=top_p_float, help="nucleus sampling in (0, 1], e.g. 0.95 (default off)")
    q.add_argument("--num-return-sequences", type=positive_int, default=1)
    q.add_argument("--seed", type=seed_int, default=42)
    q.set_defaults(func=cmd_hf_generate, write_stream=write_stream)

    q = hf.add_parser("finetune", help="fine-tune a pretrained encoder for topic classification (= dla train EXPERIMENT)")
    q.add_argument("experiment", nargs="?", help="lab2-finetune-agnews (offline, MiniLM), lab2-finetune-yahoo (online, DistilRoBERTa) or a YAML path")
    q.add_argument("overrides", nargs="*", help="key=value, e.g. train.epochs=2 optim.lr=5e-5 data.path=test.csv model.pretrained=DIR")
    q.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted fine-tune from its last checkpoint")
    q.set_defaults(func=cmd_finetune, train=cmd_train)

    q = hf.add_parser("features-baseline", help="frozen encoder features + logistic regression on the same splits")
    q.add_argument("experiment", help="as for finetune")
    q.add_argument("overrides", nargs="*", help="key=value, e.g. baseline.c_grid=[1,10]")
    q.set_defaults(func=cmd_features, data_root_path=_data_root)

    q = hf.add_parser("eval", help="test accuracy, macro-F1 and confusion matrix of a fine-tuned run (= dla eval RUN)")
    q.add_argument("run", help="run directory (runs/lab2-finetune-agnews/<run>)")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_eval, command_name="dla hf eval")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="dla",
        description="Deep Learning Applications labs as reproducible experiments.",
        epilog="Example: dla data import mnist ../shared/data/mnist && dla train lab1-mlp optim.lr=3e-3 train.epochs=5",
    )
    parser.add_argument("--data-root", help="where data sets live (default: $DLA_DATA_ROOT, else $XDG_CACHE_HOME/dla/data or ~/.cache/dla/data)")
    parser.add_argument("--version", action="version", version=f"dla {__version__}")
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
    p.add_argument("--episodes", type=positive_int, help="an agent: greedy episodes to play (default: the run's rl.test_episodes, 100)")
    p.add_argument("--seed", type=seed_int, help="an agent: episode i is seeded SEED + i (default: the run's rl.test_seed)")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("play", help="an agent's greedy episodes rendered headless into an animated GIF (Lab 4)")
    p.add_argument("run", help="run directory of a reinforcement-learning agent (e.g. runs/lab4-ppo-cartpole/<run>)")
    p.add_argument("--episodes", type=positive_int, default=1, help="episodes to render (default 1)")
    p.add_argument("--out", help="the GIF to write (default: RUN/plots/play.gif)")
    p.add_argument("--seed", type=seed_int, default=2_000_000, help="episode i is seeded SEED + i (default: the first test seed)")
    p.set_defaults(func=cmd_play)

    p = sub.add_parser("predict", help="top-k classes for image files (or texts, for a text-classifier run), with a run's best weights")
    p.add_argument("run", help="run directory")
    p.add_argument("images", nargs="+", help="PNG or JPEG files; texts for a fine-tuned text-classifier run")
    p.add_argument("--top-k", type=positive_int, default=3, help="classes to show (>= 1, default 3)")
    p.add_argument("--invert", action="store_true", help="invert grey levels (dark digit on light paper)")
    p.add_argument("--json", action="store_true", help="one JSON object per image")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("retrieve", help="the top-k documents of a retrieval run's corpus for a query (Lab 2.3.3)")
    p.add_argument("run", help="run directory of a retrieval model (e.g. runs/lab2-retrieval/<run>)")
    p.add_argument("query", nargs="+", help="one or more queries (quote each)")
    p.add_argument("--k", type=int, default=5, help="documents to show (>= 1, default 5)")
    p.add_argument("--json", action="store_true", help="one JSON object per query")
    p.set_defaults(func=cmd_retrieve)

    p = sub.add_parser("generate", help="stream text from a Lab 2.1 language-model run")
    p.add_argument("run", help="run directory of a language model (e.g. runs/lab2-gpt-char/<run>)")
    p.add_argument("--prompt", help='text to continue (default: the run\'s own, "Nel mezzo del cammin" for the Inferno); \\n for a line break')
    p.add_argument("--max-new-tokens", type=positive_int, default=500)
    p.add_argument("--temperature", type=nonneg_float, default=0.8, help="0 for greedy decoding")
    p.add_argument("--top-k", type=nonneg_int, default=50, help="0 to disable")
    p.add_argument("--top-p", type=top_p_float, default=0.95, help="nucleus sampling, in (0, 1]; 1 to disable")
    p.add_argument("--seed", type=seed_int, default=0)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("report", help="an HTML site of runs: tables, interactive curves, every study's figures")
    p.add_argument("runs", nargs="*", default=["runs"], help="run directories, or folders to search for them (default: runs)")
    p.add_argument("--out", default="report", help="folder for index.html and its pages (default: report)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("sweep", help="run a grid of experiments (e.g. lab1-depth), resumable, with table and plots")
    p.add_argument("sweep", help="sweep name (configs/NAME.yaml with a sweep: section)")
    p.add_argument("overrides", nargs="*", help="key=value for every run, e.g. budget=cpu data=fashion-mnist")
    p.add_argument("--report", action="store_true", help="then write the HTML report of the runs folder into report/ (as dla report does)")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("gradients", help="gradient-flow plots and summary from runs' gradients.jsonl (Lab 1.3)")
    p.add_argument("runs", nargs="+", help="run directories, or folders to search for them")
    p.add_argument("--out", default="report/gradients", help="output folder (default: report/gradients)")
    p.set_defaults(func=cmd_gradients)

    p = sub.add_parser("ood", help="OOD detection scores, metrics and plots for a run (Lab 3.1, 3.3)")
    p.add_argument("run", help="run directory")
    p.add_argument("--ood", help="OOD sets, comma-separated: mnist, fashion-mnist, cifar10, "
                   "noise-uniform, noise-gaussian, fakedata (torchvision's, the original's), heldout (classes a "
                   "data.classes run never saw), a folder of images or an .npz; online also svhn, cifar100; the "
                   "groups near and far (OpenOOD's split, with mean AUROC per group); not the run's own data set; "
                   "default mnist (fashion-mnist for a run trained on MNIST)")
    p.add_argument("--detectors", type=name_list(DETECTORS, "detector"), choices=DETECTORS, metavar="LIST",
                   help="comma-separated (default all): %(choices)s")
    p.add_argument("--n", type=positive_int, default=2000, help="images per set (default 2000)")
    p.add_argument("--odin-t", type=positive_float, default=1000.0, help="ODIN temperature (> 0)")
    p.add_argument("--odin-eps", type=nonneg_float, default=0.0014, help="ODIN input perturbation (>= 0)")
    p.add_argument("--odin-grid", action="store_true", help="the T x eps grid, best chosen on a validation half")
    p.add_argument("--report", action="store_true", help="then write the HTML report of the runs folder into report/ (as dla report does)")
    p.set_defaults(func=cmd_ood)

    p = sub.add_parser("attack", help="accuracy under FGSM, PGD, AutoAttack or Carlini-Wagner attack: table, plot, "
                       "gallery (Lab 3.2)")
    p.add_argument("run", help="run directory")
    p.add_argument("--method", choices=ATTACKS, default="fgsm", metavar="METHOD",
                   help="%(choices)s: fgsm and pgd are ours, autoattack (the standard version) and cw (Carlini-Wagner "
                   "L2) via torchattacks (default fgsm)")
    p.add_argument("--eps", type=eps_list, default=None,
                   help="comma-separated, e.g. 0,8/255: L-infinity radii in [0, 1] (default fgsm/pgd 0 to 32/255; "
                   "autoattack 8/255 for colour, 0.1 for grey images); for cw, L2 radii (default 0,0.1,0.25,0.5,1,2)")
    p.add_argument("--steps", type=positive_int, default=None, help="PGD steps (default 10; step size 2.5 eps / "
                   "steps) or CW steps (default 100)")
    p.add_argument("--c", type=positive_float_list, default=None,
                   help="CW: the weight of the margin term (default 1); several, e.g. 0.1,1,10,100, keep each image's "
                   "smallest successful perturbation over them (the paper's search over c)")
    p.add_argument("--n", type=positive_int, default=1000, help="test images to attack (default 1000)")
    p.add_argument("--target", type=attack_target, help="a targeted attack: a class index, random (a class other "
                   "than the true one) or least-likely (of the clean prediction); the table adds the success rate")
    p.add_argument("--report", action="store_true", help="then write the HTML report of the runs folder into report/ (as dla report does)")
    p.set_defaults(func=cmd_attack)


    add_hf_parser(sub)

    p = sub.add_parser("cam", help="class activation maps of a CNN run: overlays, a gallery, the pointing game (Lab 1.2.3)")
    p.add_argument("run", help="run directory of a CNN (model.head=gap for --method cam)")
    p.add_argument("images", nargs="*", help="PNG or JPEG files; none: a gallery of test images")
    p.add_argument("--method", choices=CAM_METHODS, metavar="METHOD", help="%(choices)s; default: cam on a GAP net, "
                   "else gradcam; --pointing-game: every method that applies")
    p.add_argument("--class", dest="cls", type=nonneg_int, help="draw the map of this class index (default: the predicted one)")
    p.add_argument("--n", type=positive_int, default=16, help="gallery images (default 16)")
    p.add_argument("--pointing-game", action="store_true", help="the pointing game on seeded canvases of test digits")
    p.add_argument("--canvases", type=positive_int, default=500, help="--pointing-game: canvases (default 500)")
    p.add_argument("--canvas-size", type=canvas_int, default=64, help="--pointing-game: canvas side in px, 28-512 (default 64)")
    p.add_argument("--seed", type=seed_int, default=0, help="--pointing-game: canvas seed")
    p.set_defaults(func=cmd_cam)

    p = sub.add_parser("detect", help="find digits in large images: a dense detector, or a classifier made fully "
                       "convolutional (Lab 1.2.2)")
    p.add_argument("run", help="run directory of a dense detector (dla train lab1-fcn-dense) or of an MNIST classifier, "
                   "best with a background class (dla train lab1-fcn)")
    p.add_argument("images", nargs="*", help="PNG or JPEG files, any size from 28x28 up")
    p.add_argument("--threshold", type=finite_float(0.0, 1.0, low_open=True, high_open=True), default=None,
                   help="lowest score of a detection to keep, in (0, 1) (default: a dense detector's own, chosen on "
                   "validation canvases; 0.005 for a classifier made fully convolutional; see RESULTS.md)")
    p.add_argument("--stride", type=positive_int, default=None,
                   help="classifier FCN only: px between windows (default 4; at most the net's stride)")
    p.add_argument("--sizes", type=size_list, default=None,
                   help="classifier FCN only: digit sizes in px to look for (default 20,24,28,34,40)")
    p.add_argument("--nms-iou", type=finite_float(0.0, 1.0, low_open=True), default=None,
                   help="NMS overlap, in (0, 1] (default 0.5 for a dense detector, 0.3 for a classifier FCN)")
    p.add_argument("--eval", action="store_true", help="precision, recall, F1 and mAP@0.5 on seeded canvases of MNIST "
                   "test digits, for each layout group and all together")
    p.add_argument("--canvases", type=positive_int, default=500, help="--eval: canvases per layout (default 500)")
    p.add_argument("--layouts", type=name_list(LAYOUT_NAMES, "layout"), default=None, metavar="LIST",
                   help="--eval: the layout groups, of base, small, large, crowded, wide (default: all; see RESULTS.md)")
    p.set_defaults(func=cmd_detect)

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


def known_error(exc: BaseException) -> str | None:
    """The one-line message for a failure the user can fix, or None for anything unexpected (a bug)."""
    if isinstance(exc, DlaError):
        return str(exc)
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover
        Image = None
    if Image is not None and isinstance(exc, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return f"image too large to read safely ({exc})"
    import yaml

    if isinstance(exc, yaml.YAMLError):
        from dla.yamlfile import yaml_error_line

        mark = getattr(exc, "problem_mark", None)
        return yaml_error_line(exc, getattr(mark, "name", None))
    return None


def debugging() -> bool:
    """DLA_DEBUG=1: every failure shows its traceback."""
    return os.environ.get("DLA_DEBUG", "") not in ("", "0")


def run() -> None:
    """The `dla` command (and `python -m dla`): `main`, then a prompt exit.

    With torch loaded, the interpreter's teardown (freeing every module's objects) takes 1.5-2 s on
    2 cores after the command's work is done and written. By then every file and tracker is closed, so
    the exit handlers run (`atexit`: logging, compile workers, wandb), the streams are flushed, and the
    process ends without that teardown. Not under a profiler or tracer (cProfile, coverage), which write
    their results at the interpreter's exit.
    """
    code = main()
    if "torch" not in sys.modules or sys.getprofile() is not None or sys.gettrace() is not None:
        raise SystemExit(code)
    import atexit

    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return args.func(args)
    except KeyboardInterrupt:  # Ctrl-C outside a command's own handling (e.g. while torch imports): one line
        if debugging():
            raise
        print("\ndla: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # known failures become one line; the rest re-raise
        message = known_error(exc)
        if message is None or debugging():
            raise
        print(f"dla: error: {'; '.join(line for line in message.splitlines() if line.strip())}", file=sys.stderr)
        return getattr(exc, "exit_code", 1)
    finally:
        if "accelerate" in sys.modules:  # a command that made an accelerator (torch is loaded then)
            from dla.device import release_distributed

            release_distributed()
