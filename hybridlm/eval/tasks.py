"""Task files: JSONL items in the public formats of the benchmarks, read with line-numbered errors.

One JSON object a line; blank lines are skipped. Formats (extra fields are kept, never required):
  multiple choice  {"context": str, "choices": [str, ...], "answer": int}      (HellaSwag/ARC/MMLU/PIQA style)
  generation       {"prompt": str, "answer": str}                            (GSM8K style: "#### 72" or "72")
  code             {"task_id": str, "prompt": str, "test": str, "entry_point": str}   (HumanEval)
                   or {"task_id", "prompt", "test_list": [str]} (MBPP: asserts run after the code)

A malformed line is an error naming its line number; the whole file is checked before anything is
scored, so a bad file fails fast. `skip_bad=True` drops such lines instead and counts them.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable


@dataclass
class MCItem:
    context: str
    choices: list[str]
    answer: int
    line: int = 0  # 1-based line in its file


@dataclass
class GenItem:
    prompt: str
    answer: str
    line: int = 0


@dataclass
class CodeItem:
    task_id: str
    prompt: str
    test: str  # code that raises when the completion is wrong
    entry_point: str | None = None  # HumanEval: the test defines check(fn) and we call it
    line: int = 0

    def program(self, completion: str) -> str:
        """The file the sandbox runs: prompt + completion, then the tests."""
        call = f"\ncheck({self.entry_point})\n" if self.entry_point else "\n"
        return f"{self.prompt}{completion}\n\n{self.test}\n{call}"


@dataclass
class TaskFile:
    items: list = field(default_factory=list)
    skipped: list[tuple[int, str]] = field(default_factory=list)  # (line, reason) of lines dropped by skip_bad
    sha256: str = ""  # of the file's bytes


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _str(obj: dict, key: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str):
        raise ValueError(f"field {key!r} must be a string, got {type(value).__name__}")
    return value


def parse_mc(obj: dict, line: int) -> MCItem:
    choices = obj.get("choices")
    if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) for c in choices):
        raise ValueError("field 'choices' must be a list of at least 2 strings")
    answer = obj.get("answer")
    if isinstance(answer, bool) or not isinstance(answer, int):
        raise ValueError(f"field 'answer' must be an integer index, got {answer!r}")
    if not 0 <= answer < len(choices):
        raise ValueError(f"answer index {answer} is out of range for {len(choices)} choices")
    return MCItem(_str(obj, "context"), list(choices), answer, line)


def parse_gen(obj: dict, line: int) -> GenItem:
    answer = obj.get("answer")
    if isinstance(answer, (int, float)) and not isinstance(answer, bool):
        answer = str(answer)
    if not isinstance(answer, str):
        raise ValueError("field 'answer' must be a string or a number")
    return GenItem(_str(obj, "prompt"), answer, line)


def parse_code(obj: dict, line: int) -> CodeItem:
    task_id = str(obj.get("task_id", f"line-{line}"))
    if "test_list" in obj:
        tests = obj["test_list"]
        if not isinstance(tests, list) or not all(isinstance(t, str) for t in tests):
            raise ValueError("field 'test_list' must be a list of strings")
        return CodeItem(task_id, _str(obj, "prompt"), "\n".join(tests), None, line)
    entry = obj.get("entry_point")
    if entry is not None and (not isinstance(entry, str) or not entry.isidentifier()):
        raise ValueError(f"field 'entry_point' must be a Python identifier, got {entry!r}")
    return CodeItem(task_id, _str(obj, "prompt"), _str(obj, "test"), entry, line)


PARSERS: dict[str, Callable[[dict, int], Any]] = {"multiple-choice": parse_mc, "generation": parse_gen,
                                                   "code": parse_code}


def read_jsonl(path: str | Path, parse: Callable[[dict, int], Any], skip_bad: bool = False) -> TaskFile:
    """Every line parsed by `parse(obj, line)`; errors name the file and line (all of them, up to 5)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"task file {path} does not exist")
    out, errors = TaskFile(sha256=file_sha256(path)), []
    with open(path, encoding="utf-8") as f:
        for number, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
                if not isinstance(obj, dict):
                    raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
                out.items.append(parse(obj, number))
            except ValueError as err:  # json.JSONDecodeError is a ValueError
                errors.append((number, str(err).split("\n")[0]))
    if errors and not skip_bad:
        shown = "; ".join(f"line {n}: {e}" for n, e in errors[:5])
        more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
        raise ValueError(f"{path}: {len(errors)} bad line(s): {shown}{more}; fix them or pass --skip-bad")
    out.skipped = errors
    if not out.items:
        raise ValueError(f"{path} holds no valid items")
    return out


def read_task(path: str | Path, kind: str, skip_bad: bool = False) -> TaskFile:
    if kind not in PARSERS:
        raise ValueError(f"task kind must be one of {sorted(PARSERS)}, not {kind!r}")
    return read_jsonl(path, PARSERS[kind], skip_bad)
