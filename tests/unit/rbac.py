"""Kubernetes RBAC over rendered manifests, answered as ``kubectl auth can-i --as=USER`` would.

A port of the authorizer's rules, not of its code:

- kubernetes/kubernetes ``plugin/pkg/auth/authorizer/rbac/rbac.go``: a request is allowed when
  a rule of a Role bound to the user in the request's namespace (RoleBinding) or of a
  ClusterRole bound anywhere (ClusterRoleBinding) allows it (``RuleAllows``); a ServiceAccount
  subject is the user ``system:serviceaccount:<namespace>:<name>`` with the groups
  ``system:serviceaccounts``, ``system:serviceaccounts:<namespace>``, ``system:authenticated``
  (``appliesToUser``, ``pkg/serviceaccount/util.go``);
- ``pkg/apis/rbac/helpers.go``: ``VerbMatches``, ``APIGroupMatches``, ``ResourceMatches``
  (``*``, ``resource/subresource``, ``*/subresource``) and ``ResourceNameMatches`` (no
  ``resourceNames``: any name);
- k8s.io/apiserver ``pkg/endpoints/request/requestinfo.go`` (``RequestInfoFactory``): how an
  HTTP request becomes (verb, API group, resource, subresource, name, namespace);
- the one default binding the code relies on: ClusterRole ``system:basic-user`` (create
  ``selfsubjectaccessreviews``, which ``kubectl auth can-i`` posts) for ``system:authenticated``
  (``plugin/pkg/auth/authorizer/rbac/bootstrappolicy/policy.go``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

BASIC_USER = {
    "kind": "ClusterRole",
    "metadata": {"name": "system:basic-user"},
    "rules": [
        {
            "apiGroups": ["authorization.k8s.io"],
            "resources": ["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
            "verbs": ["create"],
        }
    ],
}
BASIC_USER_BINDING = {
    "kind": "ClusterRoleBinding",
    "metadata": {"name": "system:basic-user"},
    "roleRef": {"kind": "ClusterRole", "name": "system:basic-user"},
    "subjects": [{"kind": "Group", "name": "system:authenticated"}],
}


@dataclass(frozen=True)
class Request:
    """The attributes RBAC decides on; ``name`` None: any (or no) name, as can-i without NAME."""

    verb: str
    group: str
    resource: str
    namespace: str | None
    name: str | None = None
    subresource: str = ""

    def can_i(self) -> list[str]:
        """The ``kubectl auth can-i`` arguments that ask for this request.

        ``TYPE/NAME`` names an object (``pods/x`` is the pod ``x``), so a subresource goes in
        ``--subresource`` (kubectl ``pkg/cmd/auth/cani.go``).
        """
        resource = f"{self.resource}.{self.group}" if self.group else self.resource
        args = [self.verb, resource + (f"/{self.name}" if self.name else "")]
        if self.subresource:
            args.append(f"--subresource={self.subresource}")
        # No namespace: cluster-wide (-A), else kubectl asks in the kubeconfig's namespace.
        return args + (["-n", self.namespace] if self.namespace else ["--all-namespaces"])


def user_of_service_account(namespace: str, name: str) -> tuple[str, set[str]]:
    """The user name and groups a ServiceAccount's token authenticates as."""
    groups = {"system:serviceaccounts", f"system:serviceaccounts:{namespace}"}
    return f"system:serviceaccount:{namespace}:{name}", groups | {"system:authenticated"}


def _applies_to(subject: dict[str, Any], user: str, groups: set[str]) -> bool:
    if subject["kind"] == "ServiceAccount":
        return user == f"system:serviceaccount:{subject['namespace']}:{subject['name']}"
    if subject["kind"] == "User":
        return bool(user == subject["name"])
    return subject["kind"] == "Group" and subject["name"] in groups


def _rule_allows(rule: dict[str, Any], request: Request) -> bool:
    verbs, groups = rule.get("verbs", []), rule.get("apiGroups", [])
    if "*" not in verbs and request.verb not in verbs:
        return False
    if "*" not in groups and request.group not in groups:
        return False
    combined = (
        f"{request.resource}/{request.subresource}" if request.subresource else (request.resource)
    )
    resources = rule.get("resources", [])
    if not any(
        r in ("*", combined) or (request.subresource and r == f"*/{request.subresource}")
        for r in resources
    ):
        return False
    names = rule.get("resourceNames") or []
    return not names or request.name in names


def allowed(objects: list[dict[str, Any]], user: str, groups: set[str], request: Request) -> bool:
    """Whether ``user`` (with ``groups``) may make ``request``, by the RBAC in ``objects``."""
    everything = [*objects, BASIC_USER, BASIC_USER_BINDING]

    def role(kind: str, name: str, namespace: str | None) -> dict[str, Any] | None:
        return next(
            (
                o
                for o in everything
                if o["kind"] == kind
                and o["metadata"]["name"] == name
                and (kind == "ClusterRole" or o["metadata"].get("namespace") == namespace)
            ),
            None,
        )

    for binding in everything:
        if binding["kind"] == "RoleBinding":
            if binding["metadata"].get("namespace") != request.namespace:
                continue
        elif binding["kind"] != "ClusterRoleBinding":
            continue
        if not any(_applies_to(s, user, groups) for s in binding.get("subjects") or []):
            continue
        ref = binding["roleRef"]
        found = role(ref["kind"], ref["name"], binding["metadata"].get("namespace"))
        if found and any(_rule_allows(rule, request) for rule in found.get("rules") or []):
            return True
    return False


def request_of(method: str, path: str, query: str = "") -> Request:
    """The RBAC attributes of an HTTP request to the API server (``RequestInfoFactory``)."""
    parts = [p for p in path.strip("/").split("/") if p]
    if parts[:1] == ["api"]:
        group, rest = "", parts[2:]
    elif parts[:1] == ["apis"]:
        group, rest = parts[1], parts[3:]
    else:
        raise ValueError(f"{path}: not a resource request")
    namespace = None
    if rest[:1] == ["namespaces"] and len(rest) > 2:
        namespace, rest = rest[1], rest[2:]
    elif rest[:1] == ["namespaces"] and len(rest) == 2:  # the namespace object itself
        namespace = rest[1]
    resource = rest[0]
    name = rest[1] if len(rest) > 1 else None
    subresource = rest[2] if len(rest) > 2 else ""
    watch = parse_qs(query).get("watch", ["false"])[0] in ("true", "1")
    verb = {
        "GET": "watch" if watch else ("get" if name else "list"),
        "POST": "create",
        "PUT": "update",
        "PATCH": "patch",
        "DELETE": "delete" if name else "deletecollection",
    }[method]
    return Request(verb, group, resource, namespace, name, subresource)
