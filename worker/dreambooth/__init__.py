"""Dreambooth fine-tuning core: plain functions over frozen configs, no web or queue imports."""
