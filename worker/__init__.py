"""Celery worker: the app (configured from settings) and thin tasks that call core.jobs.run_job."""
