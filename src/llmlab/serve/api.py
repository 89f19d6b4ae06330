"""The OpenAI-compatible HTTP API over the engine, and the chat page, in one FastAPI app.

Routes: GET /v1/models, GET /v1/models/{id}, POST /v1/completions, POST /v1/chat/completions; the chat page
web/index.html at / (its script and style under /web/). Each request becomes n engine requests (one per choice; a
seed s gives choice i the seed s + i), whose token events are either collected into one response or streamed as
server-sent events: `data: {chunk}\\n\\n` per event, `data: [DONE]\\n\\n` at the end (OpenAI's streaming format).
The engine's events carry text already cut at stop strings and whole UTF-8 characters (serve/detokenizer.py); with
tools, content is held back from the first "<tool_call>" on, and the calls are parsed when the choice finishes
(serve/tools.py).

Errors are OpenAI's body {"error": {"message", "type", "param", "code"}}: 400 for invalid requests (bad JSON,
values out of range, prompts past the context, invalid tool schemas), 401 for a missing or wrong API key, 404
for an unknown model or route, 500 when the model's output cannot meet the request (OpenAI: "The model produced
invalid content"). An error ends that request only. A client that goes away mid-request cancels its engine requests.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

from llmlab.errors import LlmlabError
from llmlab.infer.chat_template import ChatTemplate
from llmlab.infer.sampling import SamplingParams
from llmlab.serve import tools as toolkit
from llmlab.serve.schemas import (
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatLogprobs,
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    CompletionResponse,
    Delta,
    ErrorBody,
    ErrorResponse,
    ModelCard,
    ModelList,
    ResponseMessage,
    SamplingRequest,
    TokenLogprob,
    ToolCallDelta,
    TopLogprob,
    Usage,
    new_id,
)

WEB_DIR = Path(__file__).parent / "web"


class ApiError(Exception):
    """An error response: HTTP status and OpenAI's error fields."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.body = status, ErrorBody(message=message, type=type, param=param, code=code)

    def response(self) -> JSONResponse:
        return JSONResponse(ErrorResponse(error=self.body).model_dump(), status_code=self.status)


# ------------------------------------------------------------------------------------------------------------ choices
@dataclass
class Choice:
    """One choice as it is generated: its engine request, text so far, tokens and log-probs, and how it ended."""

    index: int
    request_id: str
    prefix: str = ""  # text the prompt already started the answer with (a forced tool call)
    watch_tools: bool = False  # hold content back from the first "<tool_call>"
    text: str = ""
    sent: int = 0  # characters of text already streamed as content
    tokens: list[int] = field(default_factory=list)
    logprobs: list[tuple[int, float, list[tuple[int, float]]]] = field(default_factory=list)
    finish_reason: str | None = None

    def streamable(self) -> str:
        """New content that can be shown now; all of it unless tools are watched."""
        if self.prefix:  # a forced call: nothing is content
            return ""
        end = len(self.text)
        if self.watch_tools:
            end = min(end, _before_marker(self.text, toolkit.TOOL_CALL_OPEN))
        piece = self.text[self.sent:end]
        self.sent = max(self.sent, end)
        return piece


def _before_marker(text: str, marker: str) -> int:
    """Where content must stop: at the marker, or before a tail of text that could be the marker's start."""
    at = text.find(marker)
    if at >= 0:
        return at
    for k in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:k]):
            return len(text) - k
    return len(text)


class EventStream(StreamingResponse):
    """SSE response that cancels its engine requests however it ends (done, error, or the client went away)."""

    def __init__(self, chunks: AsyncIterator[str], on_close: Callable[[], None]) -> None:
        super().__init__(chunks, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.on_close = on_close

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)  # starlette cancels the stream when the client disconnects
        finally:
            await self.body_iterator.aclose()
            self.on_close()


def sse(obj: Any) -> str:
    data = obj if isinstance(obj, str) else json.dumps(obj if isinstance(obj, dict) else obj.model_dump())
    return f"data: {data}\n\n"


