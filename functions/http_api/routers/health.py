from fastapi import APIRouter
from pydantic import BaseModel

from layers.shared.settings import VERSION

router = APIRouter(prefix="/api", tags=["health"])


class Health(BaseModel):
    status: str
    version: str


@router.get("/health", response_model=Health)
def health() -> Health:
    return Health(status="ok", version=VERSION)
