"""Training: everything that makes a checkpoint. It may import the base modules of core (model, tokenizer,
batching, context, corpora, checkpoint, decoding, scoring, bots, export) and core.evaluation; nothing outside
core.training imports it except the CLI (``chatbot-arena train / train-rl / pipeline``).

Modules: :mod:`~core.training.train` (MLE training of the seq2seq, backward and language models; resumable,
DDP-ready), :mod:`~core.training.rl` (self-play REINFORCE on the conversation window),
:mod:`~core.training.rewards` (the RL rewards r1-r3 and the repetition penalty), :mod:`~core.training.loop` (the
loop state and stop reasons both loops share), :mod:`~core.training.runs` (run folders, logs, time budgets, stop
signals), :mod:`~core.training.synthetic` (sanity tasks), :mod:`~core.training.pipeline` (``make checkpoints``:
every stage from the corpus to the shipped checkpoints).

    chatbot-arena train --out runs/mle
    chatbot-arena train-rl --policy runs/mle/best --backward runs/backward/best --out runs/rl
    chatbot-arena pipeline --out runs
"""
