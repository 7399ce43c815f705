"""HTTP API: FastAPI app factory, routes per resource, request/response schemas, dependencies."""
