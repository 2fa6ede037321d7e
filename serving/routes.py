"""v2 routes in front of KServe's own: the ``/versions/{version}`` forms and a faster infer.

KServe's ``/versions/{version}`` handlers answer "Model versioning not supported yet"; these pin
a request to one revision, as KServe's tag routing does in the cluster. The plain infer route
runs KServe's handler step by step but parses and writes JSON with orjson. Included before
KServe registers its routes, they are the ones FastAPI matches first.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import orjson
from fastapi import APIRouter, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from kserve.constants.constants import PredictorProtocol
from kserve.errors import InferenceError, InvalidInput, ModelNotFound, ModelNotReady
from kserve.protocol.dataplane import DataPlane
from kserve.protocol.infer_type import InferResponse
from kserve.protocol.rest.v2_datamodels import InferenceRequest, InferenceResponse
from kserve.protocol.rest.v2_endpoints import V2Endpoints
from pydantic import ValidationError

from serving.features import quoted
from serving.inputs import HEADER_LENGTH, check_binary_request
from serving.runtime import CanaryRouter, RevisionUnavailable, VersionNotFound, pinned_version


async def read_infer_body(raw_request: Request) -> InferenceRequest | bytes:
    """The body of a v2 infer request, parsed as KServe's route would, but faster.

    KServe's route lets FastAPI parse the JSON with the standard library, which takes about
    10 ms for 1000 rows of 30 floats; orjson takes about 1.5 ms. A binary-extension body
    (``Inference-Header-Content-Length``) is checked, then stays bytes for KServe to decode.

    Raises:
        RequestValidationError: When the body is not JSON or not a v2 inference request (422).
        InvalidInput: When JSON nests deeper than orjson's limit (1024 levels), or a binary
            request's header or sizes do not match its body (400).
    """
    body = await raw_request.body()
    header_length = raw_request.headers.get(HEADER_LENGTH)
    if header_length is not None:
        check_binary_request(body, header_length)
        return body
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as err:
        if err.msg == _TOO_DEEP:
            # The standard library would recurse until RecursionError: a 500.
            raise InvalidInput(
                f"the JSON body nests deeper than 1024 levels (at character {err.pos}): "
                "a v2 request is an object of 'inputs', each with a flat 'data' list"
            ) from err
        try:
            # NaN and Infinity literals are not JSON, but Python's json module writes them:
            # parse them, so that the checks can say which feature is not finite.
            data = json.loads(body)
        except (ValueError, RecursionError):
            error = {"type": "json_invalid", "loc": ("body", err.pos), "msg": "JSON decode error"}
            raise RequestValidationError([{**error, "ctx": {"error": err.msg}}]) from err
    try:
        return InferenceRequest.model_validate(data)
    except ValidationError as err:
        raise RequestValidationError(err.errors(include_url=False)) from err


# orjson's message for JSON nested deeper than it parses.
_TOO_DEEP = "depth limit exceeded"


def _as_json(result: InferenceResponse | Response, raw_response: Response) -> Response:
    """Serialize with pydantic in one call.

    Returned as a model, FastAPI would walk it with ``jsonable_encoder`` value by value
    (about 1.5 ms for 1000 outputs). A returned ``Response`` skips the merge of the headers
    set on ``raw_response`` (which name the revision), so they are copied here.
    """
    if isinstance(result, Response):
        return result
    headers = {k: v for k, v in raw_response.headers.items() if k != "content-length"}
    return Response(result.model_dump_json(), media_type="application/json", headers=headers)


_BODY_HEADERS = ("content-length", "content-type")


def _rest_response(response: InferResponse) -> dict[str, Any]:
    """The v2 JSON answer, with the keys KServe's ``InferenceResponse`` writes."""
    outputs = []
    for output in response.outputs:
        data = output.data
        outputs.append(
            {
                "name": output.name,
                "shape": output.shape,
                "datatype": output.datatype,
                "parameters": output.parameters or None,
                # v2 JSON tensors are flat, row-major. orjson writes numeric and bool arrays
                # itself; an object array (BYTES: string labels) goes as a list of its values.
                "data": _flat(data),
            }
        )
    return {
        "model_name": response.model_name,
        "model_version": response.model_version,
        "id": response.id,
        "parameters": response.parameters or None,
        "outputs": outputs,
    }


def _flat(data: Any) -> Any:
    if not isinstance(data, np.ndarray):
        return data
    if data.dtype == object or data.dtype.kind in "SU":
        return [v.decode() if isinstance(v, bytes) else str(v) for v in data.ravel().tolist()]
    return data.ravel()


