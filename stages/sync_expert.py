"""DVC stage `sync_expert` (see dvc.yaml): a thin wrapper over talkgs.pipeline.sync_expert."""

import talkgs  # noqa: F401  (first: sets OMP_WAIT_POLICY before torch/numba)
from talkgs.pipeline import stage_main

if __name__ == "__main__":
    stage_main("sync_expert")
