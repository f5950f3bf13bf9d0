"""Datasets: built-in profiles over ../shared/datasets, JSONL field mapping, selection, errors."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from particlescale.errors import DatasetError
from particlescale.eval.datasets import (
    DATASETS_ENV,
    PROFILES,
    Selection,
    datasets_dir,
    load_dataset,
)


def write_jsonl(path: Path, rows: list[object], extra: str = "") -> Path:
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n" + extra)
    return path


@pytest.mark.parametrize(("name", "n", "first_id", "first_gold"), [
    ("math500", 500, "test/precalculus/807.json", "\\left( 3, \\frac{\\pi}{2} \\right)"),
    ("aime2024", 30, "60", "204"),
    ("amc2023", 40, "0", "27.0"),
    ("gsm8k", 1319, "0", "18"),
    ("gsm8k-train", 7173, "0", "72"),
])
def test_profiles_read_the_shared_files(name: str, n: int, first_id: str, first_gold: str):
    ds = load_dataset(name)
    assert len(ds) == n
    assert ds.problems[0].id == first_id
    assert ds.problems[0].answer == first_gold
    assert ds.grading == ("math" if name == "math500" else "numeric")
    assert len({p.id for p in ds.problems}) == n


def test_gsm8k_gold_is_the_number_after_the_mark_and_has_no_worked_solution():
    ds = load_dataset("gsm8k")
    raw = json.loads((datasets_dir() / "gsm8k_test.jsonl").read_text().splitlines()[5])
    assert ds.problems[5].answer == raw["answer"].rsplit("####", 1)[1].strip()
    assert "<<" not in (ds.problems[5].answer or "")
    assert ds.problems[5].question == raw["question"]


def test_math500_keeps_short_metadata_not_the_solution():
    p = load_dataset("math500").problems[0]
    assert p.metadata["subject"] == "Precalculus" and p.metadata["level"] == 2
    assert "solution" not in p.metadata


def test_env_var_points_to_another_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    write_jsonl(tmp_path / PROFILES["aime2024"].file,
                [{"problem": "What is 1+1?", "answer": "002", "unique_id": 7}])
    monkeypatch.setenv(DATASETS_ENV, str(tmp_path))
    ds = load_dataset("aime2024")
    assert [(p.id, p.answer) for p in ds.problems] == [("7", "002")]


def test_missing_profile_file_says_which_variable_to_set(tmp_path, monkeypatch):
    monkeypatch.setenv(DATASETS_ENV, str(tmp_path))
    with pytest.raises(DatasetError, match=DATASETS_ENV):
        load_dataset("math500")


def test_jsonl_with_field_mapping_and_extractors(tmp_path: Path):
    path = write_jsonl(tmp_path / "mine.jsonl", [
        {"q": "Q one", "sol": "so \\boxed{\\frac{1}{2}}", "key": "a"},
        {"q": "Q two", "sol": "then \\boxed{7} done", "key": "b"},
    ])
    ds = load_dataset(str(path), question_field="q", answer_field="sol", id_field="key",
                      extractor="boxed")
    assert [(p.id, p.question, p.answer) for p in ds.problems] == [
        ("a", "Q one", "\\frac{1}{2}"), ("b", "Q two", "7")]
    # Without an id field, ids are the 0-based row numbers.
    ds = load_dataset(str(path), question_field="q", answer_field="sol")
    assert [p.id for p in ds.problems] == ["0", "1"]
    assert ds.problems[0].answer == "so \\boxed{\\frac{1}{2}}"


def test_unknown_field_lists_the_available_ones(tmp_path: Path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"question": "x?", "solution": "1"}])
    with pytest.raises(DatasetError) as e:
        load_dataset(str(path))  # default answer field "answer" is not there
    msg = str(e.value)
    assert "line 1" in msg and "'answer'" in msg and "question, solution" in msg
    assert "--answer-field" in msg


def test_empty_file(tmp_path: Path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n  \n")
    with pytest.raises(DatasetError, match="empty file"):
        load_dataset(str(path))


def test_malformed_line_reports_its_number(tmp_path: Path):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"question": "a", "answer": "1"}] * 2,
                       extra='{"question": "b", "answer": \n')
    with pytest.raises(DatasetError, match="line 3: malformed JSON"):
        load_dataset(str(path))


def test_non_object_line_and_duplicate_ids(tmp_path: Path):
    with pytest.raises(DatasetError, match="line 2: expected a JSON object"):
        load_dataset(str(write_jsonl(tmp_path / "a.jsonl", [{"question": "a", "answer": 1}, 5])))
    dup = write_jsonl(tmp_path / "b.jsonl", [{"question": "a", "answer": 1, "id": 3},
                                             {"question": "b", "answer": 2, "id": 3}])
    with pytest.raises(DatasetError, match="id '3' repeats line 1"):
        load_dataset(str(dup), id_field="id")


def test_gsm8k_extractor_needs_the_mark(tmp_path: Path):
    path = write_jsonl(tmp_path / "g.jsonl", [{"question": "a", "answer": "no mark 5"}])
    with pytest.raises(DatasetError, match="'#### '"):
        load_dataset(str(path), extractor="gsm8k")


def test_selection_ids_sample_limit():
    full = load_dataset("gsm8k").problems
    ds = load_dataset("gsm8k", selection=Selection(limit=3))
    assert [p.id for p in ds.problems] == ["0", "1", "2"]
    a = load_dataset("gsm8k", selection=Selection(sample=10, seed=4)).problems
    b = load_dataset("gsm8k", selection=Selection(sample=10, seed=4)).problems
    c = load_dataset("gsm8k", selection=Selection(sample=10, seed=5)).problems
    assert [p.id for p in a] == [p.id for p in b] != [p.id for p in c]
    assert len({p.id for p in a}) == 10
    order = {p.id: i for i, p in enumerate(full)}
    assert [order[p.id] for p in a] == sorted(order[p.id] for p in a)  # file order kept
    # ids keep file order; sample then limit apply to what ids kept
    ds = load_dataset("gsm8k", selection=Selection(ids=("9", "2", "5"), limit=2))
    assert [p.id for p in ds.problems] == ["2", "5"]


def test_selection_errors():
    with pytest.raises(DatasetError, match="not in the dataset"):
        load_dataset("aime2024", selection=Selection(ids=("60", "nope")))
    with pytest.raises(DatasetError, match="more than the 30 problems"):
        load_dataset("aime2024", selection=Selection(sample=31))
    with pytest.raises(DatasetError, match="limit"):
        load_dataset("aime2024", selection=Selection(limit=0))


def test_unknown_name_and_missing_path():
    with pytest.raises(DatasetError, match="unknown 'math5000'"):
        load_dataset("math5000")
    with pytest.raises(DatasetError, match="not found"):
        load_dataset("/nonexistent/file.jsonl")


def test_hugging_face_name_fails_fast_and_says_why():
    start = time.perf_counter()
    with pytest.raises(DatasetError) as e:
        load_dataset("HuggingFaceH4/MATH-500")
    assert time.perf_counter() - start < 15
    msg = str(e.value)
    # Either the hf extra is missing or the hub is unreachable; both say what to do instead.
    assert "particlescale[hf]" in msg or "cannot reach https://huggingface.co" in msg
    assert "JSONL" in msg

