"""Bradley–Terry leaderboard: exact fits on hand-made votes, rank by CI, matrices, and a scripted crowd that votes
through the battle service with known strengths.

    OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q tests/test_arena_leaderboard.py
"""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pandas as pd
import pytest

from core.arena import CATEGORIES, Arena, ArenaStore, compute_leaderboard
from core.arena.interchange import read_votes
from core.arena.leaderboard import EMPTY_NOTE, TABLE_COLUMNS, rank_by_ci


def frame(*votes: tuple[str, str, str]) -> pd.DataFrame:
    return pd.DataFrame(votes, columns=["model_a", "model_b", "winner"])


def elo_gap(p: float) -> float:
    """R_i - R_j for P(i beats j) = p on the 400-point, base-10 scale."""
    return 400 * math.log10(p / (1 - p))


def test_two_bots_fit_the_closed_form_maximum_likelihood():
    # x scores 3 of 4 against y (in both seats), so the MLE has P(x beats y) = 3/4 exactly
    board = compute_leaderboard(frame(("x", "y", "model_a"), ("y", "x", "model_b"), ("x", "y", "model_a"),
                                      ("x", "y", "model_b")), bootstrap=0)
    r = dict(zip(board.table["bot"], board.table["rating"]))
    assert r["x"] - r["y"] == pytest.approx(elo_gap(0.75), abs=0.01)
    assert (r["x"] + r["y"]) / 2 == pytest.approx(1000, abs=1e-6)  # anchored: mean rating 1000
    assert board.table["bot"].tolist() == ["x", "y"] and board.table["rank"].tolist() == [1, 2]


def test_ties_count_half_and_both_bad_is_a_tie_reported_apart():
    wins_and_ties = compute_leaderboard(frame(("x", "y", "model_a"), ("x", "y", "model_a"), ("x", "y", "tie"),
                                              ("y", "x", "tie")), bootstrap=0)
    both_bad = compute_leaderboard(frame(("x", "y", "model_a"), ("x", "y", "model_a"),
                                         ("x", "y", "tie (bothbad)"), ("y", "x", "tie")), bootstrap=0)
    for board in (wins_and_ties, both_bad):  # x: 2 wins + 2 halves = 3 of 4 points
        r = dict(zip(board.table["bot"], board.table["rating"]))
        assert r["x"] - r["y"] == pytest.approx(elo_gap(0.75), abs=0.01)
    t = both_bad.table.set_index("bot")
    assert (t.loc["x", "wins"], t.loc["x", "ties"], t.loc["x", "both_bad"], t.loc["x", "votes"]) == (2, 1, 1, 4)
    assert (t.loc["y", "losses"], t.loc["y", "both_bad"]) == (2, 1)


def test_win_rate_and_battle_count_matrices():
    board = compute_leaderboard(frame(("x", "y", "model_a"), ("y", "x", "model_a"), ("x", "y", "model_a"),
                                      ("x", "y", "tie"), ("y", "z", "model_a")), bootstrap=0)
    wr, n = board.win_rate, board.battle_count
    assert wr.loc["x", "y"] == pytest.approx(2.5 / 4) and wr.loc["y", "x"] == pytest.approx(1.5 / 4)
    assert wr.loc["y", "z"] == 1.0 and math.isnan(wr.loc["x", "z"]) and math.isnan(wr.loc["x", "x"])
    assert n.loc["x", "y"] == n.loc["y", "x"] == 4 and n.loc["x", "z"] == 0 and n.loc["y", "z"] == 1
    assert list(wr.index) == list(board.table["bot"]) == list(n.columns)


def test_rank_is_one_plus_the_bots_whose_lower_bound_is_above_the_upper_bound():
    low = np.array([1100.0, 1000.0, 900.0, 700.0])
    high = np.array([1200.0, 1150.0, 1050.0, 1099.0])
    assert rank_by_ci(low, high).tolist() == [1, 1, 2, 2]  # 1099 < 1100: only the first is surely above


def test_bootstrap_is_seeded_and_its_interval_holds_the_rating():
    rng = random.Random(0)
    votes = frame(*[(a, b, rng.choice(["model_a", "model_b", "tie"])) for a, b in
                    [("p", "q"), ("q", "r"), ("r", "p")] * 30])
    one = compute_leaderboard(votes, bootstrap=100, seed=7)
    two = compute_leaderboard(votes, bootstrap=100, seed=7)
    other = compute_leaderboard(votes, bootstrap=100, seed=8)
    pd.testing.assert_frame_equal(one.table, two.table)
    assert not np.allclose(one.table["ci_low"], other.table["ci_low"])
    assert (one.table["ci_low"] < one.table["rating"]).all() and (one.table["rating"] < one.table["ci_high"]).all()
    assert "100 bootstrap resamples" in one.note and "90 votes, 3 bots" in one.note


