"""The plan: one chunk of sources stays in memory; more are streamed to a file under `_plans/` in chunks."""

import pyarrow.parquet as pq
import pytest

from contract.config import TaskConfig
from contract.formats import get_format
from pipeline import plan as plan_module
from pipeline.answered import Answered, digest
from pipeline.plan import remove_plan, write_plan
from pipeline.sources import SourceFile

TASKS = [TaskConfig(name="transcribe", question="Please transcribe the audio.")]
ASKS = get_format("qwen2_audio")  # a model that is asked the question


def first_answered() -> Answered:
    return Answered(done={digest("id-0", "transcribe", "Please transcribe the audio.")})


def sources(n: int) -> list[SourceFile]:
    return [SourceFile(item_id=f"id-{i}", source_uri=f"file:///in/{i}.wav", size=i, version=str(i)) for i in range(n)]


@pytest.mark.parametrize("n", [1, 2, 3])
def test_one_chunk_stays_in_memory(monkeypatch, tmp_path, n):
    monkeypatch.setattr(plan_module, "CHUNK", 3)
    plan = write_plan(sources(n), first_answered(), TASKS, ASKS, str(tmp_path), "run")
    assert (plan.listed, plan.todo, plan.path) == (n, n - 1, None)
    assert plan.table.column("item_id").to_pylist() == [f"id-{i}" for i in range(1, n)]
    remove_plan(plan)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("n", [4, 7])
def test_more_is_streamed_to_a_file_in_chunks(monkeypatch, tmp_path, n):
    monkeypatch.setattr(plan_module, "CHUNK", 3)
    plan = write_plan(sources(n), first_answered(), TASKS, ASKS, str(tmp_path), "run")
    assert (plan.listed, plan.todo, plan.table) == (n, n - 1, None)
    written = pq.ParquetFile(plan.path.removeprefix("file://"))
    assert written.metadata.num_row_groups == -(-n // 3)  # one per chunk of sources
    assert written.read().column("item_id").to_pylist() == [f"id-{i}" for i in range(1, n)]
    remove_plan(plan)
    assert not list((tmp_path / "_plans").iterdir())


def test_a_model_that_answers_no_questions_is_planned_by_what_it_is_asked(tmp_path):
    """Whisper's rows record "transcribe" whatever the task asks: they answer the task under any question, and a
    changed question is not asked again (it would get the same transcript)."""
    whisper = get_format("whisper")
    answered = Answered(done={digest("id-0", "transcribe", "transcribe")})
    for question in ("Please transcribe the audio.", "Summarize the call.", None):
        tasks = [TaskConfig(name="transcribe", question=question)]
        plan = write_plan(sources(2), answered, tasks, whisper, str(tmp_path), "run")
        assert plan.table.column("item_id").to_pylist() == ["id-1"]
    # The same output for a model that hears the question: nothing of it is answered.
    assert write_plan(sources(2), answered, TASKS, ASKS, str(tmp_path), "run").todo == 2
