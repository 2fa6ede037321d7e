"""The cluster-local hosts Knative routes to a tagged route, and the DNS label checks of names.

A request reaches a Knative revision through the cluster-local gateway only when its ``Host``
is one of the Ingress rule's hosts; any other host gets a 404. For a route's tag (KServe's
``serving.kserve.io/enable-tag-routing`` tags the latest revision ``latest`` and the previously
rolled-out one ``prev``, kserve/kserve@v0.20.0
``pkg/controller/v1beta1/inferenceservice/reconcilers/knative/ksvc_reconciler.go``) those hosts
are, as knative/serving@knative-v1.21.1 builds them:

- ``HostnameFromTemplate`` (``pkg/reconciler/route/domains/domains.go``) with the default tag
  template ``{{.Tag}}-{{.Name}}`` (knative/networking ``pkg/config/config.go``);
- ``DomainNameFromTemplate`` with the default domain template
  ``{{.Name}}.{{.Namespace}}.{{.Domain}}`` and, for cluster-local visibility, the domain
  ``svc.<cluster domain>`` (``pkg/reconciler/route/config/domain.go``,
  ``LookupDomainForLabels``);
- ``ExpandedHosts`` (knative/networking@a7cdca238a0d, the version Serving 1.21.1's go.mod
  pins, ``pkg/ingress/ingress.go``): the host and its short forms without ``.<cluster domain>``
  and without ``.svc.<cluster domain>``, each kept only when its last label is not all digits
  and at most 63 characters (``isValidTopLevelDomain``).

The Knative route of an InferenceService's predictor is its Knative Service, ``<name>-predictor``
(kserve ``pkg/constants/constants.go``, ``PredictorServiceName``).
"""

from __future__ import annotations

import re

CLUSTER_DOMAIN = "cluster.local"
# A DNS-1035 label (Kubernetes' IsDNS1035Label): what an InferenceService's name must be.
_DNS_1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
# A DNS-1123 label (IsDNS1123Label): what a namespace's name must be.
_DNS_1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
MAX_LABEL = 63


def is_dns_1035_label(value: str) -> bool:
    """Whether ``value`` is a DNS-1035 label (lower-case letter first, at most 63 characters)."""
    return len(value) <= MAX_LABEL and bool(_DNS_1035_LABEL.match(value))


def is_dns_1123_label(value: str) -> bool:
    """Whether ``value`` is a DNS-1123 label (a namespace name), at most 63 characters."""
    return len(value) <= MAX_LABEL and bool(_DNS_1123_LABEL.match(value))


def _valid_top_level_domain(domain: str) -> bool:
    tld = domain.split(".")[-1]
    return len(tld) <= MAX_LABEL and any(c == "-" or c > "9" for c in tld)


def expanded_hosts(hosts: set[str], cluster_domain: str = CLUSTER_DOMAIN) -> set[str]:
    """knative/networking's ``ExpandedHosts``: the hosts and their cluster-local short forms."""
    suffixes = ("", "." + cluster_domain, ".svc." + cluster_domain)
    expanded: set[str] = set()
    for host in hosts:
        for suffix in suffixes:
            trimmed = host.removesuffix(suffix) if suffix else host
            if (suffix == "" or len(trimmed) < len(host)) and _valid_top_level_domain(trimmed):
                expanded.add(trimmed)
    return expanded


def tag_hosts(
    route: str, namespace: str, tag: str, cluster_domain: str = CLUSTER_DOMAIN
) -> set[str]:
    """The cluster-local hosts Knative routes to ``tag`` of the route ``route``."""
    return expanded_hosts({f"{tag}-{route}.{namespace}.svc.{cluster_domain}"}, cluster_domain)


def predictor_route(model: str) -> str:
    """The Knative route (Service) of the InferenceService ``model``'s predictor."""
    return f"{model}-predictor"
