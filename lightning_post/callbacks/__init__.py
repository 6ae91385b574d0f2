"""Trainer side effects: sample generations, export, MLflow run information."""

from lightning_post.callbacks.export import ExportModel
from lightning_post.callbacks.samples import GenerationSamples

__all__ = ["ExportModel", "GenerationSamples"]