class V2Routes:
    """v2 routes in front of KServe's: fast infer, and the ``/versions/{version}`` forms.

    KServe's own ``/versions/{version}`` handlers answer "Model versioning not supported yet";
    these pin the request to one revision, as KServe's tag routing does in the cluster.
    """

    def __init__(self, router: CanaryRouter, dataplane: DataPlane) -> None:
        """Answer for ``router`` through KServe's own v2 handlers."""
        self.router = router
        self.dataplane = dataplane
        self.v2 = V2Endpoints(dataplane)

    def _check(self, model_name: str, model_version: str | None) -> None:
        if model_name != self.router.name:
            raise ModelNotFound(quoted(model_name))
        if model_version is not None and self.router.find(model_version) is None:
            raise VersionNotFound(
                f"model {model_name!r} has no live version {quoted(model_version)}: live versions "
                f"are {self.router.routes.describe()}"
            )

    async def infer(
        self, raw_request: Request, raw_response: Response, model_name: str
    ) -> Response:
        """Infer with the revision the traffic split picks."""
        self._check(model_name, None)
        body = await read_infer_body(raw_request)
        return await self._answer(raw_request, raw_response, model_name, body)

    async def infer_version(
        self, raw_request: Request, raw_response: Response, model_name: str, model_version: str
    ) -> Response:
        """Infer with one revision: a store version, a revision name, ``latest`` or ``prev``."""
        self._check(model_name, model_version)
        body = await read_infer_body(raw_request)
        with pinned_version(model_version):
            return await self._answer(raw_request, raw_response, model_name, body)

    async def _answer(
        self,
        raw_request: Request,
        raw_response: Response,
        model_name: str,
        body: InferenceRequest | bytes,
    ) -> Response:
        if (
            isinstance(body, bytes)
            or body.outputs
            or (body.parameters or {}).get("binary_data_output")
        ):
            # Binary tensors or chosen outputs: KServe's own handler and encoder, as they are.
            result = await self.v2.infer(raw_request, raw_response, model_name, body)
            return _as_json(result, raw_response)
        # KServe's handler, step by step, but the JSON answer is written by orjson from the
        # output arrays: KServe's encoder turns each array into a list value by value, then
        # pydantic checks and serializes that list again (a tenth of a 1000-row request).
        if not await self.dataplane.model_ready(model_name, True):
            raise ModelNotReady(model_name)
        headers = dict(raw_request.headers)
        request, _ = self.dataplane.decode(
            body, headers, protocol_version=PredictorProtocol.REST_V2.value, model_name=model_name
        )
        response, response_headers = await self.dataplane.infer(
            model_name=model_name, request=request, headers=headers
        )
        if not isinstance(response, InferResponse):
            raise InferenceError(f"model {model_name!r} answered {type(response).__name__}")
        return Response(
            orjson.dumps(_rest_response(response), option=orjson.OPT_SERIALIZE_NUMPY),
            media_type="application/json",
            headers={k: v for k, v in response_headers.items() if k not in _BODY_HEADERS},
        )

    async def ready(self, model_name: str, model_version: str) -> dict[str, Any]:
        """Whether the version is live: 503, as KServe answers a model not ready, when it failed.

        Raises:
            RevisionUnavailable: When the version's model failed to load.
        """
        self._check(model_name, model_version)
        route = self.router.find(model_version)
        if route is not None and route.failure:
            raise self.router.unavailable(route)
        return {"name": model_name, "ready": True}

    async def metadata(self, model_name: str, model_version: str | None = None) -> dict[str, Any]:
        """KServe's model metadata, plus the live ``versions``."""
        self._check(model_name, model_version)
        metadata = await self.dataplane.model_metadata(model_name)
        versions = [model_version] if model_version else self.router.versions()
        return {**metadata, "versions": versions}

    def api_router(self) -> APIRouter:
        """The routes, to be included before KServe registers its own (the first match wins)."""
        routes = APIRouter(prefix="/v2/models/{model_name}", tags=["V2"])
        routes.add_api_route("", self.metadata, methods=["GET"])
        routes.add_api_route("/infer", self.infer, methods=["POST"], response_model=None)
        routes.add_api_route("/versions/{model_version}", self.metadata, methods=["GET"])
        routes.add_api_route("/versions/{model_version}/ready", self.ready, methods=["GET"])
        routes.add_api_route(
            "/versions/{model_version}/infer",
            self.infer_version,
            methods=["POST"],
            response_model=None,
        )
        return routes


async def validation_error_handler(_: Request, exc: Exception) -> JSONResponse:
    """A body FastAPI cannot parse: 422 with one readable line, in KServe's error shape."""
    errors = exc.errors() if isinstance(exc, RequestValidationError) else []
    parts = []
    for error in errors:
        location = [str(p) for p in error.get("loc", ()) if p != "body"]
        if error.get("type") == "json_invalid":
            detail = error.get("ctx", {}).get("error", "")
            at = f" at character {location[0]}" if location else ""
            parts.append(f"the body is not valid JSON{at}: {detail}")
            break
        if location and location[0] == "bytes":
            continue  # the other member of KServe's Union[InferenceRequest, bytes] body
        field = ".".join(location).removeprefix("InferenceRequest.") or "body"
        parts.append(f"{field}: {error.get('msg')}")
    message = "; ".join(parts[:3]) or str(exc)
    return JSONResponse(status_code=422, content={"error": f"invalid request: {message}"})


async def revision_unavailable_handler(_: Request, exc: Exception) -> JSONResponse:
    """A request routed to a revision that failed to load: 503, and when to try again."""
    retry_after = exc.retry_after_s if isinstance(exc, RevisionUnavailable) else 1.0
    return JSONResponse(
        status_code=503,
        content={"error": str(exc)},
        headers={"Retry-After": str(int(retry_after))},
    )
