from __future__ import annotations

from fastapi import APIRouter

from api.deps import CatalogDep, OwnerDep, SessionDep
from api.errors import ERROR_RESPONSES
from api.schemas import ModelPublic, ModelsPublic
from core.jobs.repository import JobRepository

router = APIRouter(prefix="/models", tags=["models"], responses=ERROR_RESPONSES)


@router.get("", response_model=ModelsPublic)
def list_models(session: SessionDep, catalog: CatalogDep, owner: OwnerDep) -> ModelsPublic:
    """List the base models this deployment offers and the caller's fine-tuned models (one per
    succeeded job)."""
    models = [ModelPublic.of_entry(e) for e in catalog.values()]
    models += [ModelPublic.of_job(job) for job in JobRepository(session).succeeded(owner=owner)]
    return ModelsPublic(data=models, count=len(models))
