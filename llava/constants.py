"""Constants shared across the data, model and training code."""

# The literal placeholder a user turn carries where the audio goes. The collator expands each one
# into as many copies of the token as the projector produces outputs for that audio segment.
AUDIO_TOKEN = "<audio>"

# Label value ignored by the cross-entropy loss (prompt, padding, audio positions).
IGNORE_INDEX = -100
