"""The web dashboard at /dashboard: server-rendered pages over the ledger, kept live by htmx."""

from __future__ import annotations

from fastapi import APIRouter

from app.dashboard import actions, audit, pages, signin, webhooks, workflows

router = APIRouter()
router.include_router(signin.router)
router.include_router(pages.router)
router.include_router(workflows.router)
router.include_router(actions.router)
router.include_router(audit.router)
router.include_router(webhooks.pages)
router.include_router(webhooks.acts)

__all__ = ["router"]
