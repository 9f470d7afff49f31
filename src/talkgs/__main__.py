"""``python -m talkgs ...``: the same as the ``talkgs`` command."""

import talkgs  # noqa: F401  (first: the thread and SIMD pins)
from talkgs.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
