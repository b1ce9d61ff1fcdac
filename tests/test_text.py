"""Lab 2.1 data: the Inferno import and Gutenberg stripping, tokenizers, splits and windows."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import SHARED, need
from dla.data import text as T
from dla.errors import DataError

INFERNO = SHARED / "inferno" / "inferno.txt"


@pytest.fixture(scope="module")
def inferno() -> str:
    need(INFERNO, "the shared Inferno text")
    return INFERNO.read_text()


def gutenberg_wrap(poem: str) -> str:
    """The shared poem the way Project Gutenberg publishes it: CRLF, a header, an introduction,
    a heading before every canto (the shared copy has none) and the licence after the poem."""
    cantos, current = [], []
    for line in poem.strip("\n").split("\n\n"):
        current.append(line)
        if line.startswith("Allor si mosse, e io li tenni dietro."):  # the end of Canto I
            cantos.append(current)
            current = []
    cantos.append(current)
    body = []
    for number, canto in enumerate(cantos, 1):
        body.append(f"Inferno\nCanto {['I', 'II'][number - 1]}\n\n\n" + "\n\n".join(canto))
    text = (
        "\ufeffThe Project Gutenberg eBook of La Divina Commedia di Dante: Inferno\n\n"
        "This eBook is for the use of anyone anywhere...\n\n"
        "*** START OF THE PROJECT GUTENBERG EBOOK LA DIVINA COMMEDIA DI DANTE: INFERNO ***\n\n\n\n"
        "La Divina Commedia di Dante\n\nIntroduzione: il poema di Dante, che tutti conoscono, "
        "comincia a Nel mezzo di una selva.\n\n\n\n"
        + "\n\n\n\n".join(body)
        + "\n\n\n\n*** END OF THE PROJECT GUTENBERG EBOOK LA DIVINA COMMEDIA DI DANTE: INFERNO ***\n\n"
        "Updated editions will replace the previous one--the old editions will be renamed.\n"
    )
    return text.replace("\n", "\r\n")


def test_gutenberg_stripping_recovers_the_shared_text_exactly(inferno):
    wrapped = gutenberg_wrap(inferno)
    assert "START OF THE PROJECT" in wrapped and "Canto II" in wrapped and "\r\n" in wrapped
    stripped = T.strip_gutenberg(wrapped)
    assert stripped == inferno
    assert T.md5(stripped.encode()) == T.INFERNO_MD5


def test_import_takes_the_clean_file_or_a_gutenberg_file_and_refuses_other_text(inferno, tmp_path):
    root = tmp_path / "root"
    assert T.import_inferno(INFERNO.parent, root).read_text() == inferno
    raw = tmp_path / "pg997.txt"
    raw.write_bytes(gutenberg_wrap(inferno).encode())
    assert T.import_inferno(raw, tmp_path / "root2").read_text() == inferno
    other = tmp_path / "other.txt"
    other.write_text(inferno.replace("selva", "foresta"))
    with pytest.raises(DataError, match="checksum"):
        T.import_inferno(other, tmp_path / "root3")
    with pytest.raises(DataError, match="does not look like the Inferno"):
        T.strip_gutenberg("*** START OF X ***\nsome other book\n*** END OF X ***\n")


def test_char_tokenizer_round_trips_and_names_unknown_characters(inferno, tmp_path):
    tok = T.CharTokenizer.train(inferno)
    assert tok.vocab_size == 57  # the PROVENANCE figure
    assert tok.decode(tok.encode(inferno)) == inferno
    tok.save(tmp_path / "tok.json")
    again = T.load_tokenizer(tmp_path / "tok.json")
    assert again.encode("Nel mezzo") == tok.encode("Nel mezzo")
    with pytest.raises(DataError, match="Gutenberg way"):
        tok.encode("più")


def test_bpe_tokenizer_like_the_original_round_trips_the_inferno(inferno, tmp_path):
    tok = T.BPETokenizer.train(inferno, vocab_size=5549, min_frequency=2)
    ids = tok.encode(inferno)
    assert tok.vocab_size == 5549
    assert 40_000 < len(ids) < 50_000  # the original reports about 45.6k tokens
    assert 3.5 < len(inferno) / len(ids) < 4.5
    assert tok.decode(ids) == inferno
    tok.save(tmp_path / "bpe.json")
    assert T.load_tokenizer(tmp_path / "bpe.json").encode(inferno[:500]) == tok.encode(inferno[:500])
    assert tok.encode("<s>")[0] < 5  # the specials come first, as the original's


def test_splits_are_contiguous_cut_at_line_starts_and_cover_the_text(inferno):
    parts = T.split_text(inferno, [0.8, 0.1, 0.1])
    assert "".join(parts) == inferno
    assert [round(len(p) / len(inferno), 2) for p in parts] == [0.8, 0.1, 0.1]
    assert parts[0].endswith("\n") and parts[1].endswith("\n")  # each cut falls at the start of a line
    two = T.split_text(inferno, [0.9, 0.1, 0.0])
    assert two[2] == "" and "".join(two) == inferno


def test_text_data_fits_bpe_on_train_only_and_scores_val_as_test_for_two_way_splits(inferno):
    data = T.build_text_data(inferno, "inferno", [0.9, 0.1, 0.0], "char")
    assert data.test_is_val and data.test is data.val
    assert len(data.train.ids) + len(data.val.ids) == len(inferno)
    bpe = T.build_text_data(inferno[:40_000], "inferno", [0.8, 0.1, 0.1], "bpe", vocab_size=800)
    assert not bpe.test_is_val
    assert bpe.tokenizer.vocab_size <= 800
    assert 1.5 < bpe.test.chars_per_token < 5
    assert T.bits_per_char(math.log(2) * 3.0, bpe.test) == pytest.approx(3.0 / bpe.test.chars_per_token)


def test_random_windows_are_shifted_by_one_and_shard_the_global_batch():
    ids = torch.arange(1000)
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    x, y = T.random_windows(ids, 16, 8, g1)
    assert x.shape == y.shape == (8, 16)
    assert torch.equal(y[:, :-1], x[:, 1:]) and torch.equal(y[:, -1], x[:, -1] + 1)
    half = T.random_windows(ids, 16, 8, g2, rank=1, world=2)[0]
    assert torch.equal(half, x[4:])
    with pytest.raises(DataError, match="shorter than one window"):
        T.random_windows(torch.arange(10), 16, 2, g1)


def test_tiled_windows_predict_every_token_once_and_last_position_windows_slide_by_one():
    ids = torch.arange(103)
    targets = torch.cat([y.flatten() for _, y in T.tiled_windows(ids, 10, 4)])
    assert torch.equal(targets, torch.arange(1, 103))
    for x, y in T.tiled_windows(ids, 10, 4):
        assert torch.equal(y, x + 1)
    pairs = list(T.last_position_windows(ids, 10, 32))
    xs, ys = torch.cat([p[0] for p in pairs]), torch.cat([p[1] for p in pairs])
    assert len(ys) == 93 and torch.equal(ys, xs[:, -1] + 1) and torch.equal(xs[:, 0], torch.arange(93))


def test_last_position_starts_are_a_fixed_sorted_sample_of_distinct_windows():
    assert torch.equal(T.last_position_starts(103, 10), torch.arange(93))
    assert torch.equal(T.last_position_starts(103, 10, 500), torch.arange(93))  # more asked than there are
    s = T.last_position_starts(18589, 128, 1024)
    assert len(s) == 1024 and len(s.unique()) == 1024 and bool((s.diff() > 0).all())
    assert 0 <= int(s[0]) and int(s[-1]) <= 18589 - 129
    assert torch.equal(s, T.last_position_starts(18589, 128, 1024))  # the same windows on every call
    # every position within a window of consecutive targets is visited about equally often
    counts = torch.bincount((s + 127) % 128, minlength=128)
    assert int(counts.max()) <= 24  # 8 expected per position
    pairs = list(T.last_position_windows(torch.arange(103), 10, 2, T.last_position_starts(103, 10, 5)))
    xs, ys = torch.cat([p[0] for p in pairs]), torch.cat([p[1] for p in pairs])
    assert len(ys) == 5 and torch.equal(ys, xs[:, -1] + 1)
