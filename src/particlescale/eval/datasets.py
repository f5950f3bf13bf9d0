"""Benchmark datasets: JSONL files with a field mapping, built-in profiles, Hugging Face names.

A dataset is a list of :class:`~particlescale.types.Problem` plus how to grade it. It comes from

* a **profile** (``math500``, ``aime2024``, ``amc2023``, ``gsm8k``, ``gsm8k-train``): a JSONL file
  in the shared datasets folder with a known field mapping. The folder is
  ``$PARTICLESCALE_DATASETS`` when set, else ``../shared/datasets`` next to the repository;
* a **path** to a JSONL file, with ``question``/``answer``/``id`` field names and an answer
  extractor (``plain``; ``gsm8k`` = the number after ``#### ``; ``boxed`` = the last
  ``\\boxed{}`` of the field);
* a **Hugging Face name** (``HuggingFaceH4/MATH-500``, ``openai/gsm8k``, ...) through the
  ``datasets`` library (extra ``hf``); without a network this fails fast with a DatasetError.

Selection, applied in this order: ``ids`` (keep these ids, in file order), ``sample`` K problems
drawn without replacement by a ``numpy`` Generator seeded with ``seed`` (file order kept, so the
same K and seed always give the same subset), then ``limit`` (the first N).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from particlescale.answers import last_boxed
from particlescale.errors import DatasetError
from particlescale.types import Problem

Extractor = Literal["plain", "gsm8k", "boxed"]
Grading = Literal["math", "numeric"]
EXTRACTORS: tuple[str, ...] = ("plain", "gsm8k", "boxed")
DATASETS_ENV = "PARTICLESCALE_DATASETS"
HF_PROBE_URL = "https://huggingface.co"
HF_PROBE_TIMEOUT_S = 4.0
# Metadata keeps short scalar fields only (subject, level, url...), not solutions.
_META_MAX_CHARS = 200


@dataclass(frozen=True)
class FieldMap:
    """Which JSON fields hold the question, the gold answer and the id (None = line number),
    and the worked solution (``reference``: privileged, read only by the ``reference``
    reward; None = the dataset has none)."""

    question: str = "question"
    answer: str | None = "answer"
    id: str | None = None
    extractor: Extractor = "plain"
    reference: str | None = None


@dataclass(frozen=True)
class Profile:
    name: str
    file: str
    fields: FieldMap
    grading: Grading
    description: str


PROFILES: dict[str, Profile] = {
    p.name: p
    for p in [
        Profile("math500", "math500.jsonl", FieldMap("problem", "answer", "unique_id"), "math",
                "MATH500 (500 competition problems, LaTeX answers)"),
        Profile("aime2024", "aime2024.jsonl", FieldMap("problem", "answer", "unique_id"),
                "numeric", "AIME 2024 (30 problems, integer answers 0-999)"),
        Profile("amc2023", "amc2023.jsonl", FieldMap("problem", "answer", "unique_id"),
                "numeric", "AMC 2023 (40 problems, numeric answers)"),
        Profile("gsm8k", "gsm8k_test.jsonl", FieldMap("question", "answer", None, "gsm8k",
                                                      "answer"),
                "numeric", "GSM8K test (1319 grade-school word problems)"),
        Profile("gsm8k-train", "gsm8k_train.jsonl", FieldMap("question", "answer", None, "gsm8k",
                                                             "answer"),
                "numeric", "GSM8K train (for anything that learns; report on test sets)"),
    ]
}


@dataclass(frozen=True)
class HFSource:
    """A Hugging Face dataset with the field mapping and split we know it has."""

    name: str
    config: str | None
    split: str
    fields: FieldMap
    grading: Grading


HF_SOURCES: dict[str, HFSource] = {
    s.name: s
    for s in [
        HFSource("HuggingFaceH4/MATH-500", None, "test", FieldMap("problem", "answer", "unique_id"),
                 "math"),
        HFSource("openai/gsm8k", "main", "test", FieldMap("question", "answer", None, "gsm8k",
                                                          "answer"), "numeric"),
        HFSource("HuggingFaceH4/aime_2024", None, "train", FieldMap("problem", "answer", "id"),
                 "numeric"),
    ]
}


@dataclass(frozen=True)
class Selection:
    """Which problems of a dataset to keep (see the module docstring for the order)."""

    limit: int | None = None
    sample: int | None = None
    seed: int = 0
    ids: tuple[str, ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"limit": self.limit, "sample": self.sample, "seed": self.seed,
                "ids": list(self.ids) if self.ids is not None else None}


@dataclass
class Dataset:
    name: str
    source: str
    fields: FieldMap
    grading: Grading
    problems: list[Problem] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.problems)

    def describe(self) -> dict[str, Any]:
        """What identifies the data (goes into the sweep's configuration hash)."""
        return {"name": self.name, "source": self.source, "grading": self.grading,
                "fields": {"question": self.fields.question, "answer": self.fields.answer,
                           "id": self.fields.id, "extractor": self.fields.extractor}}


def datasets_dir() -> Path:
    """The shared datasets folder: ``$PARTICLESCALE_DATASETS``, else ``../shared/datasets``
    relative to the repository (found from this file for an editable install, else the cwd)."""
    env = os.environ.get(DATASETS_ENV)
    if env:
        return Path(env).expanduser()
    repo = Path(__file__).resolve().parents[3]
    for root in (repo, Path.cwd()):
        candidate = root.parent / "shared" / "datasets"
        if candidate.is_dir():
            return candidate
    return repo.parent / "shared" / "datasets"


def load_dataset(
    spec: str,
    *,
    question_field: str | None = None,
    answer_field: str | None = None,
    id_field: str | None = None,
    extractor: str | None = None,
    grading: str | None = None,
    selection: Selection | None = None,
) -> Dataset:
    """Load a profile, a JSONL path or a Hugging Face name; fields given here override the
    profile's. Raises :class:`DatasetError` naming the file, line or field at fault."""
    if not spec or not spec.strip():
        raise DatasetError("dataset: empty; pass a profile name "
                           f"({', '.join(PROFILES)}), a JSONL path or a Hugging Face name")
    spec = spec.strip()
    overrides = {"question": question_field, "answer": answer_field, "id": id_field,
                 "extractor": extractor}
    if extractor is not None and extractor not in EXTRACTORS:
        raise DatasetError(f"answer extractor: unknown {extractor!r}; choose one of "
                           f"{', '.join(EXTRACTORS)}")
    if grading is not None and grading not in ("math", "numeric"):
        raise DatasetError(f"grading: unknown {grading!r}; choose math or numeric")

    if spec in PROFILES:
        prof = PROFILES[spec]
        path = datasets_dir() / prof.file
        if not path.is_file():
            raise DatasetError(
                f"dataset {spec!r}: {path} not found; set {DATASETS_ENV} to the folder that "
                f"holds {prof.file}, or pass the file's path"
            )
        fields = _override(prof.fields, overrides)
        ds = Dataset(spec, str(path), fields, grading or prof.grading,
                     _rows_to_problems(_read_jsonl(path), fields, str(path)))
    elif _looks_like_path(spec):
        path = Path(spec).expanduser()
        if not path.is_file():
            raise DatasetError(f"dataset: file {spec!r} not found; pass an existing JSONL path "
                               f"or one of {', '.join(PROFILES)}")
        fields = _override(FieldMap(), overrides)
        if fields.extractor == "gsm8k" and fields.answer is not None:
            fields = replace(fields, reference=fields.answer)  # GSM8K-style worked solutions
        ds = Dataset(path.stem, str(path.resolve()), fields, grading or "math",
                     _rows_to_problems(_read_jsonl(path), fields, str(path)))
    elif "/" in spec:
        ds = _load_hf(spec, overrides, grading)
    else:
        raise DatasetError(
            f"dataset: unknown {spec!r}; choose a profile ({', '.join(PROFILES)}), "
            "a JSONL path, or a Hugging Face name such as HuggingFaceH4/MATH-500"
        )
    if selection is not None:
        ds.problems = select(ds.problems, selection)
    return ds


def select(problems: Sequence[Problem], sel: Selection) -> list[Problem]:
    """Apply ``ids``, then ``sample`` (seeded, file order kept), then ``limit``."""
    out = list(problems)
    if sel.ids is not None:
        by_id = {p.id: p for p in out}
        missing = [i for i in sel.ids if i not in by_id]
        if missing:
            known = ", ".join(list(by_id)[:5])
            raise DatasetError(f"ids: {', '.join(missing[:5])} not in the dataset "
                               f"(ids look like: {known}, ...)")
        wanted = set(sel.ids)
        out = [p for p in out if p.id in wanted]
    if sel.sample is not None:
        if sel.sample < 1:
            raise DatasetError(f"sample: must be >= 1, got {sel.sample}")
        if sel.sample > len(out):
            raise DatasetError(f"sample: {sel.sample} is more than the {len(out)} problems; "
                               "use a smaller --sample or drop it")
        rng = np.random.default_rng(sel.seed)
        keep = np.sort(rng.choice(len(out), size=sel.sample, replace=False))
        out = [out[int(i)] for i in keep]
    if sel.limit is not None:
        if sel.limit < 1:
            raise DatasetError(f"limit: must be >= 1, got {sel.limit}")
        out = out[: sel.limit]
    return out


def _override(base: FieldMap, overrides: dict[str, str | None]) -> FieldMap:
    given = {k: v for k, v in overrides.items() if v is not None}
    if given.get("id") == "":
        given["id"] = None  # --id-field "" = use line numbers
    return replace(base, **given)


def _looks_like_path(spec: str) -> bool:
    return spec.endswith((".jsonl", ".json")) or Path(spec).expanduser().exists() or \
        spec.startswith((".", "~", os.sep))


def _read_jsonl(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """(line number, row) pairs; blank lines are skipped."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: cannot be read ({e})") from None
    rows = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DatasetError(f"{path}: line {n}: malformed JSON ({e.msg} at column {e.colno}); "
                               "each line must be one JSON object") from None
        if not isinstance(row, dict):
            raise DatasetError(f"{path}: line {n}: expected a JSON object, got "
                               f"{type(row).__name__}")
        rows.append((n, row))
    if not rows:
        raise DatasetError(f"{path}: empty file (no problems); pass a JSONL file with one "
                           "problem per line")
    return rows


def _rows_to_problems(rows: Iterable[tuple[int, dict[str, Any]]], fields: FieldMap,
                      where: str) -> list[Problem]:
    problems: list[Problem] = []
    seen: dict[str, int] = {}
    for index, (n, row) in enumerate(rows):
        question = _field(row, fields.question, "question", n, where)
        if not isinstance(question, str) or not question.strip():
            raise DatasetError(f"{where}: line {n}: question field {fields.question!r} is empty "
                               "or not a string")
        gold = None
        if fields.answer is not None:
            raw = _field(row, fields.answer, "answer", n, where)
            gold = _extract_gold(raw, fields.extractor, n, where)
        pid = str(index) if fields.id is None else str(_field(row, fields.id, "id", n, where))
        if pid in seen:
            raise DatasetError(f"{where}: line {n}: id {pid!r} repeats line {seen[pid]}; "
                               "choose a unique --id-field or omit it to number the lines")
        seen[pid] = n
        reference = None
        if fields.reference is not None:
            raw_ref = _field(row, fields.reference, "reference", n, where)
            reference = raw_ref if isinstance(raw_ref, str) and raw_ref.strip() else None
        used = {fields.question, fields.answer, fields.id, fields.reference}
        meta = {k: v for k, v in row.items() if k not in used and _short_scalar(v)}
        meta["line"] = n
        problems.append(Problem(question=question, id=pid, answer=gold, metadata=meta,
                                reference=reference))
    return problems


def _field(row: dict[str, Any], name: str, role: str, n: int, where: str) -> Any:
    if name not in row:
        raise DatasetError(
            f"{where}: line {n}: no field {name!r} ({role} field); available fields: "
            f"{', '.join(sorted(row))}; pass --{role}-field NAME"
        )
    return row[name]


def _extract_gold(raw: Any, extractor: str, n: int, where: str) -> str:
    if raw is None:
        raise DatasetError(f"{where}: line {n}: the answer is null")
    text = raw if isinstance(raw, str) else json.dumps(raw)
    if extractor == "plain":
        return text.strip()
    if extractor == "gsm8k":
        if "####" not in text:
            raise DatasetError(f"{where}: line {n}: answer has no '#### ' final-answer mark "
                               "(gsm8k extractor); use --answer-extractor plain")
        return text.rsplit("####", 1)[1].strip()
    boxed = last_boxed(text)
    if boxed is None:
        raise DatasetError(f"{where}: line {n}: answer has no \\boxed{{}} (boxed extractor); "
                           "use --answer-extractor plain")
    return boxed


def _short_scalar(v: Any) -> bool:
    if isinstance(v, str):
        return len(v) <= _META_MAX_CHARS
    return isinstance(v, int | float | bool) or v is None


def _load_hf(name: str, overrides: dict[str, str | None], grading: str | None) -> Dataset:
    """Through the ``datasets`` library; probes the hub first so that no network fails fast."""
    known = HF_SOURCES.get(name)
    base = known.fields if known else FieldMap()
    fields = _override(base, overrides)
    try:
        import datasets as hf_datasets  # type: ignore[import-not-found]
    except ImportError:
        raise DatasetError(
            f"dataset {name!r} looks like a Hugging Face name, which needs the 'hf' extra: "
            "pip install 'particlescale[hf]'; or download the data as JSONL and pass its path"
        ) from None
    _probe_hub(name)
    try:
        if known is not None:
            rows = hf_datasets.load_dataset(name, known.config, split=known.split)
        else:
            rows = hf_datasets.load_dataset(name, split="test")
    except Exception as e:  # the library raises many types; the message is what matters
        raise DatasetError(f"dataset {name!r}: Hugging Face load failed: {e}") from None
    problems = _rows_to_problems(((i + 1, dict(r)) for i, r in enumerate(rows)), fields, name)
    if not problems:
        raise DatasetError(f"dataset {name!r}: no rows")
    return Dataset(name, f"hf:{name}", fields, grading or (known.grading if known else "math"),
                   problems)


def _probe_hub(name: str) -> None:
    if os.environ.get("HF_DATASETS_OFFLINE") == "1" or os.environ.get("HF_HUB_OFFLINE") == "1":
        return  # the user asked for the local HF cache; let `datasets` read it
    import httpx

    try:
        httpx.head(HF_PROBE_URL, timeout=HF_PROBE_TIMEOUT_S)
    except httpx.HTTPError as e:
        raise DatasetError(
            f"dataset {name!r}: cannot reach {HF_PROBE_URL} ({type(e).__name__}); this machine "
            "has no network to the Hugging Face hub. Download the data as JSONL elsewhere and "
            "pass its path (with --question-field/--answer-field), or use a built-in profile: "
            f"{', '.join(PROFILES)}"
        ) from None
