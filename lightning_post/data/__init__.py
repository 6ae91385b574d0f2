"""Data: record validation, prompt templates, tokenisation, collators and LightningDataModules."""
