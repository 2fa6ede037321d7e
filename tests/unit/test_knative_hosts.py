"""The shadow mirror's URL is a host Knative routes to the canary, as the cluster renders it.

``serving.knative_hosts`` ports knative/networking's ``ExpandedHosts`` (at a7cdca238a0d, the
version knative/serving knative-v1.21.1's go.mod pins, ``pkg/ingress/ingress.go``); the cases
below are upstream's ``TestGetExpandedHosts`` (``pkg/ingress/ingress_test.go``). The rendered
Deployment's env is expanded as the kubelet expands ``$(VAR)`` (kubernetes
``third_party/forked/golang/expansion/expand.go``: a variable defined earlier in the list is
replaced, ``$$`` is a ``$``, an unknown ``$(VAR)`` stays as written).
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

import pytest

from serving.knative_hosts import expanded_hosts, predictor_route, tag_hosts
from serving.payload_counts import PayloadCounter
from serving.payload_sink import Mirror
from tests.conftest import find_object, render_overlay


@pytest.mark.parametrize(
    ("hosts", "want"),
    [
        (
            {"service.name-space.svc.cluster.local"},
            {
                "service.name-space",
                "service.name-space.svc",
                "service.name-space.svc.cluster.local",
            },
        ),
        (
            {"service.1234.svc.cluster.local"},
            {"service.1234.svc", "service.1234.svc.cluster.local"},
        ),
        (
            {"service.1-1.svc.cluster.local"},
            {"service.1-1", "service.1-1.svc", "service.1-1.svc.cluster.local"},
        ),
        (
            {"service." + "s" * 64 + ".svc.cluster.local"},
            {"service." + "s" * 64 + ".svc", "service." + "s" * 64 + ".svc.cluster.local"},
        ),
        ({"foo.bar.example.com"}, {"foo.bar.example.com"}),
        (
            {"foo.default.example.com", "foo.default.svc.cluster.local"},
            {
                "foo.default",
                "foo.default.example.com",
                "foo.default.svc",
                "foo.default.svc.cluster.local",
            },
        ),
    ],
)
def test_expanded_hosts_are_knatives(hosts: set[str], want: set[str]) -> None:
    assert expanded_hosts(hosts) == want


def test_the_latest_tag_of_a_predictor_is_routed_only_with_its_namespace() -> None:
    hosts = tag_hosts(predictor_route("iris"), "kubeflow-user", "latest")
    assert hosts == {
        "latest-iris-predictor.kubeflow-user",
        "latest-iris-predictor.kubeflow-user.svc",
        "latest-iris-predictor.kubeflow-user.svc.cluster.local",
    }
    assert "latest-iris-predictor" not in hosts  # the URL the sink used to build: a 404


def kubelet_expand(value: str, defined: dict[str, str]) -> str:
    """``$(VAR)`` of a variable defined earlier replaced, ``$$`` a ``$``, the rest as written."""

    def one(found: re.Match[str]) -> str:
        if found.group(0) == "$$":
            return "$"
        return defined.get(found.group(1), found.group(0))

    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)", one, value)


def _rendered_env(overlay: str) -> tuple[str, dict[str, str]]:
    deployment = find_object(render_overlay(overlay), "Deployment", "mlops-payload-sink")
    namespace = deployment["metadata"]["namespace"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    fields = {"metadata.namespace": namespace, "status.podIP": "10.244.0.7"}
    env: dict[str, str] = {}
    for variable in container["env"]:
        if "value" in variable:
            env[variable["name"]] = kubelet_expand(variable["value"], env)
        elif "fieldRef" in variable.get("valueFrom", {}):
            env[variable["name"]] = fields[variable["valueFrom"]["fieldRef"]["fieldPath"]]
    return namespace, env


@pytest.mark.parametrize("overlay", ["dev", "prod"])
@pytest.mark.parametrize("model", ["iris", "breast-cancer"])
def test_the_rendered_shadow_url_is_a_host_knative_routes_to_the_canary(
    overlay: str, model: str
) -> None:
    namespace, env = _rendered_env(overlay)
    url = Mirror(PayloadCounter(), env["MLOPS_SHADOW_URL"], 1.0).url(model)
    parts = urlsplit(url)
    assert parts.hostname in tag_hosts(predictor_route(model), namespace, "latest"), url
    assert parts.port is None and parts.scheme == "http"  # the cluster-local gateway's port 80
    assert parts.path == f"/v2/models/{model}/infer"  # sklearnserver's model name is the isvc's
    assert env["POD_NAMESPACE"] == namespace  # the sink refuses other namespaces' events


def test_the_sink_binds_the_pods_address_not_every_interface() -> None:
    _, env = _rendered_env("dev")
    assert env["MLOPS_SINK_HOST"] == "10.244.0.7"


def test_the_inference_service_asks_knative_for_the_latest_tag_the_mirror_posts_to() -> None:
    from serving.inference_service import (
        TAG_ROUTING_ANNOTATION,
        PredictorSettings,
        build_inference_service,
        to_dict,
    )

    built = to_dict(build_inference_service(PredictorSettings("iris", "s3://models/iris/2", 2)))
    # KServe's createKnativeService tags the latest revision `latest` only with this set.
    assert built["metadata"]["annotations"][TAG_ROUTING_ANNOTATION] == "true"
