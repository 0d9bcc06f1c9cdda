"""A deterministic, Kaggle-shaped demo data set, so the whole pipeline runs without the real data.

``generate_demo`` writes ``train.csv``, ``test.csv`` and ``sample_submission.csv`` with exactly the
columns and cell formats of the competition files (prompt / response cells are JSON lists of
strings, one per turn, with the odd JSON ``null``), plus ``test_labels.csv``: the one-hot labels
of the test rows, so later stages can score the demo end to end. The real Kaggle ``test.csv``
has no labels anywhere; only the demo has that file.

How the labels come about (the signal a small model can learn from the text alone):

* every model has a hidden quality (``_MODELS``); every answer draws a latent quality
  ``q = model quality + noise``;
* ``q`` shapes the text: better answers stay on the prompt's topic (reuse its keywords), use
  "good" markers (an overview line, numbered steps, "For example", a summary, facts), and are
  longer; worse answers hedge, drift into filler or another topic, repeat themselves, refuse
  ("I cannot"), or are a few words long. Each marker is drawn at random, so the text reveals
  ``q`` only partly;
* a noisy judge compares ``qA`` and ``qB``: a tie when the difference is under a threshold that
  grows when both answers are bad (about 30% ties), else the better one wins. Empty answers
  lose; identical answers mostly tie.

Everything comes from one ``random.Random(seed)``, so a seed gives byte-identical files.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pandas as pd

from arena_distill.data.schema import LABEL_A, LABEL_B, LABEL_COLUMNS, LABEL_TIE

# Model name -> hidden quality. Test rows carry no names, so a model must read the text.
_MODELS = {
    "gpt-4-1106-preview": 1.2,
    "gpt-4-0613": 0.9,
    "claude-2.1": 0.7,
    "gemini-pro": 0.5,
    "mixtral-8x7b-instruct-v0.1": 0.4,
    "gpt-3.5-turbo-0613": 0.3,
    "claude-instant-1": 0.2,
    "llama-2-70b-chat": 0.0,
    "openchat-3.5": -0.1,
    "zephyr-7b-beta": -0.3,
    "vicuna-13b": -0.4,
    "mistral-7b-instruct": -0.5,
    "llama-2-13b-chat": -0.6,
    "koala-13b": -0.9,
    "oasst-pythia-12b": -1.2,
}

# Topic -> keywords an on-topic answer reuses (comma-separated to keep one topic a line).
_TOPIC_KEYWORDS = {
    "photosynthesis": "plants, sunlight, chlorophyll, glucose, leaves, carbon dioxide",
    "black holes": "gravity, the event horizon, stars, mass, spacetime, light",
    "the French Revolution": "the monarchy, Paris, 1789, the Bastille, the republic, taxes",
    "machine learning": "data, models, training, features, predictions, overfitting",
    "sourdough bread": "the starter, flour, fermentation, the dough, the oven, wild yeast",
    "compound interest": "the principal, the rate, savings, growth, time, investments",
    "the immune system": "antibodies, white blood cells, infection, vaccines, pathogens, fever",
    "Python decorators": "functions, wrappers, closures, arguments, the @ syntax, logging",
    "climate change": "emissions, temperature, carbon, the oceans, policy, ice sheets",
    "marathon training": "mileage, pace, recovery, endurance, long runs, nutrition",
    "the Roman Empire": "the emperors, the legions, Rome, the provinces, the Senate, roads",
    "quantum computing": "qubits, superposition, entanglement, quantum gates, decoherence, error correction",
    "meditation": "breathing, attention, stress, mindfulness, daily practice, posture",
    "electric cars": "batteries, charging, range, electric motors, the grid, regenerative braking",
    "the stock market": "shares, investors, prices, dividends, index funds, risk",
    "SQL joins": "tables, rows, foreign keys, queries, inner joins, null values",
    "volcanoes": "magma, eruptions, lava, tectonic plates, ash clouds, craters",
    "learning a language": "vocabulary, grammar, speaking practice, listening, immersion, flashcards",
    "coffee brewing": "the beans, grind size, water temperature, extraction, espresso, brew time",
    "the water cycle": "evaporation, condensation, precipitation, clouds, rivers, groundwater",
    "chess openings": "pawns, the center, piece development, king safety, gambits, tempo",
    "job interviews": "questions, the resume, preparation, the employer, skills, salary",
    "DNA replication": "strands, enzymes, nucleotides, polymerase, genes, base pairs",
    "renewable energy": "solar panels, wind turbines, storage, the grid, costs, hydropower",
    "the Pythagorean theorem": "triangles, the hypotenuse, squares, the sides, proofs, right angles",
    "houseplants": "watering, light, soil, pots, humidity, fertilizer",
    "neural networks": "layers, weights, activations, backpropagation, gradients, neurons",
    "time management": "priorities, the schedule, deadlines, tasks, focus, habits",
    "the moon landing": "Apollo 11, the astronauts, NASA, 1969, the lunar module, Armstrong",
    "inflation": "prices, the central bank, interest rates, the money supply, wages, demand",
    "git branching": "commits, merges, branches, rebasing, conflicts, the repository",
    "sleep hygiene": "bedtime, screens, caffeine, routine, deep sleep, melatonin",
    "ancient Egypt": "the pharaohs, the pyramids, the Nile, hieroglyphs, tombs, the gods",
    "recursion": "the base case, functions, the call stack, subproblems, factorials, memoization",
    "dog training": "commands, rewards, puppies, consistency, the leash, behavior",
    "earthquakes": "faults, seismic waves, magnitude, plates, tsunamis, buildings",
    "budgeting": "income, expenses, savings, debt, spending, categories",
    "the human heart": "blood, the ventricles, arteries, valves, the pulse, oxygen",
    "writing poetry": "rhythm, imagery, metaphor, line breaks, stanzas, rhyme",
    "crème brûlée": "custard, caramel, ramekins, vanilla, the oven, sugar",
}
_TOPICS = {topic: tuple(words.split(", ")) for topic, words in _TOPIC_KEYWORDS.items()}
_TOPIC_NAMES = tuple(_TOPICS)

_PROMPTS = (
    "What is {t}?",
    "How does {t} work?",
    "Can you explain {t} in simple terms?",
    "What are the most important things to know about {t}?",
    "Explain how {k} relates to {t}.",
    "Give me some practical tips about {t}.",
    "Why does {k} matter for {t}?",
    "Write a short explanation of {t} for a beginner.",
    "What is the difference between {k} and {k2} in {t}?",
    "I am confused about {t}. Where should I start?",
)
_FOLLOW_UPS = (
    "Can you give me an example?",
    "Tell me more about {k}.",
    "How is that related to {k}?",
    "Thanks. What mistakes should I avoid?",
    "Can you make it shorter?",
)
_ON_TOPIC = (
    "{T} is closely connected to {k}.",
    "The key idea is that {k} directly affects {k2}.",
    "In practice, {k} and {k2} work together in {t}.",
    "Most experts agree that {k} is central to {t}.",
    "A common mistake is to ignore the role of {k}.",
    "This is why {k} plays such an important part in {t}.",
    "When {k} changes, {k2} usually changes as well.",
    "To understand {t}, start by looking at {k}.",
)
_GOOD_OPENERS = (
    "Here is a clear overview of {t}.",
    "Great question! Let me explain {t} step by step.",
)
_GOOD_EXAMPLE = "For example, {k} can be observed when {k2} is involved."
_GOOD_FACT = "A well-established fact is that {k} and {k2} are measurable parts of {t}."
_GOOD_SUMMARY = "In summary, {t} comes down to {k} and {k2}."
_HEDGES = (
    "As an AI language model, I cannot be completely sure about this.",
    "Maybe it is something like that, but it might be different.",
    "I think it possibly depends, although I am not certain.",
    "It is hard to say anything definite here.",
)
_FILLER = (
    "There are many different opinions about this.",
    "It depends on many factors.",
    "Everyone has their own perspective on things like this.",
    "This is a very interesting question that people ask a lot.",
    "There is a lot that could be said about it.",
)
_REFUSALS = (
    "I cannot help with that request.",
    "I'm sorry, but I cannot answer that.",
    "I don't know.",
)


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _fill(rng: random.Random, template: str, topic: str) -> str:
    """Fill ``{t}``/``{T}`` with the topic and ``{k}``/``{k2}`` with two distinct keywords."""
    k, k2 = rng.sample(_TOPICS[topic], 2)
    return template.format(t=topic, T=topic[0].upper() + topic[1:], k=k, k2=k2)


def _answer(rng: random.Random, topic: str, q: float) -> str:
    """One answer to a question about ``topic`` whose text reflects its latent quality ``q``."""
    if rng.random() < _sigmoid(-2.0 * q - 4.0):
        return rng.choice(_REFUSALS)
    if rng.random() < 0.03:  # a few words only
        return _fill(rng, rng.choice(("Sure, it is about {k}.", "{T}: {k}.", "Mostly {k}.")), topic)
    n = max(1, round(rng.gauss(4.0 + 2.0 * q, 2.0)))
    if rng.random() < 0.05:  # a long answer, up to ~400 words
        n += rng.randint(10, 25)
    p_on, p_good, p_bad = _sigmoid(1.2 * q + 0.8), _sigmoid(1.5 * q - 0.3), _sigmoid(-1.5 * q - 0.5)
    sentences = []
    for _ in range(n):
        if rng.random() < p_on:
            sentences.append(_fill(rng, rng.choice(_ON_TOPIC), topic))
        elif rng.random() < 0.5:
            sentences.append(rng.choice(_FILLER))
        else:
            sentences.append(_fill(rng, rng.choice(_ON_TOPIC), rng.choice(_TOPIC_NAMES)))
    if rng.random() < p_good:
        sentences.insert(rng.randint(0, len(sentences)), _fill(rng, _GOOD_EXAMPLE, topic))
    if rng.random() < p_good:
        sentences.append(_fill(rng, _GOOD_FACT, topic))
    if rng.random() < p_bad:
        sentences.insert(0, rng.choice(_HEDGES))
    if rng.random() < p_bad:
        sentences.extend([rng.choice(sentences)] * rng.randint(1, 3))
    if rng.random() < p_good and len(sentences) >= 3:
        body = "\n".join(f"Step {i}: {s}" for i, s in enumerate(sentences, 1))
    else:
        body = " ".join(sentences)
    if rng.random() < p_good:
        body = _fill(rng, rng.choice(_GOOD_OPENERS), topic) + "\n\n" + body
    if rng.random() < p_good:
        body += "\n\n" + _fill(rng, _GOOD_SUMMARY, topic)
    return body


def _judge(rng: random.Random, q_a: float, q_b: float) -> int:
    """A noisy human: tie when the qualities are close, more often when both answers are bad."""
    diff = q_a - q_b + rng.gauss(0.0, 0.5)
    threshold = 0.33 + 0.5 * _sigmoid(-(q_a + q_b))
    if abs(diff) < threshold:
        return LABEL_TIE
    return LABEL_A if diff > 0 else LABEL_B


def _row(rng: random.Random) -> dict:
    """One judgement: prompts, both answers, model names and the one-hot label."""
    models = rng.sample(tuple(_MODELS), 2)
    topic = rng.choice(_TOPIC_NAMES)
    n_turns = 1 if rng.random() < 0.88 else rng.randint(2, 3)
    prompt = [_fill(rng, rng.choice(_PROMPTS), topic)]
    prompt += [_fill(rng, rng.choice(_FOLLOW_UPS), topic) for _ in range(n_turns - 1)]
    quality = [_MODELS[m] + rng.gauss(0.0, 0.6) for m in models]
    answers: list[list[str | None]] = [
        [_answer(rng, topic, q) for _ in range(n_turns)] for q in quality
    ]
    if rng.random() < 0.015:  # identical answers: mostly a tie
        answers[1] = list(answers[0])
        label = LABEL_TIE if rng.random() < 0.85 else rng.choice((LABEL_A, LABEL_B))
    else:
        for side in (0, 1):
            if rng.random() < 0.015:  # an empty answer almost surely loses
                answers[side] = [""] * n_turns
                quality[side] = -4.0
        if n_turns > 1 and rng.random() < 0.15:  # a model that failed on a later turn
            answers[rng.randint(0, 1)][-1] = None
        label = _judge(rng, *quality)
    return {
        "model_a": models[0],
        "model_b": models[1],
        "prompt": json.dumps(prompt),
        "response_a": json.dumps(answers[0]),
        "response_b": json.dumps(answers[1]),
        **{col: int(i == label) for i, col in enumerate(LABEL_COLUMNS)},
    }


def generate_demo(
    out_dir: str | Path,
    *,
    n_train: int = 1500,
    n_test: int = 300,
    n_pretrain: int = 0,
    seed: int = 1234,
) -> dict[str, Path]:
    """Write the demo files into ``out_dir`` and return their paths by stem.

    Keys: ``train``, ``test``, ``sample_submission``, ``test_labels`` and, when ``n_pretrain``
    > 0, ``pretrain`` (a labelled set in the same layout standing in for UltraFeedback-as-arena
    in the post-pretraining stage). Ids are distinct random integers like Kaggle's. All rows
    come from the same generator; test rows lose the model names and labels, which go to
    ``test_labels.csv`` (a demo-only file).
    """
    rng = random.Random(seed)
    ids = rng.sample(range(30_000, 2**32), n_train + n_test + n_pretrain)
    rows = pd.DataFrame([{"id": i, **_row(rng)} for i in ids])
    train, test = rows.iloc[:n_train], rows.iloc[n_train : n_train + n_test]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = ["train", "test", "sample_submission", "test_labels"] + (
        ["pretrain"] if n_pretrain else []
    )
    paths = {name: out / f"{name}.csv" for name in names}
    columns = ["id", "model_a", "model_b", "prompt", "response_a", "response_b", *LABEL_COLUMNS]
    train[columns].to_csv(paths["train"], index=False, lineterminator="\n")
    if n_pretrain:
        pretrain = rows.iloc[n_train + n_test :]
        pretrain[columns].to_csv(paths["pretrain"], index=False, lineterminator="\n")
    test[["id", "prompt", "response_a", "response_b"]].to_csv(
        paths["test"], index=False, lineterminator="\n"
    )
    submission = pd.DataFrame({"id": test["id"], **dict.fromkeys(LABEL_COLUMNS, 1 / 3)})
    submission.to_csv(paths["sample_submission"], index=False, lineterminator="\n")
    test[["id", *LABEL_COLUMNS]].to_csv(paths["test_labels"], index=False, lineterminator="\n")
    return paths
