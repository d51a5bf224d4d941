"""Dreambooth Studio's GPU side: the Celery worker, its tasks and the Dreambooth core."""
