import os

import pytest

from contract.config import AUDIO_EXTENSIONS
from pipeline.sources import SourceError, list_audio


def touch(path, data=b"x"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_lists_audio_recursively_any_case_and_ignores_the_rest(tmp_path):
    names = ["a.wav", "b.FLAC", "sub/c.mp3", "sub/deeper/d.Opus", "e.m4a", "f.webm", "g.ogg", "h.oga",
             "i.aac", "j.mp4", "with space ü.wav"]
    for n in names:
        touch(tmp_path / n)
    for n in ["notes.txt", "image.png", "wav", "sub/.DS_Store"]:
        touch(tmp_path / n)
    found = {os.path.relpath(f.source_uri, tmp_path) for f in list_audio(str(tmp_path), list(AUDIO_EXTENSIONS))}
    assert found == set(names)


def test_item_id_is_stable_and_changes_with_the_file(tmp_path):
    path = touch(tmp_path / "a.wav", b"one")
    first = next(list_audio(str(tmp_path), ["wav"]))
    assert next(list_audio(str(tmp_path), ["wav"])).item_id == first.item_id
    path.write_bytes(b"longer")
    assert next(list_audio(str(tmp_path), ["wav"])).item_id != first.item_id
    assert first.source_uri == str(path)


def test_a_single_file_and_file_uri(tmp_path):
    path = touch(tmp_path / "a.wav")
    assert [f.source_uri for f in list_audio(str(path), ["wav"])] == [str(path)]
    assert len(list(list_audio(f"file://{tmp_path}", ["wav"]))) == 1


def test_missing_input_is_an_error(tmp_path):
    with pytest.raises(SourceError, match="does not exist"):
        list(list_audio(str(tmp_path / "nope"), ["wav"]))
