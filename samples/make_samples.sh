#!/usr/bin/env bash
# make_samples.sh - regenerate the sample recordings in samples/audio/.
#
# Synthesises short clips of clear English speech with espeak-ng (voice en-us,
# 150 words/minute) and converts them with sox/ffmpeg into a spread of
# containers, codecs, sample rates and channel layouts, so the pipeline's
# decoder is exercised on realistic inputs:
#
#   greeting.wav  PCM16 WAV,          16 kHz,    mono    (~5 s)
#   weather.flac  FLAC,               44.1 kHz,  stereo  (~7 s)
#   meeting.mp3   MP3 (lame),         22.05 kHz, mono    (~6 s)
#   story.ogg     Opus in Ogg,        48 kHz,    mono    (~6.5 s)
#   note.m4a      AAC in MP4,         32 kHz,    stereo  (~6 s)
#   lecture.wav   PCM16 WAV,          8 kHz,     mono    (~40 s, several
#                 sentences with pauses between them; longer than 25 s)
#
# The exact text of each clip is written to samples/transcripts.json
# ({"<file name>": "<spoken text>", ...}); samples/audio/ holds only audio.
#
# Requirements: espeak-ng, sox, ffmpeg (with libmp3lame, libopus, aac).
# Usage: samples/make_samples.sh   (from any directory; output is deterministic
# apart from encoder version differences)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
OUT="$HERE/audio"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
mkdir -p "$OUT"

VOICE=en-us
SPEED=150
FF=(ffmpeg -hide_banner -loglevel error -nostdin -y -threads 1)

GREETING="Hello and welcome. Thank you for calling. How can I help you today?"
WEATHER="Today the weather is sunny and warm. Tomorrow it will rain in the morning, and the wind will be cold."
MEETING="The meeting will start early in the morning. Please bring your notes and be on time."
STORY="Once upon a time there was a little dog. He lived in a small house near the river with his best friend."
NOTE="Remember to buy milk, bread and eggs on the way home. Call your mother after dinner."
LECTURE_SENTENCES=(
  "Good morning everyone, and welcome to the first class of the year."
  "Today we will talk about how plants grow."
  "Every plant needs water, light and good soil."
  "The leaves take in light from the sun and turn it into food."
  "The roots take water from the ground and carry it up to the rest of the plant."
  "If a plant does not get enough water, the leaves will turn brown and fall off."
  "Next week we will go outside and plant some seeds in the school garden."
  "Thank you for listening, and see you next time."
)

# speak TEXT OUTFILE.wav  -> espeak-ng native 22.05 kHz mono PCM16
speak() { espeak-ng -v "$VOICE" -s "$SPEED" -w "$2" "$1"; }

speak "$GREETING" "$TMP/greeting.wav"
sox "$TMP/greeting.wav" -r 16000 -c 1 -b 16 -e signed-integer "$OUT/greeting.wav"

speak "$WEATHER" "$TMP/weather.wav"
sox "$TMP/weather.wav" -r 44100 -c 2 -b 16 "$OUT/weather.flac"

speak "$MEETING" "$TMP/meeting.wav"
"${FF[@]}" -i "$TMP/meeting.wav" -map_metadata -1 -ar 22050 -ac 1 \
  -c:a libmp3lame -b:a 32k "$OUT/meeting.mp3"

speak "$STORY" "$TMP/story.wav"
"${FF[@]}" -i "$TMP/story.wav" -map_metadata -1 -ar 48000 -ac 1 \
  -c:a libopus -b:a 24k -bitexact "$OUT/story.ogg"

speak "$NOTE" "$TMP/note.wav"
"${FF[@]}" -i "$TMP/note.wav" -map_metadata -1 -ar 32000 -ac 2 \
  -c:a aac -b:a 48k -movflags +faststart -fflags +bitexact "$OUT/note.m4a"

# Lecture: one sentence at a time, joined with 0.9 s of silence between them.
parts=()
i=0
for s in "${LECTURE_SENTENCES[@]}"; do
  speak "$s" "$TMP/lec_$i.wav"
  parts+=("$TMP/lec_$i.wav")
  i=$((i + 1))
done
sox -n -r 22050 -c 1 -b 16 "$TMP/pause.wav" trim 0 0.9
joined=()
for p in "${parts[@]}"; do joined+=("$p" "$TMP/pause.wav"); done
unset 'joined[${#joined[@]}-1]'
sox "${joined[@]}" -r 8000 -c 1 -b 16 -e signed-integer "$OUT/lecture.wav"

LECTURE="${LECTURE_SENTENCES[*]}"

# Transcripts (JSON built by python3 so quoting is always correct).
python3 - "$HERE/transcripts.json" <<PY
import json, sys
texts = {
    "greeting.wav": """$GREETING""",
    "weather.flac": """$WEATHER""",
    "meeting.mp3": """$MEETING""",
    "story.ogg": """$STORY""",
    "note.m4a": """$NOTE""",
    "lecture.wav": """$LECTURE""",
}
with open(sys.argv[1], "w") as f:
    json.dump(texts, f, indent=2)
    f.write("\n")
PY

for f in "$OUT"/*; do
  printf '%-14s %s\n' "$(basename "$f")" "$(soxi -d "$f" 2>/dev/null || ffprobe -v error -show_entries format=duration -of csv=p=0 "$f")"
done
