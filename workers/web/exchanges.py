"""Finding exchanges by business keys, and one exchange's page with its timeline.

The search form posts (never GET): what a person types (an MRN, an order number) is PHI
and must not land in URLs, browser history or access logs. The API turns it into the
keyed pseudonym the exchanges' search attributes carry (workers/api/search.py).
"""

from __future__ import annotations

from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse
from pydantic import ValidationError

from models.audit import AuditAction, AuditOutcome
from models.identity import Identity, Role
from models.search import BusinessKeyKind, ExchangeHit
from workers.api.common import ApiRefusal, audit_entry, describe_errors
from workers.api.context import ApiContext, Context
from workers.api.refs import UnknownReference
from workers.api.reviews import current_review
from workers.api.search import SearchRequest, exchange_timeline, find_exchanges
from workers.web.render import page
from workers.web.session import check_form_origin, signed_in

router = APIRouter()

PageViewer = Annotated[
    Identity, Depends(signed_in(Role.REVIEWER, Role.OPS, action=AuditAction.ACCESS))
]

# The search box's choices, in the words of the people who type them.
KEY_LABELS: dict[BusinessKeyKind, str] = {
    BusinessKeyKind.MRN: "MRN (patient identifier, PID-3)",
    BusinessKeyKind.VISIT: "Visit number (PV1-19)",
    BusinessKeyKind.PLACER: "Placer order number",
    BusinessKeyKind.FILLER: "Filler order number",
    BusinessKeyKind.ACCESSION: "Accession number",
    BusinessKeyKind.CONTROL_ID: "Message control id (MSH-10)",
}


def temporal_ui_link(context: ApiContext, workflow_id: str) -> str:
    """The exchange in the Temporal UI served behind the API's sign-in."""
    namespace = quote(context.settings.temporal_namespace, safe="")
    return f"/temporal/namespaces/{namespace}/workflows/{quote(workflow_id, safe='')}"


def _search_page(
    request: Request,
    identity: Identity,
    context: ApiContext,
    *,
    form: SearchRequest | None = None,
    hits: list[ExchangeHit] | None = None,
    error: str = "",
    status_code: int = 200,
) -> HTMLResponse:
    return page(
        request,
        "search.html",
        identity,
        title="Find exchanges",
        section="search",
        key_labels=KEY_LABELS,
        chosen=form.kind if form else BusinessKeyKind.MRN,
        facility=form.facility if form else "",
        hits=[
            (hit, context.refs.ref(hit.workflow_id), temporal_ui_link(context, hit.workflow_id))
            for hit in hits or []
        ],
        searched=hits is not None,
        error=error,
        status_code=status_code,
    )


@router.get("/ui/search", response_class=HTMLResponse)
async def search_form(request: Request, identity: PageViewer, context: Context) -> HTMLResponse:
    return _search_page(request, identity, context)


@router.post("/ui/search", response_class=HTMLResponse)
async def search(request: Request, identity: PageViewer, context: Context) -> HTMLResponse:
    form = await request.form()
    await check_form_origin(
        request, context, identity, form.get("csrf_token"), action=AuditAction.ACCESS
    )
    facility = form.get("facility")
    try:
        wanted = SearchRequest.model_validate(
            {
                "kind": form.get("kind"),
                "value": form.get("value"),
                "facility": facility if isinstance(facility, str) and facility.strip() else None,
            }
        )
    except ValidationError as err:
        message = "Search not understood: " + describe_errors(err.errors())
        return _search_page(request, identity, context, error=message, status_code=422)
    try:
        hits = await find_exchanges(context, wanted.kind, wanted.value, wanted.facility)
    except ApiRefusal as refusal:
        return _search_page(
            request, identity, context, form=wanted, error=refusal.message, status_code=400
        )
    await context.audit(
        audit_entry(
            identity.subject,
            AuditAction.ACCESS,
            AuditOutcome.SUCCESS,
            resource="web-exchange-search",
            # Which kind of key, never the value typed.
            detail=f"searched by {wanted.kind.value}: {len(hits)} exchange(s)",
        )
    )
    return _search_page(request, identity, context, form=wanted, hits=hits)


@router.get("/ui/exchanges/{ref}", response_class=HTMLResponse)
async def exchange_page(
    ref: str, request: Request, identity: PageViewer, context: Context
) -> HTMLResponse:
    try:
        workflow_id = context.refs.workflow_id(ref)
    except UnknownReference as err:
        raise ApiRefusal(404, "not-found", "no such exchange (the link is wrong or old)") from err
    timeline = await exchange_timeline(context, workflow_id, with_messages=True)
    running = timeline.execution_status == "RUNNING"
    pending = await current_review(context, workflow_id) if running else None
    await context.audit(
        audit_entry(
            identity.subject,
            AuditAction.ACCESS,
            AuditOutcome.SUCCESS,
            workflow_id,
            "web exchange page",
        )
    )
    return page(
        request,
        "exchange.html",
        identity,
        title="Exchange",
        ref=ref,
        timeline=timeline,
        pending=pending,
        temporal_link=temporal_ui_link(context, workflow_id),
    )
