"""Adapter between the engine's plain callbacks and a QgsProcessingFeedback."""

from __future__ import annotations

from qgis.core import QgsProcessingFeedback

from ..core.errors import Caution


class FeedbackAdapter:
    """Progress, cancel and log callbacks for ``predict_dtm`` that report to Processing."""

    def __init__(self, feedback: QgsProcessingFeedback) -> None:
        self.feedback = feedback

    def progress(self, fraction: float) -> None:
        self.feedback.setProgress(100.0 * min(max(fraction, 0.0), 1.0))

    def is_cancelled(self) -> bool:
        return self.feedback.isCanceled()

    def log(self, message: str) -> None:
        if isinstance(message, Caution):
            self.feedback.pushWarning(message)
        else:
            self.feedback.pushInfo(message)
