"""The pack stage on a real recording: which requests a file's items become, per model family and task."""

from contract.config import TaskConfig
from contract.messages import ModelInfo
from pipeline.pack import file_requests
from pipeline.prepare import prepare_file
from tests.conftest import SAMPLES

TASKS = [TaskConfig(name="transcribe", question="Please transcribe the audio."),
         TaskConfig(name="summary", question="Summarize the lecture."),
         TaskConfig(name="words", question="List the words.", scope="item")]


def lecture_items(answered_tasks: list[str] | None = None) -> list[dict]:
    """The sample lecture's item rows, as the plan's row for it makes them."""
    path = SAMPLES / "lecture.wav"
    items = prepare_file({"item_id": "lecture", "source_uri": str(path), "size": path.stat().st_size,
                          "answered_tasks": answered_tasks}, max_item_s=30.0, search_s=5.0, max_duration_s=3600.0)
    assert len(items) == 2  # the sample lecture is two 30 s items
    return items


def requests(items, info: ModelInfo, tasks=TASKS) -> list[tuple]:
    return [(r["task"], r["also_tasks"], r["prompt"], r["scope"], r.get("segment_index"), len(r["audio"]))
            for r in file_requests(items, tasks, info, text_tokens_of=None)]


def test_whisper_hears_each_recording_and_item_once_for_all_tasks_of_its_scope():
    assert requests(lecture_items(), ModelInfo("whisper-tiny.en", "whisper", 30.0)) == [
        ("transcribe", ["summary"], "transcribe", "recording", None, 2),
        ("words", None, "transcribe", "item", 0, 1),
        ("words", None, "transcribe", "item", 1, 1)]


def test_a_model_that_answers_questions_is_asked_each_task():
    assert requests(lecture_items(), ModelInfo("qwen", "qwen2_audio", 30.0)) == [
        ("transcribe", None, "Please transcribe the audio.", "recording", None, 2),
        ("summary", None, "Summarize the lecture.", "recording", None, 2),
        ("words", None, "List the words.", "item", 0, 1),
        ("words", None, "List the words.", "item", 1, 1)]


def test_tasks_the_output_answers_already_are_not_asked_again():
    assert requests(lecture_items(["transcribe", "words"]), ModelInfo("whisper-tiny.en", "whisper", 30.0)) == [
        ("summary", None, "transcribe", "recording", None, 2)]
