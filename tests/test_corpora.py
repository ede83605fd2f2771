"""Corpus loaders on small hand-written files in each format, normalisation, the conversation split and pairs."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import pytest

from core.corpora import (
    CorpusError,
    _guess_format,
    load_cornell,
    load_corpus,
    load_lines,
    load_reddit,
    load_tsv,
    make_pairs,
    normalize_text,
    opening_messages,
    split_conversations,
)


def at(path: Path, lineno: int) -> str:
    """Regex for an error message that starts with ``path:lineno:``."""
    return "^" + re.escape(f"{path}:{lineno}:")


# ----------------------------------------------------------------------------- normalisation


def test_normalize_text_strips_control_chars_and_collapses_spaces():
    assert normalize_text("  hi\x00there\x07 \t\n  you\x7f  ") == "hi there you"
    assert normalize_text("a\r\nb\u00a0\u00a0c") == "a b c"  # CR/LF and no-break spaces are whitespace too
    assert normalize_text("\ufb01ne \uff21") == "fine A"  # NFKC: ligature and full-width letter
    assert normalize_text("Keep CASE, émoji 😀 and <b>tags</b>") == "Keep CASE, émoji 😀 and <b>tags</b>"
    assert normalize_text(" \x01\x02 ") == ""


# ----------------------------------------------------------------------------- cornell

CORNELL_LINES = [
    "L1 +++$+++ u0 +++$+++ m0 +++$+++ BIANCA +++$+++ Can we make this quick?",
    "L2 +++$+++ u2 +++$+++ m0 +++$+++ CAMERON +++$+++ Well, I thought we'd start with pronunciation.",
    "L3 +++$+++ u0 +++$+++ m0 +++$+++ BIANCA +++$+++ Not the café again.",
    "L4 +++$+++ u2 +++$+++ m0 +++$+++ CAMERON +++$+++ ",  # empty text, as in the real file
    "L5 +++$+++ u2 +++$+++ m0 +++$+++ CAMERON +++$+++ Why?  It's  +++ fine",
    "L9 +++$+++ u3 +++$+++ m1 +++$+++ JOE +++$+++ Unused line.",
]
CORNELL_CONVS = [
    "u0 +++$+++ u2 +++$+++ m0 +++$+++ ['L1', 'L2', 'L3']",
    'u0 +++$+++ u2 +++$+++ m0 +++$+++ ["L3", "L4", "L5"]',
    "u0 +++$+++ u2 +++$+++ m0 +++$+++ ['L5', 'L1']",
]


def write_cornell(folder: Path, lines=CORNELL_LINES, convs=CORNELL_CONVS) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "movie_lines.txt").write_bytes("\n".join(lines).encode("iso-8859-1") + b"\n")
    (folder / "movie_conversations.txt").write_bytes("\n".join(convs).encode("iso-8859-1") + b"\n")
    return folder


def test_cornell_exact_conversations(tmp_path):
    folder = write_cornell(tmp_path / "cornell")
    assert (folder / "movie_lines.txt").read_bytes().count(b"caf\xe9") == 1  # really ISO-8859-1 on disk
    expected_raw = [
        ["Can we make this quick?", "Well, I thought we'd start with pronunciation.", "Not the café again."],
        ["Not the café again.", "", "Why?  It's  +++ fine"],
        ["Why?  It's  +++ fine", "Can we make this quick?"],
    ]
    assert load_cornell(folder) == expected_raw
    why = "Why? It's +++ fine"
    expected = [expected_raw[0], ["Not the café again.", why], [why, "Can we make this quick?"]]
    assert load_corpus(folder) == expected  # a folder is guessed as cornell; empty utterance dropped
    assert load_corpus(str(folder / "movie_lines.txt")) == expected  # so is the path of either file
    assert load_corpus(folder / "movie_conversations.txt", fmt="cornell") == expected


def test_cornell_unknown_line_id_names_file_and_line(tmp_path):
    folder = write_cornell(tmp_path, convs=[CORNELL_CONVS[0], "u0 +++$+++ u2 +++$+++ m0 +++$+++ ['L1', 'L77']"])
    with pytest.raises(CorpusError, match=at(folder / "movie_conversations.txt", 2)) as e:
        load_cornell(folder)
    assert "'L77'" in str(e.value)


def test_cornell_id_list_is_not_evaluated(tmp_path):
    marker = tmp_path / "pwned"
    payload = f"__import__('pathlib').Path({str(marker)!r}).touch()"
    folder = write_cornell(tmp_path / "c", convs=[f"u0 +++$+++ u2 +++$+++ m0 +++$+++ {payload}"])
    with pytest.raises(CorpusError, match=at(folder / "movie_conversations.txt", 1)):
        load_cornell(folder)
    assert not marker.exists()


@pytest.mark.parametrize(
    "lines, convs, bad_file, bad_line",
    [
        (CORNELL_LINES[:2] + ["L3 +++$+++ u0 +++$+++ only three fields"], CORNELL_CONVS[:1], "movie_lines.txt", 3),
        (CORNELL_LINES, ["u0 +++$+++ u2 +++$+++ ['L1', 'L2']"], "movie_conversations.txt", 1),  # 3 fields
        (CORNELL_LINES, [CORNELL_CONVS[0], "u0 +++$+++ u2 +++$+++ m0 +++$+++ L1, L2"], "movie_conversations.txt", 2),
        (CORNELL_LINES, ["u0 +++$+++ u2 +++$+++ m0 +++$+++ [1, 2]"], "movie_conversations.txt", 1),
    ],
)
def test_cornell_malformed_names_file_and_line(tmp_path, lines, convs, bad_file, bad_line):
    folder = write_cornell(tmp_path, lines=lines, convs=convs)
    with pytest.raises(CorpusError, match=at(folder / bad_file, bad_line)):
        load_cornell(folder)


def test_cornell_missing_files(tmp_path):
    (tmp_path / "movie_lines.txt").write_text("\n".join(CORNELL_LINES), encoding="iso-8859-1")
    with pytest.raises(CorpusError, match="movie_conversations.txt"):
        load_cornell(tmp_path)
    with pytest.raises(CorpusError, match="nowhere"):
        load_cornell(tmp_path / "nowhere")


# ----------------------------------------------------------------------------- tsv


def test_tsv_exact_conversations_with_header_blank_lines_bom_and_crlf(tmp_path):
    path = tmp_path / "pairs.tsv"
    text = "\ufeffQuery\tResponse\r\nhi there\thello!\r\n\r\n   \n"  # BOM + header, CRLF, blank lines
    text += "how are you?\tfine,  thanks\n\tno query\n\t\nlast\tone"  # a lone tab is blank; no final newline
    path.write_text(text, encoding="utf-8", newline="")
    raw = [["hi there", "hello!"], ["how are you?", "fine,  thanks"], ["", "no query"], ["last", "one"]]
    assert load_tsv(path) == raw
    assert load_corpus(str(path)) == [["hi there", "hello!"], ["how are you?", "fine, thanks"], ["last", "one"]]


def test_tsv_header_only_on_first_line(tmp_path):
    path = tmp_path / "pairs.tsv"
    path.write_text("a\tb\nquery\tresponse\n", encoding="utf-8")
    assert load_tsv(path) == [["a", "b"], ["query", "response"]]
    path.write_text("query\treply\nx\ty\n", encoding="utf-8")  # not the literal header: a pair
    assert load_tsv(path) == [["query", "reply"], ["x", "y"]]


@pytest.mark.parametrize("bad", ["no tab at all", "one\ttwo\tthree"])
def test_tsv_line_without_exactly_one_tab_names_file_and_line(tmp_path, bad):
    path = tmp_path / "pairs.tsv"
    path.write_text(f"query\tresponse\nq\tr\n\n{bad}\nq2\tr2\n", encoding="utf-8")
    with pytest.raises(CorpusError, match=at(path, 4)):
        load_tsv(path)


def test_tsv_invalid_utf8_names_line(tmp_path):
    path = tmp_path / "pairs.tsv"
    path.write_bytes(b"q\tr\ncaf\xe9\tok\n")
    with pytest.raises(CorpusError, match=at(path, 2) + ".*0xe9"):
        load_corpus(path)


# ----------------------------------------------------------------------------- lines


def test_lines_blocks_are_conversations(tmp_path):
    path = tmp_path / "twitter_en.txt"
    path.write_text("\n\nhey you\nhi! 😀\nwhat's up?\n\n \n\nsecond dialogue\nreply\n\nlonely line\n", encoding="utf-8")
    convs = load_lines(path)
    assert convs == [["hey you", "hi! 😀", "what's up?"], ["second dialogue", "reply"], ["lonely line"]]
    loaded = load_corpus(str(path))  # .txt is guessed as lines; a one-line dialogue has no pair
    assert loaded == convs[:2]
    assert make_pairs(loaded) == [("hey you", "hi! 😀"), ("hi! 😀", "what's up?"), ("second dialogue", "reply")]


def test_lines_invalid_utf8_names_line(tmp_path):
    path = tmp_path / "chat.txt"
    path.write_bytes("ok\nfine\n\nbad \xff here\n".encode("latin-1"))
    with pytest.raises(CorpusError, match=at(path, 4)):
        load_lines(path)


# ----------------------------------------------------------------------------- reddit

COMMENTS = [  # name, parent_id, body, score
    ("t1_a", "t3_post", "top level comment", 10),
    ("t1_b", "t1_a", "reply to a", 5),
    ("t1_c", "t1_a", "another reply to a", -2),
    ("t1_d", "t1_b", "[deleted]", 3),
    ("t1_e", "t1_d", "reply to a deleted comment", 7),
    ("t1_f", "t1_b", "reply to b", 1),
    ("t1_g", "t1_zz", "parent not in the table", 50),
    ("t1_h", "t1_f", " [removed] ", 9),
]


def write_reddit(path: Path, table: str = "comments", extra_tables: tuple[str, ...] = ()) -> Path:
    con = sqlite3.connect(path)
    for t in (table, *extra_tables):
        con.execute(f'CREATE TABLE "{t}" (id INTEGER PRIMARY KEY, name TEXT, parent_id TEXT, body TEXT, score INT)')
    con.executemany(f'INSERT INTO "{table}" (name, parent_id, body, score) VALUES (?, ?, ?, ?)', COMMENTS[::-1])
    con.commit()
    con.close()
    return path


def test_reddit_parent_reply_pairs(tmp_path):
    path = write_reddit(tmp_path / "reddit.db")
    expected = [
        ["top level comment", "reply to a"],
        ["top level comment", "another reply to a"],
        ["reply to a", "reply to b"],
    ]
    assert load_reddit(path) == expected
    assert load_corpus(str(path)) == expected
    assert load_reddit(path, min_score=1) == [expected[0], expected[2]]
    assert load_corpus(path, min_score=5) == [expected[0]]


def test_reddit_finds_the_table_by_its_columns(tmp_path):
    con = sqlite3.connect(tmp_path / "r.sqlite")
    con.execute("CREATE TABLE users (name TEXT, karma INT)")
    con.commit()
    con.close()
    path = write_reddit(tmp_path / "r.sqlite", table="May2015")
    assert load_corpus(path)[0] == ["top level comment", "reply to a"]


def test_reddit_several_candidate_tables(tmp_path):
    path = write_reddit(tmp_path / "r.db", table="b_comments", extra_tables=("a_comments",))
    with pytest.raises(CorpusError, match="a_comments, b_comments"):
        load_reddit(path)
    assert len(load_reddit(path, table="b_comments")) == 3
    assert load_reddit(path, table="a_comments") == []


def test_reddit_not_a_database_or_no_table(tmp_path):
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not sqlite at all, just text\n" * 100)
    with pytest.raises(CorpusError, match="^" + re.escape(str(junk))):
        load_reddit(junk)
    other = tmp_path / "other.db"
    con = sqlite3.connect(other)
    con.execute("CREATE TABLE comments (id INTEGER, text TEXT)")
    con.commit()
    con.close()
    with pytest.raises(CorpusError, match="^" + re.escape(str(other)) + ".*no table"):
        load_reddit(other)
    with pytest.raises(CorpusError, match="missing.db"):
        load_reddit(tmp_path / "missing.db")
    assert not (tmp_path / "missing.db").exists()  # opened read-only: nothing created


# ----------------------------------------------------------------------------- load_corpus


def test_load_corpus_max_chars_cuts_conversation_at_long_utterances(tmp_path):
    path = tmp_path / "chat.txt"
    path.write_text("a\nbb\n" + "x" * 11 + "\nccc\ndddd\n\ne\nff\n", encoding="utf-8")
    assert load_corpus(path) == [["a", "bb", "x" * 11, "ccc", "dddd"], ["e", "ff"]]
    assert load_corpus(path, max_chars=10) == [["a", "bb"], ["ccc", "dddd"], ["e", "ff"]]
    assert load_corpus(path, max_chars=3) == [["a", "bb"], ["e", "ff"]]  # "dddd" leaves "ccc" alone


def test_load_corpus_errors_and_format_guess(tmp_path):
    with pytest.raises(CorpusError, match="unknown corpus format 'csv'"):
        load_corpus("x.csv", fmt="csv")
    with pytest.raises(CorpusError, match="needs the path"):
        load_corpus("tsv")
    with pytest.raises(CorpusError, match="nope.tsv"):
        load_corpus(tmp_path / "nope.tsv")
    assert _guess_format(tmp_path) == "cornell"
    guesses = {"a.TSV": "tsv", "a.db": "reddit", "a.sqlite3": "reddit", "a.json": "chitchat", "a.txt": "lines"}
    assert {name: _guess_format(Path(name)) for name in guesses} == guesses
    assert _guess_format(Path("corpus/movie_conversations.txt")) == "cornell"


# ----------------------------------------------------------------------------- chitchat, split, pairs


@pytest.fixture(scope="module")
def chitchat():
    return load_corpus("chitchat")


def test_chitchat_loads_offline(chitchat):
    assert len(chitchat) > 3000
    assert all(len(c) >= 2 for c in chitchat)
    assert all(u and normalize_text(u) == u for c in chitchat for u in c)
    assert len(make_pairs(chitchat)) > 100_000


def test_split_is_deterministic_disjoint_and_sized(chitchat):
    n = len(chitchat)
    split = split_conversations(chitchat, seed=7, valid_frac=0.1, test_frac=0.05)
    index = {id(c): i for i, c in enumerate(chitchat)}
    parts = [{index[id(c)] for c in part} for part in (split.train, split.valid, split.test)]
    assert [len(p) for p in parts] == [len(split.train), len(split.valid), len(split.test)]  # no repeats
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    assert set.union(*parts) == set(range(n))
    assert len(split.valid) == round(0.1 * n) and len(split.test) == round(0.05 * n)
    again = split_conversations(chitchat, seed=7, valid_frac=0.1, test_frac=0.05)
    assert (again.train, again.valid, again.test) == (split.train, split.valid, split.test)
    other = split_conversations(chitchat, seed=8, valid_frac=0.1, test_frac=0.05)
    assert other.valid != split.valid and other.test != split.test


def test_split_small_and_empty_fractions():
    convs = [[f"q{i}", f"r{i}"] for i in range(10)]
    split = split_conversations(convs, seed=0, valid_frac=0.01, test_frac=0.0)
    assert (len(split.train), len(split.valid), len(split.test)) == (9, 1, 0)  # a non-zero part gets at least one


def test_make_pairs_and_swap():
    convs = [["a", "b", "c"], ["x", "y"]]
    assert make_pairs(convs) == [("a", "b"), ("b", "c"), ("x", "y")]
    assert make_pairs(convs, swap=True) == [("b", "a"), ("c", "b"), ("y", "x")]
    assert opening_messages(convs) == ["a", "x"]


# ----------------------------------------------------------------------------- input checks before training


def test_check_pairs_names_the_file_and_the_expected_format(tmp_path):
    from core.corpora import check_pairs

    empty = tmp_path / "empty.tsv"
    empty.write_text("")
    with pytest.raises(CorpusError, match=at(empty, 1) + " the file is empty; expected tsv format"):
        check_pairs(load_corpus(empty), empty, None, min_pairs=1)
    single = tmp_path / "single.txt"
    single.write_text("one line alone\n\nanother alone\n")
    with pytest.raises(CorpusError, match="no \\(query, response\\) pair found; expected lines format: UTF-8 text, "
                                          "one utterance per line"):
        check_pairs(load_corpus(single, fmt="lines"), single, "lines", min_pairs=1)
    few = tmp_path / "few.tsv"
    few.write_text("a\tb\nc\td\n")
    assert check_pairs(load_corpus(few), few, "tsv", min_pairs=2) == 2
    with pytest.raises(CorpusError, match="only 2 .* fewer than one batch of 64"):
        check_pairs(load_corpus(few), few, "tsv", min_pairs=64)


def test_utf16_file_gets_a_hint(tmp_path):
    path = tmp_path / "pairs.tsv"
    path.write_bytes("hi\thello\n".encode("utf-16"))
    with pytest.raises(CorpusError, match=at(path, 1) + ".*it looks like UTF-16.*re-save the file as utf-8"):
        load_corpus(path, fmt="tsv")


def test_json_without_the_chitchat_layout_is_a_corpus_error(tmp_path):
    path = tmp_path / "other.json"
    path.write_text('{"a": {"turns": ["hi", "hello"]}}')
    with pytest.raises(CorpusError, match="conversation 1 does not have the chitchat layout"):
        load_corpus(path, fmt="chitchat")


def test_training_refuses_a_corpus_smaller_than_a_batch(tmp_path):
    from core.training.train import TrainConfig, prepare_data

    path = tmp_path / "pairs.tsv"
    path.write_text("".join(f"hello {i}\tworld {i}\n" for i in range(70)))  # 70 pairs, 63 of them in training
    with pytest.raises(CorpusError, match="training pairs .* fewer than one batch of 64"):
        prepare_data(TrainConfig(out=str(tmp_path / "run"), corpus=str(path), corpus_format="tsv", vocab_size=100))
