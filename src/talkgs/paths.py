"""Where every stage reads and writes, relative to the repository root.

```
data/raw/<subject>.<ext>          user videos (`talkgs add-subject`, tracked by `dvc add`)
data/raw/demo.mp4                 the built-in demo clip (stage make_demo)
data/<subject>/extract/           frames/, audio.wav, meta.json           (stage extract)
data/<subject>/segment/           labels/, torso/, background.png, ...    (stage segment)
```
"""

from __future__ import annotations

from pathlib import Path

RAW = Path("data/raw")
DEMO_VIDEO = RAW / "demo.mp4"


def subject_dir(subject: str, root: Path = Path(".")) -> Path:
    return root / "data" / subject


def extract_dir(subject: str, root: Path = Path(".")) -> Path:
    return subject_dir(subject, root) / "extract"


def segment_dir(subject: str, root: Path = Path(".")) -> Path:
    return subject_dir(subject, root) / "segment"
