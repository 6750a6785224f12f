"""What the output already holds, so a rerun answers only what is missing: resume and incremental runs.

An item is answered for a task when the output has, for this model and prompt, either one row for each of
its segments (scope item) or its one answer row: a row with neither segment_index nor part (scope recording:
the answer, combined or not; or the file's one error row). A recording's parts (`part` set) are rows too: a
rerun asks only the parts it lacks, and pipeline.combine makes the answer once all parts are in. The scan only reads;
removing superseded rows is a step of its own (pipeline.prune), run before it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.output import read_output

ASK = ["item_id", "task", "prompt"]


def digest(*parts: object) -> bytes:
    """A short stable fingerprint: keeps sets of keys with long prompts small."""
    return hashlib.blake2b("\0".join(map(str, parts)).encode(), digest_size=12).digest()


@dataclass
class Answered:
    """What the output holds for one model: tasks answered in full, and rows of tasks answered in part."""

    done: set[bytes] = field(default_factory=set)  # digest(item, task, prompt)
    partial: set[bytes] = field(default_factory=set)  # row_key(...) of the rows of unfinished ones
    rows: int = 0  # rows of this model already in the output

    def complete(self, item_id: str, asks: Iterable[tuple[str, str]]) -> bool:
        """Whether every (task, prompt) asked of the item is answered in full."""
        return all(digest(item_id, task, prompt) in self.done for task, prompt in asks)

    def answered_tasks(self, item_id: str, asks: Iterable[tuple[str, str]]) -> list[str]:
        """The tasks of `asks` (task, prompt) answered in full for the item."""
        return [task for task, prompt in asks if digest(item_id, task, prompt) in self.done]

    def has(self, item_id: str, segment_index: int | None, part: int | None, task: str, prompt: str) -> bool:
        return row_key(item_id, segment_index, part, task, prompt) in self.partial


def row_key(item_id: str, segment_index: int | None, part: int | None, task: str, prompt: str) -> bytes:
    """One output row's identity: the item, which of its items (scope item) or windows (scope recording, when
    answered in parts), the task and its prompt."""
    return digest(item_id, segment_index, part, task, prompt)


def scan(uri: str, model: str, storage: dict | None = None, fixed_prompt: str | None = None) -> Answered:
    """What `uri` answers with `model`: one fingerprint per answered (item, task, prompt), not per row.
    `fixed_prompt`: what a model that answers no questions is always asked (ModelFormat.fixed_prompt); its rows
    answer their task whatever prompt they were written with (rows written before it was recorded hold the
    task's question)."""
    rows = read_output(uri, [*ASK, "segment_index", "segment_count", "part"], pc.field("model") == model, storage)
    if fixed_prompt is not None:
        rows = rows.set_column(rows.schema.get_field_index("prompt"), "prompt", pa.repeat(fixed_prompt, rows.num_rows))
    rows = rows.append_column("answer_row", pc.and_(pc.is_null(rows["segment_index"]), pc.is_null(rows["part"])))
    asks = rows.group_by(ASK, use_threads=False).aggregate([
        ("segment_index", "count_distinct"), ("answer_row", "any"), ("segment_count", "max")])
    whole = pc.or_kleene(asks["answer_row_any"],  # the recording's answer, or the file's one error row
                         pc.equal(asks["segment_index_count_distinct"], asks["segment_count_max"]))
    whole = pc.fill_null(whole, False)
    done = asks.filter(whole)
    unfinished = rows.join(asks.filter(pc.invert(whole)).select(ASK), ASK, join_type="inner")
    return Answered(
        done={digest(*key) for key in zip(*(done[c].to_pylist() for c in ASK))},
        partial={row_key(*key) for key in zip(
            *(unfinished[c].to_pylist() for c in ("item_id", "segment_index", "part", "task", "prompt")))},
        rows=rows.num_rows)
