"""`dla hf ...`: the Lab 2.2 and 2.3 commands, and `dla predict` for fine-tuned text runs."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from dla.cli_types import nonneg_float, nonneg_int, positive_int, seed_int, top_p_float
from dla.errors import DlaError


def _data_root(args: argparse.Namespace) -> Path:
    from dla.data.vision import default_data_root

    return Path(args.data_root).expanduser() if getattr(args, "data_root", None) else default_data_root()


def cmd_tokenize(args: argparse.Namespace) -> int:
    from dla.hf.hub import quiet_transformers
    from dla.hf.tokens import tokenize_with

    quiet_transformers()
    result = tokenize_with(args.text, args.tokenizer)
    print(json.dumps(result.as_dict()) if args.json else result.format())
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    if args.run:
        return _generate_from_run(args)
    from dla.hf.generate import Sampling, generate, load_causal_lm, stream_to_stdout
    from dla.hf.hub import quiet_transformers

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


def _generate_from_run(args: argparse.Namespace) -> int:
    """The hook for Lab 2.1 runs: `dla.generate_run.generate_from_run` streams or returns the text."""
    try:
        from dla.generate_run import generate_from_run
    except ImportError:
        raise DlaError("Lab 2.1 generation not available") from None
    from dla.cli import open_run_of_kind

    open_run_of_kind(args.run, "language-model", "dla hf generate --run")
    if args.prompt is None:  # the run's own default ("Nel mezzo del cammin" for the Inferno)
        from dla.generate_run import default_prompt
        from dla.rundir import RunDir

        args.prompt = default_prompt(RunDir.open(args.run).load_config())
    top_k = args.top_k if args.top_k and args.top_k > 0 else None
    result = generate_from_run(args.run, args.prompt, args.max_new_tokens or args.max_length, args.temperature,
                               top_k, args.top_p, args.seed)
    if isinstance(result, str):
        print(result)
    elif result is not None:
        sys.stdout.write(args.prompt)  # the pieces continue the prompt, as `dla generate` prints them
        for piece in result:
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
    return 0


def _offline_hint(cfg, exc: DlaError) -> DlaError:
    """Point users without the Hub at the offline experiment."""
    text = str(exc)
    if cfg.data.name == "ag_news" or "lab2-finetune-agnews" in text or not ("offline" in text or "network" in text):
        return exc
    return type(exc)(f"{text}; offline, run lab2-finetune-agnews instead")


def cmd_finetune(args: argparse.Namespace) -> int:
    from dla.hf.config import load_finetune
    from dla.hf.finetune import finetune
    from dla.hf.hub import quiet_transformers

    cfg = load_finetune(args.experiment, args.overrides)
    quiet_transformers()
    try:
        finetune(cfg, _data_root(args))
    except DlaError as exc:
        raise _offline_hint(cfg, exc) from None
    except KeyboardInterrupt:
        print("\ninterrupted; the best epoch so far is in the run's model/ folder", file=sys.stderr)
        return 130
    return 0


def cmd_features(args: argparse.Namespace) -> int:
    from dla.hf.config import load_finetune
    from dla.hf.features import features_baseline
    from dla.hf.hub import quiet_transformers

    cfg = load_finetune(args.experiment, args.overrides)
    quiet_transformers()
    try:
        features_baseline(cfg, _data_root(args))
    except DlaError as exc:
        raise _offline_hint(cfg, exc) from None
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from dla.hf.classify import evaluate_run
    from dla.hf.config import is_text_run
    from dla.hf.hub import quiet_transformers

    if not is_text_run(args.run) and (Path(args.run) / "config.yaml").is_file():
        from dla.cli import open_run_of_kind

        open_run_of_kind(args.run, "text-classifier", "dla hf eval")  # names the run's kind (or its damage)

    quiet_transformers()
    result = evaluate_run(args.run, _data_root(args))
    if args.json:
        print(json.dumps({k: v for k, v in result.items() if k != "confusion_text"}))
    else:
        print(f"{args.run}: {result['data']} test split ({result['n']} texts): accuracy {result['test_acc']:.4f}  "
              f"macro-F1 {result['test_f1']:.4f}  loss {result['test_loss']:.4f}")
        print(result["confusion_text"])
        print(f"wrote {result['confusion']} and {Path(args.run) / 'eval.json'}")
    return 0


def predict_command(args: argparse.Namespace) -> int:
    """`dla predict RUN TEXT...` for a fine-tuned text run: the top topics of each text."""
    from dla.hf.classify import predict_texts
    from dla.hf.hub import quiet_transformers

    quiet_transformers()
    for text, ranked in zip(args.images, predict_texts(args.run, list(args.images), args.top_k)):
        if args.json:
            print(json.dumps({"text": text, "top": [{"class": k, "prob": p} for k, p in ranked]}))
        else:
            short = text if len(text) <= 60 else text[:57] + "..."
            print(f"{short}: " + "  ".join(f"{k} {p:.3f}" for k, p in ranked))
    return 0


def add_hf_parser(sub: argparse._SubParsersAction) -> None:
    """`dla hf tokenize|generate|finetune|features-baseline|eval`."""
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
    q.add_argument("--max-length", type=positive_int, default=50, help="prompt + new tokens (default 50)")
    q.add_argument("--max-new-tokens", type=positive_int,
                   help="new tokens, whatever the prompt length (overrides --max-length)")
    q.add_argument("--temperature", type=nonneg_float, default=0.7, help="0 for greedy decoding (default 0.7)")
    q.add_argument("--top-k", type=nonneg_int, default=50, help="0 to disable (default 50)")
    q.add_argument("--top-p", type=top_p_float, help="nucleus sampling in (0, 1], e.g. 0.95 (default off)")
    q.add_argument("--num-return-sequences", type=positive_int, default=1)
    q.add_argument("--seed", type=seed_int, default=42)
    q.set_defaults(func=cmd_generate)

    q = hf.add_parser("finetune", help="fine-tune a pretrained encoder for topic classification -> runs/<experiment>/<run>")
    q.add_argument("experiment", help="lab2-finetune-agnews (offline, MiniLM), lab2-finetune-yahoo (online, DistilRoBERTa) or a YAML path")
    q.add_argument("overrides", nargs="*", help="key=value, e.g. train.epochs=2 data.path=test.csv model.name=DIR")
    q.set_defaults(func=cmd_finetune)

    q = hf.add_parser("features-baseline", help="frozen encoder features + logistic regression on the same splits")
    q.add_argument("experiment", help="as for finetune")
    q.add_argument("overrides", nargs="*", help="key=value, e.g. baseline.c_grid=[1,10]")
    q.set_defaults(func=cmd_features)

    q = hf.add_parser("eval", help="test accuracy, macro-F1 and confusion matrix of a fine-tuned run")
    q.add_argument("run", help="run directory (runs/lab2-finetune-agnews/<run>)")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_eval)
