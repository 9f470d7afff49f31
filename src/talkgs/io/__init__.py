"""I/O: atomic writes, media (ffmpeg) encode/decode, audio files."""
