"""Symlinked folders inside a local input are listed (fsspec's walk skipped them without a word); a link that
loops back, and a link to nothing, are reported and not followed."""

import logging

from pipeline.sources import list_audio
from tests.conftest import samples_in


def test_symlinked_folders_are_followed_and_loops_reported(tmp_path, caplog):
    inputs = samples_in(tmp_path / "in" / "real", "story.ogg").parent
    samples_in(tmp_path / "elsewhere", "greeting.wav")
    (inputs / "linked").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (inputs / "real" / "loop").symlink_to(inputs, target_is_directory=True)
    (inputs / "gone").symlink_to(tmp_path / "nothing")
    with caplog.at_level(logging.WARNING, logger="pipeline.sources"):
        listed = sorted(s.source_uri for s in list_audio(str(inputs), ["wav", "ogg"]))
    assert listed == [f"{inputs}/linked/greeting.wav", f"{inputs}/real/story.ogg"]
    assert [r.getMessage() for r in caplog.records] == [
        f"input: skipping {inputs}/gone: a link to nothing",
        f"input: not listing {inputs}/real/loop again: it is a link to a folder already listed"]