def test_no_votes_is_an_empty_leaderboard_with_a_note():
    board = compute_leaderboard(frame(), bootstrap=1000)
    assert board.table.empty and list(board.table.columns) == TABLE_COLUMNS
    assert board.note == EMPTY_NOTE and board.to_markdown() == EMPTY_NOTE
    assert board.to_dict()["leaderboard"] == [] and board.n_votes == 0


def test_bad_votes_are_left_out_with_a_note_and_bad_input_is_refused():
    board = compute_leaderboard(frame(("x", "y", "model_a"), ("x", "x", "model_a"), ("x", "y", "draw")),
                                bootstrap=0)
    assert board.n_votes == 1 and board.dropped == {"unknown winner": 1, "a bot against itself": 1}
    assert "a bot against itself (1)" in board.note
    with pytest.raises(ValueError, match="missing \\['winner'\\]"):
        compute_leaderboard(pd.DataFrame({"model_a": ["x"], "model_b": ["y"]}))
    with pytest.raises(ValueError, match="bootstrap must be >= 0"):
        compute_leaderboard(frame(("x", "y", "tie")), bootstrap=-1)


TRUE_RATINGS = {"ace": 1200.0, "good": 1100.0, "fair": 1000.0, "weak": 900.0, "poor": 800.0}  # mean 1000
TIE_SHARE = 0.1


def test_a_scripted_crowd_is_recovered_by_the_leaderboard(tmp_path):
    """2,000 simulated voters play through the battle service: each battle gets one turn and one vote, drawn
    from the true Bradley–Terry model (10% ties, a third of them "both bad", drawn so that the expected score
    of each side stays the Bradley–Terry probability).

    Asserted: the fitted order is the true order, and at least 4 of the 5 true ratings (anchored like the fit:
    mean 1000) lie inside their 95% bootstrap intervals."""
    store = ArenaStore(f"sqlite:///{tmp_path / 'crowd.sqlite3'}")
    arena = Arena(store, list(TRUE_RATINGS), rng=3, max_votes=10**6, max_battles=10**6)
    rng = random.Random(11)
    for k in range(2000):
        session = f"voter-{k % 100}"
        battle = arena.new_battle(session)
        arena.record_turn(battle.id, session, "hi", {"text": "reply a"}, {"text": "reply b"})
        ra, rb = TRUE_RATINGS[battle.model_a], TRUE_RATINGS[battle.model_b]
        p_a = 1 / (1 + 10 ** ((rb - ra) / 400))
        u = rng.random()
        if u < TIE_SHARE:
            winner = "tie (bothbad)" if rng.random() < 1 / 3 else "tie"
        else:  # P(A wins | no tie) chosen so that P(A wins) + TIE_SHARE / 2 = p_a
            winner = "model_a" if rng.random() < (p_a - TIE_SHARE / 2) / (1 - TIE_SHARE) else "model_b"
        arena.vote(battle.id, session, winner)

    board = compute_leaderboard(store.votes_frame(), bootstrap=200, seed=0)
    store.close()
    t = board.table.set_index("bot")
    assert board.n_votes == 2000 and t["votes"].sum() == 4000
    assert list(board.table.sort_values("rating", ascending=False)["bot"]) == list(TRUE_RATINGS)
    inside = [name for name, r in TRUE_RATINGS.items() if t.loc[name, "ci_low"] <= r <= t.loc[name, "ci_high"]]
    assert len(inside) >= 4, board.table
    assert board.battle_count.to_numpy().sum() == 4000
    print("\n" + board.to_markdown())


# ----------------------------------------------------------------------------- categories and style control


def reply(rng: random.Random, words: int, question: bool) -> str:
    text = " ".join(rng.choice(["well", "i", "think", "so", "maybe", "yes", "dogs", "are", "fun"])
                    for _ in range(max(1, words)))
    return text + (" ?" if question else " .")


def length_loving_votes(path, n: int = 2000, seed: int = 0) -> None:
    """A clean-battle file of two bots of equal strength that differ only in reply length ('long' answers with
    12 +- 4 words, 'short' with 6 +- 3), judged by voters who prefer the longer reply: logit P(A wins) = 4 d with
    d = (words A - words B) / (words A + words B), whoever the bots are. Replies end with a question at random
    (30%), which the voters ignore."""
    rng = random.Random(seed)
    mean = {"long": 12, "short": 6}
    with open(path, "w", encoding="utf-8") as f:
        for k in range(n):
            a, b = ("long", "short") if rng.random() < 0.5 else ("short", "long")
            wa, wb = (max(1, round(rng.gauss(mean[m], mean[m] / 3))) for m in (a, b))
            d = (wa - wb) / (wa + wb)
            winner = "model_a" if rng.random() < 1 / (1 + math.exp(-4 * d)) else "model_b"
            conv = [[{"role": "user", "content": "hi"},
                     {"role": "assistant", "content": reply(rng, w, rng.random() < 0.3)}] for w in (wa, wb)]
            f.write(json.dumps({"question_id": f"q{k}", "model_a": a, "model_b": b, "winner": winner, "turn": 1,
                                "conversation_a": conv[0], "conversation_b": conv[1]}) + "\n")


