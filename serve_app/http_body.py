"""Reading a request body with a size bound and a deadline, before anything holds it whole.

A declared ``Content-Length`` over the bound is refused before a byte is read; a chunked or lying body is counted
as it streams and refused the moment it passes the bound (413); a body that trickles in slower than the deadline
is refused with 408, so slow uploads cannot pin the ingress.
"""

from __future__ import annotations

import asyncio

from starlette.requests import ClientDisconnect, Request

from serve_app.textproc import MAX_BODY_BYTES, RequestError

BODY_READ_TIMEOUT_S = 30.0


def too_large(limit: int) -> RequestError:
    return RequestError(f"request body exceeds {limit} bytes", status=413, code="body_too_large")


async def read_body(request: Request, *, limit: int = MAX_BODY_BYTES,
                    timeout_s: float = BODY_READ_TIMEOUT_S) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise RequestError("invalid Content-Length header", code="invalid_request")
        if int(declared) > limit:
            raise too_large(limit)
    chunks: list[bytes] = []
    size = 0

    async def collect() -> None:
        nonlocal size
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise too_large(limit)
            chunks.append(chunk)

    try:
        await asyncio.wait_for(collect(), timeout_s)
    except asyncio.TimeoutError:
        raise RequestError(f"request body not received within {timeout_s:g} s", status=408,
                           code="body_timeout") from None
    except ClientDisconnect:
        raise RequestError("client disconnected while sending the body", code="client_disconnected") from None
    return b"".join(chunks)
