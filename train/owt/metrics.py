"""TensorBoard logging, done by one process only (rank 0); other ranks get a no-op logger."""

from __future__ import annotations

from pathlib import Path


class Metrics:
    """Scalars and text to OUTPUT_DIR/tensorboard.

    `purge_step` drops events at or after that step left by an interrupted run, so a resumed
    run continues its curves without duplicate points.
    """

    def __init__(self, log_dir: Path, enabled: bool = True, purge_step: int | None = None) -> None:
        self.writer = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if self.writer is not None:
            for tag, value in values.items():
                self.writer.add_scalar(tag, value, step)

    def text(self, step: int, tag: str, text: str) -> None:
        if self.writer is not None:
            self.writer.add_text(tag, text, step)

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
