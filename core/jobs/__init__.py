"""The job domain: ORM models, repositories, object storage, the model catalog and run_job.

Shared by the API and the Celery worker; imports no torch at module import time (training and
prediction import core.adapt inside functions).
"""
