"""The sink of KServe's payload logger: CloudEvents in, the canary-signal metrics out.

In the cluster the predictor's logger (``spec.predictor.logger``, mode ``all``) posts one
CloudEvent per inference request and one per 200 response to this app (kserve/kserve@v0.20.0
``pkg/logger/handler.go`` and ``worker.go``; what each header holds, and how it is checked, is
in ``serving.payload_events``).

Attribution: every pod of a revision carries KServe's storage URI annotation, which the logger
passes on (``metadataAnnotations``), so each event names the model VERSION that answered; the
agent's ``Ce-Source`` is ``http://localhost:9081/`` on every pod and names no revision. The
sink counts per version, under the ``revision`` label ``v<version>``; the rollout maps versions
to the Knative Revisions in the traffic (``serving.kubernetes_signals``).

Pairing: the agent hands each event to one of 5 workers, each posting on a new connection
(``dispatcher.go``, ``worker.go``), so a response may arrive before its request. Whichever comes
first waits, keyed by ``(model, Ce-Id, storage URI)`` (one id answered by two versions is two pairs,
never one); a second event of the same kind and key is refused (409), as is one for a key
already paired. A request whose response has not come within ``RESPONSE_TIMEOUT_S`` is
counted as failed (``code="5xx"``: the agent logs a response only for status 200); a response
whose request never came is dropped and counted in ``mlops_sink_unpaired_total``.

Bounds: a body over ``MAX_BODY_BYTES`` is refused (413); at most ``MAX_PENDING`` events and
``MAX_PENDING_BYTES`` of bodies wait (beyond, the oldest is counted as above and dropped); at
most ``MAX_MODELS`` models and ``MAX_VERSIONS`` versions per model get series (beyond, a newer
version replaces the oldest one's series; an older one is refused). Everything refused is
counted in ``mlops_sink_refused_total{reason}``.

Shadow agreement: a sample (``SHADOW_SAMPLE``) of the requests answered by a version older than
the newest one seen is re-sent, after the client already has its answer, to the canary's tagged
route (``MLOPS_SHADOW_URL``, a host Knative routes: ``serving.knative_hosts``), and the labels
are compared row by row (``mlops_shadow_requests_total`` / ``mlops_shadow_rows_total``,
labelled with the canary). The mirrored request carries ``SHADOW_HEADER``, which the logger
passes on (``metadataHeaders``) so the canary's own counts skip it. At most
``SHADOW_CONCURRENCY`` mirrors are in flight; beyond, ``dropped``.

Everything is counted in the SAME ``mlops_*`` families the local server exports
(``serving.observability``), so ``serving.canary_analysis.parse_exposition`` reads both. The
pairing is in memory: run ONE process; counters restart with it, which
``canary_analysis.window`` reports as a reset.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from serving import payload_counts
from serving.inference_service import SHADOW_HEADER, STORAGE_URI_ANNOTATION
from serving.payload_counts import DuplicateEvent, Paired, PayloadCounter, TooLarge
from serving.payload_events import REQUEST_TYPE, RESPONSE_TYPE
from serving.payload_references import Reference, load_reference, reference_from_metadata

__all__ = [
    "REQUEST_TYPE",
    "RESPONSE_TYPE",
    "SHADOW_HEADER",
    "STORAGE_URI_ANNOTATION",
    "DuplicateEvent",
    "Paired",
    "PayloadCounter",
    "Reference",
    "create_app",
    "generate_latest",
    "load_reference",
    "reference_from_metadata",
]

SHADOW_SAMPLE = 0.25
SHADOW_CONCURRENCY = 4
SHADOW_TIMEOUT_S = 5.0


class Mirror:
    """Re-sends a sample of stable requests to the canary's tagged route, off the client's path."""

    def __init__(self, counts: PayloadCounter, url_template: str, sample: float) -> None:
        """Mirror with ``url_template`` (``{model}`` is replaced), a ``sample`` share of pairs."""
        import httpx

        self.counts, self.url_template, self.sample = counts, url_template, sample
        self.client = httpx.AsyncClient(timeout=SHADOW_TIMEOUT_S)
        self.in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._rng = random.Random(0)

    def url(self, model: str) -> str:
        """The mirror's URL for ``model`` (a name ``parse_event`` checked as a DNS label)."""
        return self.url_template.replace("{model}", model)

    def offer(self, pair: Paired) -> None:
        """Mirror ``pair`` when an older version answered it and it falls in the sample."""
        canary = self.counts.newest.get(pair.labels[0])
        if canary is None or canary[2] == pair.labels[2] or not pair.labels[2]:
            return  # the canary's own pair, or one no version is known of
        if self._rng.random() >= self.sample:
            return
        if self.in_flight >= SHADOW_CONCURRENCY:
            self.counts.shadow.labels(*canary, "dropped").inc()
            return
        self.in_flight += 1
        task = asyncio.get_running_loop().create_task(self._send(canary, pair))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, canary: tuple[str, str, str], pair: Paired) -> None:
        import httpx

        answer: Any = None
        try:
            sent = await self.client.post(
                self.url(pair.labels[0]),
                content=pair.request,
                headers={"Content-Type": "application/json", SHADOW_HEADER: "1"},
            )
            if sent.status_code == 200:
                answer = sent.json()
        except (httpx.HTTPError, ValueError):
            answer = None
        finally:
            self.in_flight -= 1
        self.counts.record_shadow(canary, pair.predicted, answer)


