"""Evaluation: measuring bots and checkpoints. It may import the base modules of core (model, tokenizer,
batching, context, corpora, checkpoint, decoding, scoring, bots), never core.training: training imports it (valid
metrics, the RL rewards' dull list, the pipeline's evaluation and tuning stages), the arena and the app import it
(self-chat dialogues by the evaluation's rules).

Modules: :mod:`~core.evaluation.metrics` (distinct-n, BLEU, dull replies and the other reply metrics),
:mod:`~core.evaluation.evaluate` (the evaluation table, simulated dialogues, held-out openings),
:mod:`~core.evaluation.tune` (the decoding-setting search on validation prompts).

    chatbot-arena evaluate
    chatbot-arena tune --bot antilm
"""
