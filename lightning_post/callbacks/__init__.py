"""Trainer side effects: sample generations, export, reward scores, MLflow run information."""

from lightning_post.callbacks.checkpoint import Checkpoint, GracefulStop
from lightning_post.callbacks.export import ExportModel
from lightning_post.callbacks.samples import GenerationSamples
from lightning_post.callbacks.scores import ScoreWriter

__all__ = ["Checkpoint", "GracefulStop", "ExportModel", "GenerationSamples", "ScoreWriter"]
