"""`dla hf ...`: the Lab 2.2 and 2.3 commands, and `dla predict` for fine-tuned text runs."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable

from dla.cli_types import nonneg_float, nonneg_int, positive_int, seed_int, top_p_float
from dla.errors import DlaError


def cmd_tokenize(args: argparse.Namespace) -> int:
    from dla.hf.hub import quiet_transformers
    from dla.hf.tokens import tokenize_with

    quiet_transformers()
    result = tokenize_with(args.text, args.tokenizer)
    print(json.dumps(result.as_dict()) if args.json else result.format())
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    if args.run:  # a Lab 2.1 run: the same stream as `dla generate RUN`
        from dla.build import generate_from_run

        return args.write_stream(generate_from_run(args.run, args.prompt, args.max_new_tokens or args.max_length,
                                                   args.temperature, args.top_k, args.top_p, args.seed))
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
    from dla.hf.hub import quiet_transformers

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
    from dla.hf.features import features_baseline
    from dla.hf.hub import quiet_transformers

    cfg = _text_classifier_config(args)
    quiet_transformers()
    try:
        features_baseline(cfg, args.data_root_path(args))
    except DlaError as exc:
        raise _offline_hint(cfg, exc) from None
    return 0


def add_hf_parser(sub: argparse._SubParsersAction, shared: dict[str, Callable]) -> None:
    """`dla hf tokenize|generate|finetune|features-baseline|eval`; `shared` holds the main CLI's `train`,
    `eval`, `write_stream` and `data_root`, which `finetune`, `eval`, `generate --run` and the baseline reuse."""
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
    q.set_defaults(func=cmd_generate, write_stream=shared["write_stream"])

    q = hf.add_parser("finetune", help="fine-tune a pretrained encoder for topic classification (= dla train EXPERIMENT)")
    q.add_argument("experiment", nargs="?", help="lab2-finetune-agnews (offline, MiniLM), lab2-finetune-yahoo (online, DistilRoBERTa) or a YAML path")
    q.add_argument("overrides", nargs="*", help="key=value, e.g. train.epochs=2 optim.lr=5e-5 data.path=test.csv model.pretrained=DIR")
    q.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted fine-tune from its last checkpoint")
    q.set_defaults(func=cmd_finetune, train=shared["train"])

    q = hf.add_parser("features-baseline", help="frozen encoder features + logistic regression on the same splits")
    q.add_argument("experiment", help="as for finetune")
    q.add_argument("overrides", nargs="*", help="key=value, e.g. baseline.c_grid=[1,10]")
    q.set_defaults(func=cmd_features, data_root_path=shared["data_root"])

    q = hf.add_parser("eval", help="test accuracy, macro-F1 and confusion matrix of a fine-tuned run (= dla eval RUN)")
    q.add_argument("run", help="run directory (runs/lab2-finetune-agnews/<run>)")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=shared["eval"], command_name="dla hf eval")
