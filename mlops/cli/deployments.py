"""``mlops get``, ``mlops promote`` and ``mlops rollback``: the InferenceService and its canary."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import click

from mlops.cli.options import model_name_option
from mlops.settings import default_tracking_uri, state_dir

TARGET_OPTION = click.option(
    "--target",
    type=click.Choice(["local", "kubernetes"]),
    default="local",
    show_default=True,
    help="The local runtime, or the cluster (kubeconfig).",
)
NAMESPACE_OPTION = click.option(
    "-n",
    "--namespace",
    default="kubeflow-user",
    show_default=True,
    help="Namespace (kubernetes target).",
)
COLUMNS = (
    "NAME",
    "URL",
    "READY",
    "PREV",
    "LATEST",
    "PREVROLLEDOUTREVISION",
    "LATESTREADYREVISION",
    "AGE",
)


def _read(name: str, target: str, namespace: str) -> dict[str, Any]:
    if target == "local":
        from serving import local_controller

        return dict(local_controller.read_state(name, state_dir())["inferenceService"])
    from serving import kubernetes_target

    return kubernetes_target.get(name, namespace)


def _age(timestamp: str | None) -> str:
    if not timestamp:
        return ""
    created = datetime.strptime(timestamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    seconds = int((datetime.now(UTC) - created).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def isvc_row(isvc: dict[str, Any]) -> tuple[str, ...]:
    """The columns ``kubectl get isvc`` prints, read from the same status fields."""
    status = isvc.get("status", {})
    predictor = status.get("components", {}).get("predictor", {})
    traffic = predictor.get("traffic", [])
    prev: dict[str, Any] = next((t for t in traffic if t.get("tag") == "prev"), {})
    latest: dict[str, Any] = next((t for t in traffic if t.get("latestRevision")), {})
    ready = next((c["status"] for c in status.get("conditions", []) if c["type"] == "Ready"), "")
    return (
        isvc["metadata"]["name"],
        str(status.get("url", "")),
        ready,
        str(prev.get("percent", "")),
        str(latest.get("percent", "")),
        str(prev.get("revisionName", "")),
        str(predictor.get("latestReadyRevision", "")),
        _age(isvc["metadata"].get("creationTimestamp")),
    )


def format_table(rows: list[tuple[str, ...]]) -> str:
    """Left-aligned columns separated by three spaces, as kubectl prints them."""
    table = [COLUMNS, *rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(COLUMNS))]
    return "\n".join(
        "   ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in table
    )


@click.command()
@model_name_option(positional=True)
@click.option("-o", "--output", type=click.Choice(["table", "yaml", "json"]), default="table")
@TARGET_OPTION
@NAMESPACE_OPTION
def get(model_name: str, output: str, target: str, namespace: str) -> None:
    """Show the InferenceService NAME, as `kubectl get isvc` does (-o yaml for all of it)."""
    import json

    import yaml

    isvc = _read(model_name, target, namespace)
    if output == "yaml":
        click.echo(yaml.safe_dump(isvc, sort_keys=False), nl=False)
    elif output == "json":
        click.echo(json.dumps(isvc, indent=2))
    else:
        click.echo(format_table([isvc_row(isvc)]))


def _set_traffic(name: str, percent: int | None, target: str, namespace: str) -> None:
    """Promote or roll back by hand; the decided version's outcome tag says so.

    Refused, before anything changes, when a model serves but the registry is missing or
    empty (the aliases would silently land in a new, empty one).
    """
    from mlops.cli.rollout import check_registry
    from serving.deploy import deployed_versions, set_canary_traffic

    tracking_uri = default_tracking_uri()
    if target == "local":
        from serving import local_controller

        # A change the controller refuses (a failed revision) says so first.
        local_controller.check_change(name, percent, state_dir())
    serving = deployed_versions(name, target, state_dir=state_dir(), namespace=namespace)
    if serving is not None:
        found = [v for v in (serving.stable, serving.canary) if v]
        plural = "s" if len(found) > 1 else ""
        check_registry(tracking_uri, name, f"version{plural} {' and '.join(found) or '?'}")
    applied = set_canary_traffic(
        name, percent, target, state_dir=state_dir(), namespace=namespace, tracking_uri=tracking_uri
    )
    _tag_decision(tracking_uri, name, percent, applied, target)
    click.echo(format_table([isvc_row(applied)]))


def _tag_decision(
    tracking_uri: str, name: str, percent: int | None, isvc: dict[str, Any], target: str
) -> None:
    """Tag the latest revision's version ``promoted`` or ``rolled-back`` (by hand)."""
    from mlops import registry
    from serving.deploy import revision_versions

    traffic = isvc.get("status", {}).get("components", {}).get("predictor", {}).get("traffic", [])
    latest = next((t for t in traffic if t.get("latestRevision")), None)
    if latest is None:
        return
    served = int(latest.get("percent") or 0)
    if (percent is None) != (served == 100) or (percent == 0 and served != 0):
        return  # nothing was decided about the latest revision (it is the only one)
    version = revision_versions(isvc, target, state_dir()).get(str(latest["revisionName"]))
    if not version:
        return
    command = "promote" if percent is None else "rollback"
    registry.tag_version(
        tracking_uri,
        name,
        version,
        {
            registry.OUTCOME_TAG: "promoted" if percent is None else registry.ROLLED_BACK,
            "rollout.reason": f"by hand: `mlops {command}`",
            "rollout.at": datetime.now(UTC).isoformat(timespec="seconds"),
        },
    )


@click.command()
@model_name_option(positional=True)
@TARGET_OPTION
@NAMESPACE_OPTION
def promote(model_name: str, target: str, namespace: str) -> None:
    """Give the latest revision of NAME all traffic (removes canaryTrafficPercent)."""
    _set_traffic(model_name, None, target, namespace)


@click.command()
@model_name_option(positional=True)
@TARGET_OPTION
@NAMESPACE_OPTION
def rollback(model_name: str, target: str, namespace: str) -> None:
    """Send all traffic of NAME back to the previously rolled-out revision (canary 0%)."""
    _set_traffic(model_name, 0, target, namespace)


COMMANDS = [get, promote, rollback]
