"""Dreambooth Studio's API side: settings, database, job service and HTTP routes (no ML stack)."""