# ---------------------------------------------------------------------------------------------------------------- api
class Api:
    """The request handlers, holding the engine, the tokenizer and the model's name."""

    def __init__(self, engine, tokenizer, model_name: str, template: ChatTemplate) -> None:
        self.engine, self.tokenizer, self.model_name, self.template = engine, tokenizer, model_name, template
        self.context_length = engine.max_seq_len
        self.chat_stop_ids = tuple(template.stop_token_ids(tokenizer))  # end of turn (<|im_end|>, ...) and eos

    def models(self) -> ModelList:
        return ModelList(data=[ModelCard(id=self.model_name, max_model_len=self.context_length)])

    def check_model(self, name: str) -> None:
        if name != self.model_name:
            raise ApiError(404, f"The model `{name}` does not exist or you do not have access to it.",
                           param="model", code="model_not_found")

    # ------------------------------------------------------------------------------------------------------ requests
    def encode_prompts(self, prompt: str | list) -> list[list[int]]:
        """A completions prompt: a string, strings, token ids, or lists of token ids -> one id list per prompt."""
        if isinstance(prompt, str):
            prompts: list = [prompt]
        elif prompt and all(isinstance(p, int) for p in prompt):
            prompts = [prompt]
        else:
            prompts = list(prompt)
        if not prompts:
            raise ApiError(400, "prompt must not be empty", param="prompt")
        ids = [self.tokenizer.encode(p, allowed_special="all") if isinstance(p, str) else list(p) for p in prompts]
        for row in ids:
            bad = [t for t in row if not 0 <= t < self.tokenizer.vocab_size]
            if bad:
                raise ApiError(400, f"prompt token id {bad[0]} is outside the vocabulary (size "
                                    f"{self.tokenizer.vocab_size})", param="prompt")
        return ids

    def max_new_tokens(self, n_prompt: int, max_tokens: int | None, what: str) -> int:
        """max_tokens checked against the context (OpenAI's context_length_exceeded); None: all the room left."""
        limit = self.context_length
        if n_prompt >= limit or (max_tokens is not None and n_prompt + max_tokens > limit):
            asked = (f"you requested {n_prompt + max_tokens} tokens ({n_prompt} in the {what}, {max_tokens} in the "
                     f"completion)" if max_tokens is not None and n_prompt < limit
                     else f"your {what} resulted in {n_prompt} tokens")
            raise ApiError(400, f"This model's maximum context length is {limit} tokens. However, {asked}. Please "
                                f"reduce the length of the {what} or completion.",
                           param="max_tokens" if n_prompt < limit else what, code="context_length_exceeded")
        return max_tokens if max_tokens is not None else limit - n_prompt

    def submit(self, prompts: list[list[int]], req: SamplingRequest, max_tokens: int | None, what: str, *,
               n_logprobs: int, stop_ids: Sequence[int] = (), prefix: str = "",
               watch_tools: bool = False) -> list[Choice]:
        """n engine requests per prompt; if one is refused, the others are cancelled and the error is a 400."""
        choices: list[Choice] = []
        try:
            for ids in prompts:
                new = self.max_new_tokens(len(ids), max_tokens, what)
                for _ in range(req.n):
                    i = len(choices)
                    params = SamplingParams(
                        temperature=req.temperature, top_k=req.top_k, top_p=req.top_p, min_p=req.min_p,
                        repetition_penalty=req.repetition_penalty, frequency_penalty=req.frequency_penalty,
                        presence_penalty=req.presence_penalty, max_new_tokens=new, stop_token_ids=stop_ids,
                        stop_strings=req.stop_strings(), seed=None if req.seed is None else req.seed + i)
                    rid = self.engine.submit(ids, params, logprobs=n_logprobs, request_id=new_id("req-"))
                    choices.append(Choice(i, rid, prefix=prefix, watch_tools=watch_tools))
        except BaseException:
            self.cancel(choices)
            raise
        return choices

    def cancel(self, choices: Sequence[Choice]) -> None:
        for c in choices:
            if c.finish_reason is None:
                self.engine.cancel(c.request_id)

    async def events(self, choices: list[Choice]) -> AsyncIterator[Choice]:
        """The choices' token events, merged as they come: each event is added to its choice, which is yielded.
        Closing the iterator early cancels the engine requests still running."""
        queue: asyncio.Queue = asyncio.Queue()

        async def pump(c: Choice) -> None:
            try:
                async for event in self.engine.aevents(c.request_id):
                    await queue.put((c, event))
            except Exception as e:  # noqa: BLE001 - handed to the consumer, which raises it
                await queue.put((c, e))

        tasks = [asyncio.create_task(pump(c)) for c in choices]
        try:
            while any(c.finish_reason is None for c in choices):
                c, event = await queue.get()
                if isinstance(event, Exception):
                    raise event
                if event.finish_reason == "error":
                    raise ApiError(500, f"generation failed: {event.error}", type="server_error")
                if event.finish_reason == "cancelled":
                    raise ApiError(500, "the request was cancelled by the server", type="server_error")
                if event.token_id >= 0:
                    c.tokens.append(event.token_id)
                    c.logprobs.append((event.token_id, event.logprob, list(event.top_logprobs)))
                c.text += event.text
                c.finish_reason = event.finish_reason
                yield c
        finally:
            for t in tasks:
                t.cancel()
            self.cancel(choices)

    async def collect(self, request: Request, choices: list[Choice]) -> None:
        """Run the choices to the end; if the client disconnects first, cancel them."""

        async def run() -> None:
            async for _ in self.events(choices):
                pass

        work, gone = asyncio.create_task(run()), asyncio.create_task(_disconnected(request))
        try:
            await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            if not work.done():
                work.cancel()
                self.cancel(choices)
        if work.cancelled():
            raise ApiError(499, "client disconnected")
        work.result()

    def token_text(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id])

    def token_bytes(self, token_id: int) -> list[int]:
        decode_bytes = getattr(self.tokenizer, "decode_bytes", None)
        return list(decode_bytes([token_id]) if decode_bytes else self.token_text(token_id).encode("utf-8"))

    def chat_logprobs(self, entries: list[tuple[int, float, list[tuple[int, float]]]]) -> ChatLogprobs:
        def top(tid: int, lp: float) -> TopLogprob:
            return TopLogprob(token=self.token_text(tid), logprob=lp, bytes=self.token_bytes(tid))

        return ChatLogprobs(content=[TokenLogprob(**top(tid, lp).model_dump(), top_logprobs=[top(*t) for t in tops])
                                     for tid, lp, tops in entries])

    def completion_logprobs(self, entries: list[tuple[int, float, list[tuple[int, float]]]],
                            offset: int = 0) -> CompletionLogprobs:
        out = CompletionLogprobs()
        for tid, lp, tops in entries:
            token = self.token_text(tid)
            out.tokens.append(token)
            out.token_logprobs.append(lp)
            out.top_logprobs.append({self.token_text(t): v for t, v in tops})
            out.text_offset.append(offset)
            offset += len(token)
        return out


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