def test_style_control_removes_a_gap_that_only_reply_length_made(tmp_path):
    path = tmp_path / "length.jsonl"
    length_loving_votes(path)
    votes = read_votes(path)
    plain = compute_leaderboard(votes, bootstrap=100, seed=0)
    styled = compute_leaderboard(votes, bootstrap=100, seed=0, style_control=True)
    gap = dict(zip(plain.table["bot"], plain.table["rating"]))
    sc = dict(zip(styled.table["bot"], styled.table["sc_rating"]))
    print(f"\nlong - short: {gap['long'] - gap['short']:.0f} points without style control, "
          f"{sc['long'] - sc['short']:.0f} with it; length {styled.style['length']['points']:+.0f} points per sd, "
          f"question {styled.style['question']['points']:+.0f}")
    assert gap["long"] - gap["short"] > 150  # the plain fit credits the bot with what its length bought
    # style control: equal strength, up to the noise of 2,000 votes (over 16 seeds: mean +6, sd 13 points)
    assert abs(sc["long"] - sc["short"]) < 0.25 * (gap["long"] - gap["short"])
    assert plain.table.set_index("bot")["rank"].to_dict() == {"long": 1, "short": 2}
    length, question = styled.style["length"], styled.style["question"]
    assert length["ci_low"] > 0 and length["points"] > 100  # what length bought, surely positive
    assert question["ci_low"] < 0 < question["ci_high"]  # the voters ignored questions
    # both rankings are in the table, and the markdown says which is which
    assert {"rating", "rank", "sc_rating", "sc_rank"} <= set(styled.table.columns)
    md = styled.to_markdown()
    assert "rank (style controlled)" in md and "rating without" in md and "reply length (words)" in md


def test_categories_select_their_votes_and_mark_provisional_bots():
    rows = [("x", "y", "model_a", "single", 1), ("x", "y", "model_b", "single", 3), ("y", "x", "tie", "single", 2),
            ("x", "z", "model_a", "per_turn", 2), ("y", "z", "model_a", "dialogue", 5)]
    votes = pd.DataFrame(rows, columns=["model_a", "model_b", "winner", "kind", "turn"])
    counts = {c: compute_leaderboard(votes, bootstrap=0, category=c, min_votes=2).n_votes for c in CATEGORIES}
    assert counts == {"all": 5, "single_turn": 1, "multi_turn": 1, "per_turn": 1, "dialogue": 1}
    board = compute_leaderboard(votes, bootstrap=0, min_votes=3)
    assert board.table.set_index("bot")["provisional"].to_dict() == {"x": False, "y": False, "z": True}
    assert "(provisional)" in board.to_markdown() and "fewer than 3 votes" in board.note
    empty = compute_leaderboard(votes[votes["kind"] == "single"], bootstrap=0, category="dialogue")
    assert empty.table.empty and empty.note == "No whole-dialogue votes yet."
    with pytest.raises(ValueError, match="category must be one of all, single_turn"):
        compute_leaderboard(votes, category="long")
    with pytest.raises(ValueError, match="style control needs the replies' style"):
        compute_leaderboard(votes, style_control=True)


def test_the_rating_is_the_full_data_fit_and_weights_count():
    votes = frame(("x", "y", "model_a"), ("x", "y", "model_a"), ("x", "y", "model_b"), ("y", "x", "model_a"))
    board = compute_leaderboard(votes, bootstrap=200, seed=0)
    r = dict(zip(board.table["bot"], board.table["rating"]))
    assert r["x"] - r["y"] == pytest.approx(0.0, abs=0.01)  # the fit on all votes (2:2), whatever the resamples
    weighted = votes.assign(pair_weight=[1.0, 1.0, 3.0, 3.0])  # B's wins count three times
    w = dict(zip(*compute_leaderboard(weighted, bootstrap=0).table[["bot", "rating"]].T.to_numpy()))
    assert w["y"] - w["x"] == pytest.approx(elo_gap(0.75), abs=0.01)
    assert "Actively paired votes weigh" in compute_leaderboard(weighted, bootstrap=0).note
