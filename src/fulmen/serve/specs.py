"""API specifications: an endpoint that speaks a known protocol (OpenAI's chat completions).

A spec fixes the route and the request/response formats; the user's ``predict`` stays a generator of text.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

__all__ = ["LitSpec", "OpenAISpec"]


class LitSpec:
    """Base of API specs: ``setup(api)`` adapts the endpoint; ``respond`` builds the HTTP response."""

    api_path = "/predict"
    stream = False

    def setup(self, api: Any) -> None:
        api.api_path = self.api_path
        api.stream = self.stream or api.stream

    def decode_request(self, request: Any) -> Any:
        return request

    def encode_response(self, output: Any) -> Any:
        return output


class OpenAISpec(LitSpec):
    """OpenAI-compatible ``POST /v1/chat/completions`` (streamed as server-sent events when asked).

    ``decode_request`` hands ``predict`` the list of messages (``[{"role": ..., "content": ...}, ...]``);
    ``predict`` yields text pieces; ``encode_response`` turns each into an assistant message delta. A request
    with ``"stream": true`` gets ``chat.completion.chunk`` events ending with ``data: [DONE]``; without it,
    one ``chat.completion`` whose content is all the pieces joined.
    """

    api_path = "/v1/chat/completions"
    stream = True

    def validate_request(self, body: Any) -> str | None:
        """An error message for a body that is not a chat completion request, else ``None``."""
        if not isinstance(body, dict):
            return f"expected a JSON object with 'messages', got {type(body).__name__}"
        messages = body.get("messages")
        if not isinstance(messages, list) or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) for m in messages
        ):
            return '\'messages\' must be a list of objects with a \'role\' and a \'content\', e.g. [{"role": "user", "content": "hi"}]'
        return None

    def decode_request(self, request: Any) -> Any:
        return request["messages"]

    def encode_response(self, output: Any) -> Any:
        for piece in output:
            if isinstance(piece, dict):
                yield {"role": piece.get("role", "assistant"), "content": piece.get("content", "")}
            else:
                yield {"role": "assistant", "content": str(piece)}

    @staticmethod
    def _delta(chunk: str | bytes) -> dict[str, Any]:
        text = chunk.decode() if isinstance(chunk, bytes) else chunk
        try:
            value = json.loads(text)
        except ValueError:
            return {"role": "assistant", "content": text}
        if isinstance(value, dict):
            return value
        return {"role": "assistant", "content": str(value)}

    async def respond(self, body: dict[str, Any], chunks: AsyncIterator[Any]) -> Any:
        """The HTTP response for ``body`` from the worker's ``chunks`` (async iterator of encoded pieces)."""
        from fastapi.responses import JSONResponse, StreamingResponse

        cid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        created = int(time.time())
        model = body.get("model") or "fulmen"
        if body.get("stream"):

            async def events() -> AsyncIterator[bytes]:
                async for chunk in chunks:
                    delta = self._delta(chunk)
                    event = {
                        "id": cid,
                        "object": "chat.completion.chunk",
                        "created": created,
                        "model": model,
                        "choices": [{"index": 0, "delta": delta, "finish_reason": None}],
                    }
                    yield f"data: {json.dumps(event)}\n\n".encode()
                last = {
                    "id": cid,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": model,
                    "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
                }
                yield f"data: {json.dumps(last)}\n\n".encode()
                yield b"data: [DONE]\n\n"

            return StreamingResponse(events(), media_type="text/event-stream")
        parts = [self._delta(chunk).get("content", "") or "" async for chunk in chunks]
        return JSONResponse(
            {
                "id": cid,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": "".join(parts)}, "finish_reason": "stop"}
                ],
                "usage": {"prompt_tokens": 0, "completion_tokens": len(parts), "total_tokens": len(parts)},
            }
        )
