"""The reviewer inbox on the web: server-rendered pages served by the review API.

Pages sign in with the API's browser session (workers/api/auth.py), show exchanges by
opaque references only (refs.py), and send decisions through the same Temporal update
path as the JSON API (workers/api/reviews.py record_decision).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from workers.api.common import ApiRefusal, operation_outcome
from workers.web.exchanges import router as exchanges_router
from workers.web.inbox import router as inbox_router
from workers.web.render import templates
from workers.web.review_page import router as review_router
from workers.web.session import SignInRequired, sign_in_redirect

STATIC_DIR = Path(__file__).parent / "static"


def mount_web(app: FastAPI) -> None:
    """Add the pages, their static files and the sign-in redirect to the API app."""
    app.mount("/ui/static", StaticFiles(directory=STATIC_DIR), name="web-static")
    app.exception_handler(SignInRequired)(sign_in_redirect)
    app.exception_handler(ApiRefusal)(refusal_for_people)
    app.include_router(inbox_router)
    app.include_router(review_router)
    app.include_router(exchanges_router)


# What a refusal is called on a page, by HTTP status.
_PROBLEM_TITLES = {403: "Not allowed", 404: "Not found", 409: "Already decided"}


async def refusal_for_people(request: Request, err: ApiRefusal) -> Response:
    """A refusal on a page is a page saying why; everywhere else an OperationOutcome."""
    if request.url.path.startswith("/ui/"):
        title = _PROBLEM_TITLES.get(err.status, "Cannot do that")
        return templates.TemplateResponse(
            request,
            "problem.html",
            {"title": title, "message": err.message},
            status_code=err.status,
            headers=err.headers,
        )
    return JSONResponse(
        operation_outcome(err.code, err.message), status_code=err.status, headers=err.headers
    )


__all__ = ["mount_web"]
