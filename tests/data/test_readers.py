"""Readers: exact normalised output, exact summary counts, and every validation error."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from arena_distill.data.readers import (
    READERS,
    attach_labels,
    load_source,
    read_arena33k,
    read_arena140k,
    read_competition,
    read_raw,
    read_sample_submission,
    read_ultrafeedback,
)
from arena_distill.data.schema import DataError, check_table, empty_table
from arena_distill.data.summary import DataSummary

KAGGLE_COLUMNS = [
    "id",
    "model_a",
    "model_b",
    "prompt",
    "response_a",
    "response_b",
    "winner_model_a",
    "winner_model_b",
    "winner_tie",
]


def kaggle_rows() -> list[dict]:
    """Kaggle-layout rows; text cells are JSON as in train.csv (ASCII escapes, so the lone
    surrogate is the six characters ``\\ud83d`` in the file)."""

    def row(rid, ma, mb, prompt, a, b, label):
        cells = dict(zip(("prompt", "response_a", "response_b"), (prompt, a, b), strict=True))
        flags = [int(label == k) for k in range(3)]
        return {
            "id": rid,
            "model_a": ma,
            "model_b": mb,
            **{k: json.dumps(v) for k, v in cells.items()},
            **dict(zip(KAGGLE_COLUMNS[6:], flags, strict=True)),
        }

    return [
        row(30192, "gpt-4", "NA", ["Hi", None], ["Hello", "More"], ["Hey", None], 0),
        row(53567, "claude-2", "llama-2", ["Q1", "Q2"], ["A1"], ["B1", "B2"], 1),
        row(65089, "vicuna", "", ["emoji \ud83d"], [""], ["ok"], 2),
    ]


def write_csv(path: Path, rows: list[dict], columns=None) -> Path:
    pd.DataFrame(rows, columns=columns).to_csv(path, index=False)
    return path


def expected_kaggle() -> pd.DataFrame:
    exp = empty_table()
    rows = [
        ["30192", ["Hi", ""], ["Hello", "More"], ["Hey", ""], "gpt-4", "NA", 0, 2, False, False],
        [
            "53567",
            ["Q1", "Q2"],
            ["A1", ""],
            ["B1", "B2"],
            "claude-2",
            "llama-2",
            1,
            2,
            False,
            False,
        ],
        ["65089", ["emoji \ufffd"], [""], ["ok"], "vicuna", None, 2, 1, True, False],
    ]
    cols = [
        "id",
        "prompt",
        "response_a",
        "response_b",
        "model_a",
        "model_b",
        "label",
        "n_turns",
        "empty_a",
        "empty_b",
    ]
    data = {c: [r[i] for r in rows] for i, c in enumerate(cols)}
    data["source"] = ["kaggle"] * 3
    return pd.DataFrame({c: pd.Series(data[c], dtype=exp[c].dtype) for c in exp.columns})


# ------------------------------------------------------------------------ competition


def test_competition_exact_output_and_counts(tmp_path):
    path = write_csv(tmp_path / "train.csv", kaggle_rows())
    assert "\\ud83d" in path.read_text()  # the escape is in the file, not a real character
    summary = DataSummary()
    df = read_competition(path, summary=summary)
    pd.testing.assert_frame_equal(df, expected_kaggle())
    check_table(df)
    assert dict(summary.counts) == {
        "kaggle/null_to_empty": 2,
        "kaggle/turns_padded": 1,
        "kaggle/surrogates_repaired": 1,
        "kaggle/empty_response_a": 1,
    }
    assert summary.rows_read["kaggle"] == 3 and summary.rows_kept["kaggle"] == 3
    assert summary.dropped == []


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl", ".json"])
def test_competition_other_formats_same_table(tmp_path, suffix):
    raw = pd.DataFrame(kaggle_rows())
    # parquet / JSON hold the turn lists as real lists, not JSON strings
    for col in ("prompt", "response_a", "response_b"):
        raw[col] = [json.loads(v) for v in raw[col]]
    path = tmp_path / f"train{suffix}"
    if suffix == ".parquet":  # parquet cannot store a lone surrogate at all
        raw.loc[2, "prompt"][0] = "emoji \ufffd"
        raw.to_parquet(path)
    elif suffix == ".jsonl":
        path.write_text("\n".join(json.dumps(r) for r in raw.to_dict("records")) + "\n")
    else:
        path.write_text(json.dumps(raw.to_dict("records")))
    df = read_competition(path, summary=DataSummary())
    pd.testing.assert_frame_equal(df, expected_kaggle())


def test_competition_float_ids_keep_digits(tmp_path):
    raw = pd.DataFrame(kaggle_rows())
    raw["id"] = raw["id"].astype(float)
    raw.to_parquet(tmp_path / "t.parquet")
    df = read_competition(tmp_path / "t.parquet", summary=DataSummary())
    assert df["id"].tolist() == ["30192", "53567", "65089"]


def test_competition_test_layout_has_no_labels(tmp_path):
    rows = [{k: r[k] for k in ("id", "prompt", "response_a", "response_b")} for r in kaggle_rows()]
    df = read_competition(write_csv(tmp_path / "test.csv", rows), summary=DataSummary())
    assert df["label"].isna().all() and str(df["label"].dtype) == "Int8"
    assert df["model_a"].tolist() == [None, None, None]


@pytest.mark.parametrize("column", ["id", "prompt", "response_a", "response_b"])
def test_competition_missing_column(tmp_path, column):
    path = write_csv(tmp_path / "t.csv", kaggle_rows(), [c for c in KAGGLE_COLUMNS if c != column])
    with pytest.raises(DataError, match=f"missing required column.*{column}") as info:
        read_competition(path, summary=DataSummary())
    assert info.value.file == str(path) and info.value.column == column


def test_competition_some_label_columns_missing(tmp_path):
    path = write_csv(tmp_path / "t.csv", kaggle_rows(), KAGGLE_COLUMNS[:7])
    with pytest.raises(DataError, match=r"\['winner_model_b', 'winner_tie'\] missing"):
        read_competition(path, summary=DataSummary())


def test_competition_malformed_json_names_file_row_column(tmp_path):
    rows = kaggle_rows()
    rows[1]["response_a"] = '["unterminated'
    path = write_csv(tmp_path / "t.csv", rows)
    with pytest.raises(DataError, match="not valid JSON") as info:
        read_competition(path, summary=DataSummary())
    err = info.value
    assert (err.file, err.row, err.column) == (str(path), "53567", "response_a")
    assert str(path) in str(err) and "53567" in str(err) and "response_a" in str(err)


@pytest.mark.parametrize(
    "flags", [(1, 1, 0), (0, 0, 0), (2, 0, 0), ("", "1", "0"), ("yes", 0, 0), (0.5, 0.5, 0)]
)
def test_competition_labels_not_one_hot(tmp_path, flags):
    rows = kaggle_rows()
    rows[2].update(dict(zip(KAGGLE_COLUMNS[6:], flags, strict=True)))
    path = write_csv(tmp_path / "t.csv", rows)
    with pytest.raises(DataError, match="one-hot") as info:
        read_competition(path, summary=DataSummary())
    assert info.value.row == "65089"
    assert all(c in str(info.value) for c in KAGGLE_COLUMNS[6:])


def test_competition_label_formats_accepted(tmp_path):
    raw = pd.DataFrame(kaggle_rows())
    for col in KAGGLE_COLUMNS[6:]:
        raw[col] = raw[col].astype(float)  # 0.0 / 1.0 as in some exports
    raw.to_parquet(tmp_path / "t.parquet")
    df = read_competition(tmp_path / "t.parquet", summary=DataSummary())
    assert df["label"].tolist() == [0, 1, 2]


def test_competition_duplicate_ids(tmp_path):
    rows = kaggle_rows()
    rows[2]["id"] = rows[0]["id"]
    path = write_csv(tmp_path / "t.csv", rows)
    with pytest.raises(DataError, match=r"duplicate ids \['30192'\]"):
        read_competition(path, summary=DataSummary())


def test_competition_empty_file_and_header_only(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(DataError, match="empty") as info:
        read_competition(empty, summary=DataSummary())
    assert info.value.file == str(empty)
    header = tmp_path / "header.csv"
    header.write_text(",".join(KAGGLE_COLUMNS) + "\n")
    with pytest.raises(DataError, match="no rows") as info:
        read_competition(header, summary=DataSummary())
    assert info.value.file == str(header)


def test_read_raw_file_errors(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        read_raw(tmp_path / "missing.csv")
    (tmp_path / "x.txt").write_text("a")
    with pytest.raises(DataError, match="unsupported file type"):
        read_raw(tmp_path / "x.txt")
    (tmp_path / "bad.jsonl").write_text('{"id": 1}\n{oops\n')
    with pytest.raises(DataError, match="line 2 is not valid JSON"):
        read_raw(tmp_path / "bad.jsonl")
    (tmp_path / "blank.jsonl").write_text("\n\n")
    with pytest.raises(DataError, match="no rows"):
        read_raw(tmp_path / "blank.jsonl")


def test_competition_drop_records_every_bad_row(tmp_path):
    rows = kaggle_rows()
    rows[0]["prompt"] = "not json"
    rows[1]["winner_tie"] = 1  # two ones
    rows.append(dict(rows[2]))  # duplicate of 65089
    path = write_csv(tmp_path / "t.csv", rows)
    summary = DataSummary()
    df = read_competition(path, summary=summary, on_bad_row="drop")
    assert df["id"].tolist() == ["65089"]
    assert summary.rows_read["kaggle"] == 4 and summary.rows_kept["kaggle"] == 1
    reasons = {d["id"]: d["reason"] for d in summary.dropped}
    assert set(reasons) == {"30192", "53567", "65089"}
    assert reasons["30192"].startswith("prompt: not valid JSON")
    assert "one-hot" in reasons["53567"]
    assert reasons["65089"] == "id: duplicate id"
    assert all(d["file"] == str(path) and d["source"] == "kaggle" for d in summary.dropped)


def test_on_bad_row_validated(tmp_path):
    path = write_csv(tmp_path / "t.csv", kaggle_rows())
    with pytest.raises(ValueError, match="on_bad_row"):
        read_competition(path, summary=DataSummary(), on_bad_row="skip")


def test_sample_submission(tmp_path):
    path = tmp_path / "sample_submission.csv"
    path.write_text("id,winner_model_a,winner_model_b,winner_tie\n136060,0.333,0.333,0.333\n")
    df = read_sample_submission(path)
    assert df["id"].tolist() == ["136060"] and df["winner_tie"].tolist() == [0.333]
    path.write_text("id,winner_model_a,winner_model_b\n1,0.5,0.5\n")
    with pytest.raises(DataError, match="winner_tie"):
        read_sample_submission(path)


def test_attach_labels(tmp_path):
    test = read_competition(write_csv(tmp_path / "train.csv", kaggle_rows()), summary=DataSummary())
    labels = tmp_path / "labels.csv"
    ids = test["id"].tolist()
    labels.write_text(
        "id,winner_model_a,winner_model_b,winner_tie\n"
        f"{ids[2]},0,0,1\n{ids[0]},1,0,0\n{ids[1]},0,1,0\n"
    )
    out = attach_labels(test.assign(label=pd.array([None] * 3, dtype="Int8")), labels)
    assert out["label"].tolist() == [0, 1, 2] and str(out["label"].dtype) == "Int8"
    labels.write_text(f"id,winner_model_a,winner_model_b,winner_tie\n{ids[0]},1,0,0\n")
    with pytest.raises(DataError, match=r"labels.csv.*missing \['"):
        attach_labels(test, labels)
    labels.write_text(
        "id,winner_model_a,winner_model_b,winner_tie\n"
        f"{ids[0]},1,1,0\n{ids[1]},0,1,0\n{ids[2]},0,0,1\n"
    )
    with pytest.raises(DataError, match="one-hot"):
        attach_labels(test, labels)


@pytest.mark.shared_data
@pytest.mark.parametrize(
    ("name", "counts"),
    [
        ("pandalm", (422, 472, 105)),
        ("llmeval2", (1050, 1021, 482)),
        ("hh_harmless", (1126, 1186, 0)),
    ],
)
def test_shared_preference_files(shared_preference_dir, name, counts):
    summary = DataSummary()
    df = read_competition(shared_preference_dir / f"{name}.csv", summary=summary, source=name)
    check_table(df)
    assert len(df) == sum(counts) == summary.rows_kept[name] == summary.rows_read[name]
    assert tuple(int((df["label"] == k).sum()) for k in range(3)) == counts
    assert summary.dropped == []


# ------------------------------------------------------------------------ arena dumps


def msgs(*pairs: tuple[str, object]) -> list[dict]:
    return [{"role": role, "content": content} for role, content in pairs]


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def arena33k_records() -> list[dict]:
    def rec(qid, winner, user_turns, a_turns, b_turns, user_b=None):
        def conv(users, answers):
            pairs = zip(users, answers, strict=True)
            return msgs(*[p for u, r in pairs for p in (("user", u), ("assistant", r))])

        return {
            "question_id": qid,
            "model_a": "vicuna-13b",
            "model_b": "koala-13b",
            "winner": winner,
            "judge": "arena_user_1",
            "conversation_a": conv(user_turns, a_turns),
            "conversation_b": conv(user_b or user_turns, b_turns),
            "turn": len(user_turns),
        }

    return [
        rec("q1", "model_a", ["hi"], ["hello"], ["hey"]),
        rec("q2", "tie (bothbad)", ["u1", "u2"], ["a1", "a2"], ["b1", "b2"]),
        rec("q3", "model_b", ["x"], [""], ["y"]),
        rec("q4", "tie", ["t"], ["a"], ["b"]),
    ]


@pytest.mark.parametrize("fmt", ["jsonl", "parquet", "csv"])
def test_arena33k(tmp_path, fmt):
    records = arena33k_records()
    path = tmp_path / f"arena.{fmt}"
    if fmt == "jsonl":
        write_jsonl(path, records)
    elif fmt == "parquet":
        pd.DataFrame(records).to_parquet(path)  # conversations come back as numpy arrays
    else:
        rows = [
            {
                **r,
                "conversation_a": json.dumps(r["conversation_a"]),
                "conversation_b": json.dumps(r["conversation_b"]),
            }
            for r in records
        ]
        write_csv(path, rows)
    summary = DataSummary()
    df = read_arena33k(path, summary=summary)
    check_table(df)
    assert df["id"].tolist() == ["q1", "q2", "q3", "q4"]
    assert df["source"].unique().tolist() == ["arena33k"]
    assert df["label"].tolist() == [0, 2, 1, 2]
    assert df["prompt"].tolist() == [["hi"], ["u1", "u2"], ["x"], ["t"]]
    assert df["response_a"].tolist() == [["hello"], ["a1", "a2"], [""], ["a"]]
    assert df["response_b"].tolist() == [["hey"], ["b1", "b2"], ["y"], ["b"]]
    assert df["model_a"].unique().tolist() == ["vicuna-13b"]
    assert df["empty_a"].tolist() == [False, False, True, False]
    assert dict(summary.counts) == {"arena33k/empty_response_a": 1}


def test_arena33k_bad_rows(tmp_path):
    records = arena33k_records()
    records[0]["winner"] = "model_c"
    records[1]["conversation_b"][2]["content"] = "a different second question"
    records[2]["conversation_a"] = [{"role": "system", "content": "x"}]
    path = write_jsonl(tmp_path / "a.jsonl", records)
    with pytest.raises(DataError, match="winner must be one of") as info:
        read_arena33k(path, summary=DataSummary())
    assert (info.value.row, info.value.column) == ("q1", "winner")
    summary = DataSummary()
    df = read_arena33k(path, summary=summary, on_bad_row="drop")
    assert df["id"].tolist() == ["q4"]
    reasons = {d["id"]: d["reason"] for d in summary.dropped}
    assert "winner must be one of" in reasons["q1"]
    assert reasons["q2"] == "conversation_b: user turns of conversation_a and conversation_b differ"
    assert "role 'user' or 'assistant'" in reasons["q3"]


def test_arena140k_parts(tmp_path):
    def parts(*texts, image=False):
        out = [{"type": "text", "text": t, "image": None} for t in texts]
        return out + ([{"type": "image", "text": None, "image": "img.png"}] if image else [])

    records = [
        {
            "id": "id-1",
            "model_a": "gemini",
            "model_b": "gpt-4o",
            "winner": "both_bad",
            "conversation_a": msgs(
                ("user", parts("look", "at this", image=True)), ("assistant", parts("a cat"))
            ),
            "conversation_b": msgs(
                ("user", parts("look", "at this", image=True)), ("assistant", parts(None))
            ),
        },
        {
            "id": "id-2",
            "model_a": "gemini",
            "model_b": "gpt-4o",
            "winner": "model_b",
            "conversation_a": msgs(("user", "plain"), ("assistant", "ans a")),
            "conversation_b": msgs(("user", "plain"), ("assistant", "ans b")),
        },
    ]
    for fmt in ("jsonl", "parquet"):
        path = tmp_path / f"a140k.{fmt}"
        if fmt == "jsonl":
            write_jsonl(path, records)
        else:  # parquet cannot mix string and list contents in one column
            for rec in records[1:]:
                for key in ("conversation_a", "conversation_b"):
                    rec[key] = [{**m, "content": parts(m["content"])} for m in rec[key]]
            pd.DataFrame(records).to_parquet(path)
        summary = DataSummary()
        df = read_arena140k(path, summary=summary)
        assert df["label"].tolist() == [2, 1]
        assert df["prompt"].tolist() == [["look\nat this"], ["plain"]]
        assert df["response_a"].tolist() == [["a cat"], ["ans a"]]
        assert df["response_b"].tolist() == [[""], ["ans b"]]
        assert df["empty_b"].tolist() == [True, False]
        assert summary.counts["arena140k/non_text_parts_ignored"] == 2  # once per conversation
        assert summary.counts["arena140k/null_to_empty"] == 1
        check_table(df)


# ------------------------------------------------------------------------ ultrafeedback


def completion(model: str, score, ratings=("4", "4", "4", "4"), response=None) -> dict:
    aspects = ("helpfulness", "honesty", "instruction_following", "truthfulness")
    return {
        "model": model,
        "response": f"{model} says" if response is None else response,
        "overall_score": score,
        "annotations": {
            a: {"Rating": r, "Rationale": "..."} for a, r in zip(aspects, ratings, strict=True)
        },
    }


def uf_records() -> list[dict]:
    return [
        {
            "source": "evol_instruct",
            "instruction": "Q0",
            "completions": [
                completion("m0", 7.0, ("5", "5", "5", "5")),
                completion("m1", 3.5, ("1", "N/A", "1", "1")),
                completion("m2", 9.0, ("2", "2", "2", "2")),
                completion("m3", 3.5, ("3", "3", "3", "3")),
            ],
        },
        {
            "source": "sharegpt",
            "instruction": "Q1",
            "completions": [completion("m0", 5.0), completion("m1", 5.0)],
        },
        {"source": "sharegpt", "instruction": "Q2", "completions": [completion("m0", 8.0)]},
        {
            "source": "flan",
            "instruction": "Q3",
            "completions": [completion("m0", None), completion("m1", 6.0), completion("m2", 2.0)],
        },
    ]


def score_of(
    df: pd.DataFrame, uf: list[dict], key: str = "overall_score"
) -> list[tuple[float, float]]:
    """(score of A, score of B) per output row, looked up from the fixture by id."""
    out = []
    for rid, ma, mb in zip(df["id"], df["model_a"], df["model_b"], strict=True):
        comps = {c["model"]: c for c in uf[int(rid.split("-")[1])]["completions"]}
        out.append((comps[ma][key], comps[mb][key]))
    return out


def check_labels(df: pd.DataFrame, scores: list[tuple[float, float]], margin: float = 0.0) -> None:
    for label, (sa, sb) in zip(df["label"], scores, strict=True):
        assert label == (2 if abs(sa - sb) <= margin else 0 if sa > sb else 1)


@pytest.fixture
def uf_path(tmp_path) -> Path:
    return write_jsonl(tmp_path / "uf.jsonl", uf_records())


def test_ultrafeedback_best_vs_worst(uf_path):
    summary = DataSummary()
    df = read_ultrafeedback(uf_path, summary=summary)
    check_table(df)
    assert df["id"].tolist() == ["ut-0-2-3", "ut-1-0-1", "ut-3-1-2"]
    assert df["prompt"].tolist() == [["Q0"], ["Q1"], ["Q3"]]
    assert [{a, b} for a, b in zip(df["model_a"], df["model_b"], strict=True)] == [
        {"m2", "m3"},
        {"m0", "m1"},
        {"m1", "m2"},
    ]
    check_labels(df, score_of(df, uf_records()))
    assert df["label"].tolist()[1] == 2  # equal scores -> tie
    for resp, model in zip(df["response_a"], df["model_a"], strict=True):
        assert resp == [f"{model} says"]
    assert summary.dropped == [
        {
            "source": "ultrafeedback",
            "id": "ut-2",
            "reason": "fewer than 2 usable completions",
            "file": str(uf_path),
        }
    ]
    assert summary.counts["ultrafeedback/completions_unusable"] == 1
    assert summary.rows_read["ultrafeedback"] == 4 and summary.rows_kept["ultrafeedback"] == 3


def test_ultrafeedback_mean_rating_and_tie_margin(uf_path):
    df = read_ultrafeedback(uf_path, summary=DataSummary(), score="mean_rating")
    # Q0 by mean rating: m0 5.0 best, m1 1.0 ("N/A" ignored) worst
    assert df["id"].tolist()[0] == "ut-0-0-1"
    assert {df["model_a"][0], df["model_b"][0]} == {"m0", "m1"}
    assert df["label"][0] == (0 if df["model_a"][0] == "m0" else 1)
    # Q3: m0 has no overall_score but has ratings, so it is usable here: 3 completions, all 4.0
    assert df["id"].tolist()[2] == "ut-3-0-2" and df["label"][2] == 2
    wide = read_ultrafeedback(uf_path, summary=DataSummary(), tie_margin=4.5)
    assert wide["label"].tolist() == [0 if wide["model_a"][0] == "m2" else 1, 2, 2]


def test_ultrafeedback_pairings_and_seed(uf_path):
    all_pairs = read_ultrafeedback(uf_path, summary=DataSummary(), pairing="all_pairs")
    assert len(all_pairs) == 6 + 1 + 1
    assert all_pairs["id"].tolist()[:6] == [
        f"ut-0-{i}-{j}" for i, j in [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
    ]
    check_labels(all_pairs, score_of(all_pairs, uf_records()))
    capped = read_ultrafeedback(
        uf_path, summary=DataSummary(), pairing="all_pairs", max_pairs_per_prompt=2
    )
    assert len(capped) == 2 + 1 + 1 and set(capped["id"]) <= set(all_pairs["id"])
    rand = read_ultrafeedback(uf_path, summary=DataSummary(), pairing="random_pair")
    assert len(rand) == 3 and set(rand["id"]) <= set(all_pairs["id"])
    check_labels(rand, score_of(rand, uf_records()))
    again = read_ultrafeedback(uf_path, summary=DataSummary(), pairing="random_pair")
    pd.testing.assert_frame_equal(rand, again)


def test_ultrafeedback_side_is_random_but_seeded(tmp_path):
    records = [
        {"instruction": f"Q{k}", "completions": [completion("good", 9.0), completion("bad", 1.0)]}
        for k in range(40)
    ]
    path = write_jsonl(tmp_path / "uf.jsonl", records)
    first = read_ultrafeedback(path, summary=DataSummary(), seed=1)
    pd.testing.assert_frame_equal(first, read_ultrafeedback(path, summary=DataSummary(), seed=1))
    other = read_ultrafeedback(path, summary=DataSummary(), seed=2)
    assert 10 < (first["label"] == 0).sum() < 30  # the winner lands on both sides
    assert (first["label"] != other["label"]).any()
    assert ((first["model_a"] == "good") == (first["label"] == 0)).all()


def test_ultrafeedback_parquet_matches_jsonl(uf_path, tmp_path):
    pq_path = tmp_path / "uf.parquet"
    pd.DataFrame(uf_records()).to_parquet(pq_path)  # completions: numpy arrays of dicts
    for score in ("overall_score", "mean_rating"):
        a = read_ultrafeedback(uf_path, summary=DataSummary(), score=score, pairing="all_pairs")
        b = read_ultrafeedback(pq_path, summary=DataSummary(), score=score, pairing="all_pairs")
        pd.testing.assert_frame_equal(a, b)


def test_ultrafeedback_binarized(tmp_path):
    rows = [
        {
            "prompt": f"P{k}",
            "prompt_id": f"h{k}",
            "chosen": msgs(("user", f"P{k}"), ("assistant", "chosen answer")),
            "rejected": msgs(("user", f"P{k}"), ("assistant", "rejected answer")),
            "score_chosen": 8.0,
            "score_rejected": 8.0 if k == 0 else 3.0,
        }
        for k in range(30)
    ]
    path = tmp_path / "bin.parquet"
    pd.DataFrame(rows).to_parquet(path)
    df = read_ultrafeedback(path, summary=DataSummary(), seed=7)
    check_table(df)
    assert df["id"].tolist() == [f"ut-{k}" for k in range(30)]
    assert df["prompt"].tolist() == [[f"P{k}"] for k in range(30)]
    assert df["label"][0] == 2
    chosen_on_a = df["response_a"].map(lambda r: r == ["chosen answer"])
    assert (df["label"][1:] == chosen_on_a[1:].map({True: 0, False: 1})).all()
    assert 5 < chosen_on_a.sum() < 25
    pd.testing.assert_frame_equal(df, read_ultrafeedback(path, summary=DataSummary(), seed=7))
    assert (
        read_ultrafeedback(path, summary=DataSummary(), tie_margin=5.0)["label"].tolist()
        == [2] * 30
    )


def test_ultrafeedback_unknown_layout_and_options(tmp_path):
    path = write_jsonl(tmp_path / "x.jsonl", [{"foo": 1}])
    with pytest.raises(DataError, match="neither raw UltraFeedback"):
        read_ultrafeedback(path, summary=DataSummary())
    with pytest.raises(ValueError, match="pairing"):
        read_ultrafeedback(path, summary=DataSummary(), pairing="best")


# ------------------------------------------------------------------------ dispatch


def test_load_source(tmp_path):
    path = write_csv(tmp_path / "t.csv", kaggle_rows())
    summary = DataSummary()
    df = load_source(path, "competition", summary=summary, source="lmsys")
    assert df["source"].unique().tolist() == ["lmsys"] and summary.rows_kept["lmsys"] == 3
    assert set(READERS) == {"competition", "arena33k", "arena140k", "ultrafeedback"}
    with pytest.raises(DataError, match="unknown data format 'kaggle'.*arena33k"):
        load_source(path, "kaggle", summary=summary)
