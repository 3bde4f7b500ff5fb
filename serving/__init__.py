"""The FastAPI service (issue 7)."""