def usage(prompts: list[list[int]], choices: list[Choice]) -> Usage:
    """Token counts; each prompt counts once however many choices it has (as OpenAI and vLLM count)."""
    prompt = sum(len(p) for p in prompts)
    completion = sum(len(c.tokens) for c in choices)
    return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


# -------------------------------------------------------------------------------------------------------- completions
async def completions(api: Api, req: CompletionRequest, request: Request) -> Response:
    api.check_model(req.model)
    prompts = api.encode_prompts(req.prompt)
    choices = api.submit(prompts, req, req.max_tokens, "prompt", n_logprobs=req.logprobs or 0)
    rid, with_logprobs = new_id("cmpl-"), req.logprobs is not None

    def choice(c: Choice, text: str, logprobs: list) -> CompletionChoice:
        return CompletionChoice(index=c.index, text=text, finish_reason=c.finish_reason,
                                logprobs=api.completion_logprobs(logprobs) if with_logprobs else None)

    if not req.stream:
        await api.collect(request, choices)
        return JSONResponse(CompletionResponse(id=rid, model=api.model_name, usage=usage(prompts, choices),
                                               choices=[choice(c, c.text, c.logprobs) for c in choices]).model_dump())

    async def chunks() -> AsyncIterator[str]:
        try:
            async for c in api.events(choices):
                piece = c.streamable()
                if piece or c.finish_reason or with_logprobs:
                    yield sse(CompletionResponse(id=rid, model=api.model_name,
                                                 choices=[choice(c, piece, c.logprobs[-1:])]))
            if req.stream_options and req.stream_options.include_usage:
                yield sse(CompletionResponse(id=rid, model=api.model_name, choices=[],
                                             usage=usage(prompts, choices)))
        except ApiError as e:
            yield sse(ErrorResponse(error=e.body))
        yield sse("[DONE]")

    return EventStream(chunks(), on_close=lambda: api.cancel(choices))


