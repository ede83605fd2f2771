"""Simulated dialogues: the ending rules of the evaluation (dull turn, >80% overlap with the agent's own
previous turn, an empty turn, 8 turns at most), on a scripted bot."""

from types import SimpleNamespace

from core.evaluation.evaluate import MAX_TURNS, simulate, simulate_dialogues, word_overlap


class ScriptedBot:
    """Answers each prompt from a table (default: words never used before), batch by batch, like Bot."""

    def __init__(self, table: dict[str, str]):
        self.table, self.calls, self.histories, self.n = table, [], [], 0

    def encode_prompt(self, text: str) -> list[int]:
        if not text.strip():
            raise ValueError("prompt is empty")
        return [1]

    def respond_batch(self, prompts: list[str], histories: list[list[str]] | None = None) -> list[SimpleNamespace]:
        self.calls.append(list(prompts))
        self.histories.append(list(histories or []))
        out = []
        for p in prompts:
            self.n += 1
            out.append(SimpleNamespace(text=self.table.get(p, f"fresh{self.n} words{self.n} here{self.n}")))
        return out


def test_word_overlap_is_the_share_of_the_turns_words_seen_before():
    assert word_overlap("I like cats.", "i like dogs") == 2 / 3
    assert word_overlap("", "anything") == 0.0


def test_a_dull_turn_ends_the_dialogue_and_is_not_counted():
    bot = ScriptedBot({"hello": "where do you live?", "where do you live?": "I don't know."})
    [d] = simulate_dialogues(bot, ["hello"], dull={"i don't know"})
    assert d == ["hello", "where do you live?"]


def test_repeating_ones_own_previous_turn_ends_the_dialogue():
    bot = ScriptedBot({"hi": "do you like music", "do you like music": "yes a lot",
                       "yes a lot": "do you like music too"})  # 4 of 5 words from the agent's own turn: 80%, not more
    [d] = simulate_dialogues(bot, ["hi"], dull=set(), max_turns=3)
    assert len(d) == 4
    bot = ScriptedBot({"hi": "do you like music", "do you like music": "yes a lot", "yes a lot": "you like music"})
    [d] = simulate_dialogues(bot, ["hi"], dull=set())
    assert d == ["hi", "do you like music", "yes a lot"]  # "you like music" repeats agent 1's words: ends


def test_an_empty_turn_ends_and_live_dialogues_share_one_batch():
    bot = ScriptedBot({"a": "   ", "b": "a fine answer"})
    dialogues = simulate_dialogues(bot, ["a", "b"], dull=set())
    assert dialogues[0] == ["a"]
    assert len(dialogues[1]) == 1 + MAX_TURNS  # never dull, never repeated: all 8 turns
    assert bot.calls[0] == ["a", "b"] and all(len(c) == 1 for c in bot.calls[1:])


def test_each_agent_reads_the_conversation_and_the_end_reason_is_kept():
    bot = ScriptedBot({"hello": "where do you live?", "where do you live?": "in paris, and you?",
                       "in paris, and you?": "I don't know."})
    [d] = simulate(bot, ["hello"], dull={"i don't know"})
    assert d.turns == ["hello", "where do you live?", "in paris, and you?"] and d.end == "dull"
    assert bot.histories == [[[]], [["hello"]], [["hello", "where do you live?"]]]  # the turns before the message
    bot = ScriptedBot({"hi": "do you like music", "do you like music": "yes a lot", "yes a lot": "you like music"})
    assert simulate(bot, ["hi"], dull=set())[0].end == "repetition"
    assert simulate(ScriptedBot({}), ["hi"], dull=set(), max_turns=2)[0].end == "limit"