async def _read_body(request: Request) -> bytes:
    """The body, refused (``TooLarge``) as soon as it passes ``MAX_BODY_BYTES``."""
    limit = payload_counts.MAX_BODY_BYTES
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise TooLarge(f"the body has more than {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise TooLarge(f"the body has more than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(
    counter: PayloadCounter | None = None,
    shadow_url: str | None = None,
    shadow_sample: float = SHADOW_SAMPLE,
) -> Starlette:
    """The sink: ``POST /`` takes a CloudEvent, ``GET /metrics`` serves the counts.

    Args:
        counter: Where the counts go (a new one by default).
        shadow_url: The canary's tagged route, ``{model}`` replaced by the model's name
            (``MLOPS_SHADOW_URL``); None: no mirroring.
        shadow_sample: Share of the stable version's answered requests mirrored.
    """
    counts = counter or PayloadCounter()
    mirror = Mirror(counts, shadow_url, shadow_sample) if shadow_url else None

    async def event(request: Request) -> Response:
        headers = {k.lower(): v for k, v in request.headers.items()}
        try:
            checked = counts.parse(headers, 0)
            body = await _read_body(request)
            if not checked.shadow:  # a store read: in a thread, never in this loop
                await counts.references.ensure(checked.storage_uri)
            pair = counts.accept(checked, body)
        except TooLarge as err:
            counts.refused.labels("too_large").inc()
            return JSONResponse({"error": str(err)}, status_code=413)
        except DuplicateEvent as err:
            return JSONResponse({"error": str(err)}, status_code=409)
        except ValueError as err:
            return JSONResponse({"error": str(err)}, status_code=400)
        except ClientDisconnect:
            return Response(status_code=400)
        if pair is not None and mirror is not None:
            mirror.offer(pair)
        return Response(status_code=202)

    async def metrics(_: Request) -> Response:
        counts.expire()
        return Response(generate_latest(counts.registry), media_type=CONTENT_TYPE_LATEST)

    async def health(_: Request) -> Response:
        return Response("ok")

    return Starlette(
        routes=[
            Route("/", event, methods=["POST"]),
            Route("/metrics", metrics, methods=["GET"]),
            Route("/healthz", health, methods=["GET"]),
        ]
    )


def main(argv: list[str] | None = None) -> None:
    """Run the sink with uvicorn, one process.

    Options (each with an environment default): ``--host`` (``MLOPS_SINK_HOST``, else
    ``127.0.0.1``; the Deployment binds the pod's IP), ``--port`` (``PORT``, else 8000). The
    environment also gives ``MLOPS_SHADOW_URL`` (the mirror's route, none: no mirroring),
    ``POD_NAMESPACE`` (the only ``Ce-Namespace`` accepted) and ``MLOPS_SINK_STORE_URI`` (the
    only store references are read from).
    """
    import argparse
    import os

    import uvicorn

    from serving.payload_references import store_reader

    parser = argparse.ArgumentParser(prog="python -m serving.payload_sink")
    parser.add_argument("--host", default=os.environ.get("MLOPS_SINK_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
    options = parser.parse_args(argv)
    counter = PayloadCounter(
        references=store_reader(os.environ.get("MLOPS_SINK_STORE_URI") or None),
        namespace=os.environ.get("POD_NAMESPACE") or None,
    )
    app = create_app(counter, shadow_url=os.environ.get("MLOPS_SHADOW_URL") or None)
    uvicorn.run(app, host=options.host, port=options.port, log_level="warning")


if __name__ == "__main__":
    main()
