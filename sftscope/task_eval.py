"""A fine-tune's own task: its held-out SFT rows answered under the prompt it was trained with.

The rows are read as ``sftscope train`` reads a training file (question/answer rows in the
paper's format, ready-made prompt/completion, or chat turns rendered by the tokenizer's chat
template with the generation prompt); each prompt is answered greedily and scored by whether the
expected completion (its first line, the end-of-text token dropped) is contained in the answer,
on word boundaries, as closed-book answers are (:func:`sftscope.data.matching.match`). Used by
``sftscope repair --task-data`` to know what a repair costs the fine-tune's own job.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from sftscope.data.matching import match
from sftscope.errors import SftscopeError
from sftscope.io import atomic_write_json, atomic_write_jsonl, read_json
from sftscope.prompts import ChatFormat

if TYPE_CHECKING:
    from sftscope.models.engines import Engine

TASK_RECORDS = "task.jsonl"
TASK_SUMMARY = "task.json"


def task_examples(path: Path, tokenizer: Any) -> list[dict[str, str]]:
    """``{id, prompt, answer}`` per row: the prompt as the model sees it, the expected answer."""
    from sftscope.train import read_examples

    eos = getattr(tokenizer, "eos_token", None)
    out = []
    for ex in read_examples(path, eos):
        prompt, completion = ex["prompt"], ex["completion"]
        if isinstance(prompt, list):  # chat turns: the template renders the prompt
            prompt = ChatFormat(tokenizer, "", model=str(path)).render_turns(prompt)
            completion = completion[-1]["content"] if completion else ""
        answer = completion.replace(eos, "") if eos else completion
        answer = (answer.strip().splitlines() or [""])[0].strip()
        if not answer:
            raise SftscopeError(f"{path}: example {ex['id']} has an empty answer")
        out.append({"id": ex["id"], "prompt": prompt, "answer": answer})
    return out


def evaluate_task(
    engine: Engine, examples: list[dict[str, str]], out: Path, max_new_tokens: int = 32
) -> float:
    """The share of examples whose answer contains the expected one; records and the score
    written to ``out`` (resumed: an existing score is read back)."""
    summary = Path(out) / TASK_SUMMARY
    if summary.exists():
        return float(read_json(summary)["task"])
    answers = engine.generate(
        [e["prompt"] for e in examples], max_new_tokens=max_new_tokens, stop=("\n",), desc="task"
    )
    records = []
    for e, (raw,) in zip(examples, answers, strict=True):
        prediction = raw.strip()
        correct = match(prediction, [e["answer"]]).containment
        records.append({**e, "prediction": prediction, "correct": correct})
    score = sum(r["correct"] for r in records) / len(records)
    atomic_write_jsonl(Path(out) / TASK_RECORDS, records)
    atomic_write_json(summary, {"n": len(records), "task": score})
    return score