# --------------------------------------------------------------------------------------------------------------- chat
def chat_prompt(api: Api, req: ChatCompletionRequest) -> tuple[list[int], str]:
    """The prompt's token ids and the answer's forced start (tool_choice), after checking tools."""
    tools = req.tools or []
    toolkit.check_tools(tools, req.tool_choice)
    shown = tools if req.tool_choice != "none" else []
    prefix = toolkit.answer_prefix(req.tool_choice) if shown else ""
    text = api.template.render(toolkit.plain_messages(req.messages, shown), add_generation_prompt=True) + prefix
    return api.tokenizer.encode(text, allowed_special="all"), prefix


def finish_tools(c: Choice, req: ChatCompletionRequest) -> toolkit.ParsedAnswer:
    """A finished choice read for tool calls. A forced call (tool_choice required or named) that is not valid is a
    500, as OpenAI answers when the model produced invalid content; otherwise the text stays content."""
    parsed = toolkit.parse_tool_calls(c.prefix + c.text, req.tools or [], parallel=req.parallel_tool_calls)
    if c.prefix and not parsed.tool_calls:
        raise ApiError(500, f"The model produced invalid content: tool_choice asks for a tool call, but "
                            f"{parsed.error or 'there is none'}.", type="server_error", code="invalid_model_output")
    if parsed.tool_calls:
        c.finish_reason = "tool_calls"
    return parsed


async def chat_completions(api: Api, req: ChatCompletionRequest, request: Request) -> Response:
    api.check_model(req.model)
    prompt_ids, prefix = chat_prompt(api, req)
    watch_tools = bool(req.tools) and req.tool_choice != "none"
    n_logprobs = (req.top_logprobs or 0) if req.logprobs else 0
    choices = api.submit([prompt_ids], req, req.max_completion_tokens or req.max_tokens, "messages",
                         n_logprobs=n_logprobs, stop_ids=api.chat_stop_ids, prefix=prefix, watch_tools=watch_tools)
    rid = new_id("chatcmpl-")

    if not req.stream:
        await api.collect(request, choices)
        out = []
        for c in choices:
            message = ResponseMessage(content=c.text)
            if watch_tools:
                parsed = finish_tools(c, req)
                message = ResponseMessage(content=parsed.content if parsed.content.strip() else None,
                                          tool_calls=parsed.tool_calls or None)
            out.append(ChatChoice(index=c.index, message=message, finish_reason=c.finish_reason,
                                  logprobs=api.chat_logprobs(c.logprobs) if req.logprobs else None))
        return JSONResponse(ChatCompletionResponse(id=rid, model=api.model_name, choices=out,
                                                   usage=usage([prompt_ids], choices)).model_dump())

    def chunk(c: Choice, delta: Delta, logprobs: list | None = None, finish: bool = False) -> str:
        lp = api.chat_logprobs(logprobs) if req.logprobs and logprobs else None
        return sse(ChatCompletionChunk(id=rid, model=api.model_name, choices=[ChatChunkChoice(
            index=c.index, delta=delta, logprobs=lp, finish_reason=c.finish_reason if finish else None)]))

    async def chunks() -> AsyncIterator[str]:
        try:
            for c in choices:
                yield chunk(c, Delta(role="assistant", content=""))
            async for c in api.events(choices):
                piece = c.streamable()
                if piece or (req.logprobs and c.logprobs):
                    yield chunk(c, Delta(content=piece or None), c.logprobs[-1:])
                if c.finish_reason is None:
                    continue
                calls = []
                if watch_tools:
                    parsed = finish_tools(c, req)
                    rest = parsed.content[c.sent:] if not c.prefix else ""
                    calls = [ToolCallDelta(index=i, id=t.id, type="function", function=t.function)
                             for i, t in enumerate(parsed.tool_calls)]
                    if rest:
                        yield chunk(c, Delta(content=rest))
                yield chunk(c, Delta(tool_calls=calls or None), finish=True)
            if req.stream_options and req.stream_options.include_usage:
                yield sse(ChatCompletionChunk(id=rid, model=api.model_name, choices=[],
                                              usage=usage([prompt_ids], choices)))
        except ApiError as e:
            yield sse(ErrorResponse(error=e.body))
        yield sse("[DONE]")

    return EventStream(chunks(), on_close=lambda: api.cancel(choices))


