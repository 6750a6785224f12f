"""The pack stage: a file's items become its requests, one per task and window (scope recording) or per task
and item (scope item). Runs in the decode tasks, right after a file is cut, so a file's items are all at hand.

With scope recording, the items go into as few requests as the engine's budget takes (`contract.pack`): one
request is the file's one answer row; several are its parts (`part`, `part_count`), later combined into one
answer row by `pipeline.combine`. A model that answers no questions (whisper) is asked the same thing by every
task, so the tasks of a scope share each request (`also_tasks`): the item is heard once, and each task still gets
its row. The budget is the running app's (`ModelInfo`); the prompt's text tokens are
asked of the app once per (system, question, prefill) in each worker process and kept.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from contract.audio import SAMPLE_RATE
from contract.config import TaskConfig, asks
from contract.formats import get_format
from contract.messages import ModelInfo
from contract.pack import Budget, OverBudget, pack
from pipeline.rows import error_columns

_TEXT_TOKENS: dict[tuple, list[int]] = {}  # per worker process: (app, system, question, prefill) -> counts


def text_tokens(handle: Any, task: TaskConfig) -> Callable[[int], int]:
    """`n -> text tokens of the task's prompt holding n items`, as the app's engine counts them."""
    key = (getattr(handle, "app_name", None), task.system, task.question, task.prefill)

    def count(n: int) -> int:
        known = _TEXT_TOKENS.get(key, [])
        if n >= len(known):
            known = handle.text_tokens.remote(task.system, task.question, task.prefill,
                                              max(n, 2 * len(known), 8)).result()
            _TEXT_TOKENS[key] = known
        return known[n]

    return count


def chosen_tasks(tasks: list[TaskConfig], item: dict[str, Any]) -> list[TaskConfig]:
    """What is asked of the file: as `asks`, less the tasks the output answers already (the plan's
    `answered_tasks`: the file is planned for a task added since); a manifest row naming an unknown task keeps its
    name (the row is an error already, written under that name)."""
    chosen = asks(tasks, item.get("only_task"), item.get("question"))
    if not chosen:
        return [TaskConfig(name=item["only_task"], question=item.get("question") or "", scope="item")]
    answered = set(item.get("answered_tasks") or ())
    return [task for task in chosen if task.name not in answered]


def sharing(tasks: list[TaskConfig], answers_questions: bool) -> list[list[TaskConfig]]:
    """The tasks grouped by the requests they share: each alone; for a model that answers no questions, all the
    tasks of one scope together (they would send it the same requests)."""
    if answers_questions:
        return [[task] for task in tasks]
    by_scope: dict[str, list[TaskConfig]] = {}
    for task in tasks:
        by_scope.setdefault(task.scope, []).append(task)
    return list(by_scope.values())


def _base(item: dict[str, Any]) -> dict[str, Any]:
    return {k: item.get(k) for k in ("item_id", "source_uri", "metadata")}


def file_requests(items: list[dict[str, Any]], tasks: list[TaskConfig], info: ModelInfo,
                  text_tokens_of: Callable[[TaskConfig], Callable[[int], int]]) -> list[dict[str, Any]]:
    """The request rows (REQUEST_SCHEMA) of one file, from its item rows (or its one error row)."""
    first = items[0]
    fmt = get_format(info.family)
    budget = Budget(info.max_model_len, info.max_audio_items)
    cut = first.get("segment_index") is not None
    recording_s = items[-1]["end_s"] if cut else 0.0
    rows: list[dict[str, Any]] = []
    for task, *also in sharing(chosen_tasks(tasks, first), fmt.answers_questions):
        ask = {**_base(first), "task": task.name, "also_tasks": [t.name for t in also] or None,
               "prompt": fmt.asked(task.question), "question": task.question, "scope": task.scope,
               "segment_count": first.get("segment_count")}
        if not cut:  # the file could not be read or decoded: its error row, for this task (and its also_tasks)
            rows.append({**ask, **{k: first[k] for k in ("error_stage", "error_class", "error", "retryable")}})
        elif task.scope == "item":
            rows.extend({**ask, **{k: item[k] for k in ("segment_index", "start_s", "end_s")}, "audio": [item["audio"]]}
                        for item in items)
        else:
            rows.extend(_windows(ask, items, task, fmt, budget, text_tokens_of))
    for index, row in enumerate(rows):
        row.update(request_index=index, request_count=len(rows), recording_s=recording_s)
    return rows


def _windows(ask: dict[str, Any], items: list[dict[str, Any]], task: TaskConfig, fmt, budget: Budget,
             text_tokens_of: Callable[[TaskConfig], Callable[[int], int]]) -> list[dict[str, Any]]:
    whole = {**ask, "start_s": items[0]["start_s"], "end_s": items[-1]["end_s"]}
    tokens = [fmt.audio_tokens(len(item["audio"]) // 4, SAMPLE_RATE) for item in items]  # float32: 4 bytes each
    try:
        windows = pack(tokens, budget=budget, max_tokens=task.sampling.max_tokens,
                       text_tokens=text_tokens_of(task) if budget.max_model_len is not None else None)
    except OverBudget as e:
        too_big = OverBudget(f"task {task.name!r}: {e} (lower sampling.max_tokens or segment.max_s, or give the "
                             "engine a longer context)")
        return [{**whole, **error_columns("pack", too_big, retryable=False)}]
    if len(windows) == 1:
        return [{**whole, "audio": [item["audio"] for item in items]}]
    return [{**ask, "start_s": items[first]["start_s"], "end_s": items[end - 1]["end_s"],
             "audio": [item["audio"] for item in items[first:end]], "part": part, "part_count": len(windows)}
            for part, (first, end) in enumerate(windows)]
