"""The codec endpoint for the Temporal UI and CLI: payloads decoded (and encoded) only for
an authenticated operator or reviewer, every decode audited."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from google.protobuf import json_format
from temporalio.api.common.v1 import Payloads

from models.audit import AuditAction, AuditOutcome
from models.identity import Identity, Role
from workers.api.auth import authorized
from workers.api.common import ApiRefusal, audit_entry
from workers.api.context import ApiContext, Context

router = APIRouter()

# The browser's session cookie counts here, and only here: the UI's fetch carries it.
Decoder = Annotated[
    Identity,
    Depends(authorized(Role.OPS, Role.REVIEWER, action=AuditAction.DECODE, allow_cookie=True)),
]


async def _transcode(
    request: Request, identity: Identity, context: ApiContext, *, decode: bool
) -> Response:
    namespace = request.headers.get("x-namespace", context.settings.temporal_namespace)
    try:
        payloads = json_format.Parse(await request.body(), Payloads())
    except (json_format.ParseError, UnicodeDecodeError) as err:
        raise ApiRefusal(422, "invalid", f"body is not Temporal Payloads JSON: {err}") from err
    items = list(payloads.payloads)
    codec = context.codec
    try:
        if codec is not None:
            items = await (codec.decode(items) if decode else codec.encode(items))
    except Exception as err:
        await context.audit(
            audit_entry(
                identity.subject,
                AuditAction.DECODE,
                AuditOutcome.FAILURE,
                resource=f"namespace:{namespace}",
                detail=type(err).__name__,
            )
        )
        raise ApiRefusal(422, "processing", "the payloads could not be decoded") from err
    if decode:
        await context.audit(
            audit_entry(
                identity.subject,
                AuditAction.DECODE,
                AuditOutcome.SUCCESS,
                resource=f"namespace:{namespace}",
                detail=f"{len(items)} payloads",
            )
        )
    body = json_format.MessageToJson(Payloads(payloads=items))
    return Response(body, media_type="application/json")


@router.post("/codec/decode")
async def codec_decode(request: Request, identity: Decoder, context: Context) -> Response:
    return await _transcode(request, identity, context, decode=True)


@router.post("/codec/encode")
async def codec_encode(request: Request, identity: Decoder, context: Context) -> Response:
    return await _transcode(request, identity, context, decode=False)