# ---------------------------------------------------------------------------------------------------------------- app
def create_app(engine, tokenizer, model_name: str, api_key: str | None = None,
               chat_template: ChatTemplate | None = None) -> FastAPI:
    """The FastAPI app: the OpenAI routes under /v1 (behind `api_key` when given) and the chat page at /.
    chat_template: the model's (`load_chat_template(MODEL)`), default ChatML; tools are always written into the
    messages in serve/tools.py's format, so the template never sees them."""
    api = Api(engine, tokenizer, model_name, chat_template or ChatTemplate())
    app = FastAPI(title="llmlab", docs_url=None, redoc_url=None)  # the docs pages load scripts from a CDN

    def check_key(request: Request) -> None:
        if api_key is None:
            return
        scheme, _, key = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not key:
            raise ApiError(401, "You didn't provide an API key. You need to provide your API key in an "
                                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).")
        if not secrets.compare_digest(key.encode(), api_key.encode()):
            raise ApiError(401, f"Incorrect API key provided: {key[:3]}...{key[-4:]}.", code="invalid_api_key")

    v1 = APIRouter(prefix="/v1", dependencies=[Depends(check_key)])
    v1.get("/models")(api.models)

    @v1.get("/models/{model:path}")
    def model(model: str) -> ModelCard:
        api.check_model(model)
        return api.models().data[0]

    @v1.post("/completions")
    async def post_completions(req: CompletionRequest, request: Request) -> Response:
        return await completions(api, req, request)

    @v1.post("/chat/completions")
    async def post_chat(req: ChatCompletionRequest, request: Request) -> Response:
        return await chat_completions(api, req, request)

    app.include_router(v1)
    app.get("/", include_in_schema=False)(lambda: FileResponse(WEB_DIR / "index.html"))
    app.mount("/web", StaticFiles(directory=WEB_DIR), name="web")
    install_error_handlers(app)
    return app


def install_error_handlers(app: FastAPI) -> None:
    """Every error becomes OpenAI's error body; none stops the server."""

    @app.exception_handler(ApiError)
    async def api_error(request: Request, e: ApiError) -> JSONResponse:
        return e.response()

    @app.exception_handler(toolkit.ToolError)
    async def tool_error(request: Request, e: toolkit.ToolError) -> JSONResponse:
        return ApiError(400, str(e), param=e.param, code="invalid_tools").response()

    @app.exception_handler(LlmlabError)
    async def llmlab_error(request: Request, e: LlmlabError) -> JSONResponse:  # ConfigError names its field
        return ApiError(400, str(e)).response()

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        first = max(e.errors(), key=lambda err: len(err.get("loc", ())))  # the deepest: the union member that fits
        if first.get("type") == "json_invalid":
            return ApiError(400, "We could not parse the JSON body of your request: "
                                 f"{first.get('ctx', {}).get('error', first['msg'])}", code="json_invalid").response()
        if tuple(first.get("loc", ())) == ("body",):
            return ApiError(400, "The request body must be a JSON object (with Content-Type: application/json)",
                            code="invalid_body").response()
        param = error_param(first.get("loc", ()))
        return ApiError(400, f"{param + ': ' if param else ''}{first['msg']}", param=param,
                        code=first.get("type")).response()

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException) -> JSONResponse:
        kind = {404: "not_found_error", 405: "invalid_request_error"}.get(e.status_code, "invalid_request_error")
        message = f"Unknown route: {request.method} {request.url.path}" if e.status_code == 404 else str(e.detail)
        return ApiError(e.status_code, message, type=kind).response()

    @app.exception_handler(Exception)
    async def crash(request: Request, e: Exception) -> JSONResponse:
        return ApiError(500, f"internal error: {type(e).__name__}: {e}", type="server_error").response()


def error_param(loc: Sequence) -> str | None:
    """pydantic's error location -> OpenAI's param: ("body", "messages", 0, "content") -> "messages[0].content".
    Union members' tags ("list[TextPart]") are left out."""
    out = ""
    for part in loc[1:] if loc and loc[0] == "body" else loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and part.isidentifier() and part not in ("str", "int", "float", "bool", "dict"):
            out += f".{part}" if out else part
    return out or None
