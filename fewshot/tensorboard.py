"""TensorBoard event files of a training run: `sact train --log tensorboard`.

metrics.jsonl stays the record of a run (training resumes from it, figures are drawn from it);
this mirrors it where TRX and STRM users watch their curves: every record's numbers as scalars and
the run's figures as images, in RUN/tensorboard/ (`tensorboard --logdir runs/`). Needs the
optional `tensorboard` package (`pip install 'sact[tensorboard]'`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

FOLDER = "tensorboard"
# metrics.jsonl key -> TensorBoard tag
SCALAR_TAGS = {
    "loss": "train/loss",
    "train_accuracy": "train/accuracy",
    "lr": "train/learning_rate",
    "val_accuracy": "val/accuracy",
}


class TensorBoardLog:
    """Scalars and figures of one run, written as TensorBoard event files in ``folder``.

    ``resumed_at``: the step a resumed run continues from. Events the killed run wrote after it
    are purged when TensorBoard reads the folder, as metrics.jsonl is truncated there.
    """

    def __init__(self, folder: Path, *, resumed_at: int | None = None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        purge = None if resumed_at is None else resumed_at + 1
        self.writer = SummaryWriter(log_dir=str(folder), purge_step=purge)

    def record(self, record: dict[str, Any]) -> None:
        """One metrics.jsonl record: its known numbers at its step."""
        for key, tag in SCALAR_TAGS.items():
            if key in record:
                self.writer.add_scalar(tag, record[key], record["step"])

    def figure(self, tag: str, png: Path, step: int) -> None:
        image = np.asarray(Image.open(png).convert("RGB"))  # (H, W, 3) uint8
        self.writer.add_image(tag, image, step, dataformats="HWC")

    def flush(self) -> None:
        """Write what is buffered: a run killed after this loses nothing logged before it."""
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
