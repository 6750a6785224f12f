"""Answer shapes: a task's JSON Schema (or labels) checked at config load, and answers held to it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from contract.answers import AnswerInvalid, answer_schema, canonical, check_answer, labelled_fields
from contract.config import ConfigError, TaskConfig, load_config
from tests.conftest import ROOT

OUTCOME = {"type": "object", "properties": {"resolved": {"type": "boolean"},
                                            "topics": {"type": "array", "items": {"type": "string"}},
                                            "follow_up": {"type": ["string", "null"]}},
           "required": ["resolved", "topics", "follow_up"], "additionalProperties": False}


def test_labels_are_one_string_of_them():
    assert answer_schema(["angry", "calm", "angry"]) == {"type": "string", "enum": ["angry", "calm"]}
    assert check_answer(answer_schema(["angry", "calm"]), '"calm"') == "calm"
    with pytest.raises(AnswerInvalid, match="is not one of"):
        check_answer(answer_schema(["angry", "calm"]), '"sounds angry"')


def test_an_answer_is_json_that_validates():
    assert check_answer(OUTCOME, '{"resolved": true, "topics": ["billing"], "follow_up": null}')["resolved"] is True
    with pytest.raises(AnswerInvalid, match="resolved.*boolean"):
        check_answer(OUTCOME, '{"resolved": "yes", "topics": [], "follow_up": null}')
    with pytest.raises(AnswerInvalid, match="not JSON"):
        check_answer(OUTCOME, "The call was resolved.")
    # A raw control character in a string (constrained engines let them through) is stored escaped.
    value = check_answer(OUTCOME, '{"resolved":false,"topics":["a\x03b"],"follow_up":null}')
    assert canonical(value) == '{"resolved":false,"topics":["a\\u0003b"],"follow_up":null}'


def test_labelled_fields_are_the_ones_tallied():
    assert labelled_fields(OUTCOME) == ["resolved"]
    assert labelled_fields(answer_schema(["a", "b"])) == [""]
    assert labelled_fields({"type": "string"}) == []


def test_a_task_with_a_bad_schema_is_a_config_error_naming_it(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("engine: {kind: vllm, family: qwen2_audio}\n"
                   "tasks:\n  - name: mood\n    question: How does the speaker feel?\n    answer: {type: strng}\n")
    with pytest.raises(ConfigError, match=r"tasks\.0\.answer: .*not a valid JSON Schema"):
        load_config(bad)
    with pytest.raises(ValueError, match="at least one"):
        TaskConfig(name="mood", question="How?", answer=[])
    # From the user's side: one line, exit 2, before Ray starts.
    done = subprocess.run([sys.executable, "jobs/transcribe.py", "--config", str(bad)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "tasks.0.answer" in done.stderr and "Traceback" not in done.stderr
    assert "ray" not in done.stderr.lower()


def test_whisper_refuses_a_task_with_an_answer_schema():
    with pytest.raises(ConfigError, match=r"tasks\[0\] \(mood\): answer needs a model that answers questions"):
        load_config(None, ["tasks=[{name: mood, question: Mood, answer: [angry, calm]}]"])
