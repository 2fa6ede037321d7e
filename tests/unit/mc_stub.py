"""A stand-in for ``mc`` (MinIO client) as the bucket Job's image runs it, for its script's test.

Only the subcommands the Job's script uses, with the exit codes and idempotence of minio/mc at
RELEASE.2025-08-13T08-35-41Z (the Job's image):

- ``alias set ALIAS URL AK SK`` (cmd/alias-set.go) fails (exit 1) while the server does not
  answer, else records the alias under ``$HOME/.mc`` (mc's config dir).
- ``mb [--ignore-existing] ALIAS/BUCKET...`` (cmd/mb-main.go): an existing bucket is an error
  (exit 1 after the other buckets) unless ``--ignore-existing``/``-p``.
- ``admin user add ALIAS AK SK`` (cmd/admin-user-add.go): madmin ``AddUser`` sets the user,
  existing or not; ``admin policy create ALIAS NAME FILE`` (cmd/admin-policy-create.go) reads
  FILE (exit 1 when unreadable) and ``AddCannedPolicy`` sets the policy, existing or not.
- ``admin policy attach ALIAS POLICY --user U`` (cmd/admin-policy-attach.go): an unknown user or
  policy exits 1 ("Unable to make user/group policy association"); an attached one exits 0, as
  mc ignores the server's ``XMinioAdminPolicyChangeAlreadyApplied``.
- Anything else exits 1 here (the real mc has more; the script must not need them).

The "server" is a JSON file (``MC_STUB_STATE``), so a rerun sees what the first run made.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def _fatal(message: str) -> int:
    print(f"mc: <ERROR> {message}", file=sys.stderr)
    return 1


def _alias(state: dict, url: str) -> dict | None:
    config = Path(os.environ["HOME"]) / ".mc" / "config.json"
    if not config.exists():
        return None
    return json.loads(config.read_text())["aliases"].get(url)


def main(argv: list[str]) -> int:  # noqa: C901, PLR0911, PLR0912 - one branch per subcommand
    path = Path(os.environ["MC_STUB_STATE"])
    state = json.loads(path.read_text())
    state["calls"].append(argv)
    try:
        return _run(state, argv)
    finally:
        path.write_text(json.dumps(state))


def _run(state: dict, argv: list[str]) -> int:  # noqa: C901, PLR0911, PLR0912
    if argv[:2] == ["alias", "set"] and len(argv) == 6:
        alias, _url, access, secret = argv[2:]
        if state["unreachable_attempts"] > 0:
            state["unreachable_attempts"] -= 1
            return _fatal("Unable to initialize new alias from the provided credentials.")
        if (access, secret) != tuple(state["root"]):
            return _fatal("Unable to initialize new alias from the provided credentials.")
        config = Path(os.environ["HOME"]) / ".mc" / "config.json"
        config.parent.mkdir(parents=True, exist_ok=True)  # fails on a read-only HOME, as mc's
        config.write_text(json.dumps({"aliases": {alias: {"accessKey": access}}}))
        return 0
    words = [w for w in argv if not w.startswith("-")]
    targets = words[1:]
    if argv[:1] == ["mb"]:
        ignore = "--ignore-existing" in argv or "-p" in argv
        failed = False
        for target in targets:
            alias, _, bucket = target.partition("/")
            if _alias(state, alias) is None:
                return _fatal(f"Unable to make bucket `{target}`. alias {alias!r} not found")
            if bucket in state["buckets"] and not ignore:
                print(f"mc: <ERROR> Unable to make bucket `{target}`. exists", file=sys.stderr)
                failed = True
                continue
            if bucket not in state["buckets"]:
                state["buckets"].append(bucket)
        return 1 if failed else 0
    if argv[:1] != ["admin"] or len(argv) < 4 or _alias(state, argv[3]) is None:
        return _fatal(f"the stub has no `mc {' '.join(argv[:3])}` (or the alias is unset)")
    if argv[1:3] == ["user", "add"] and len(argv) == 6:
        state["users"][argv[4]] = {
            "secret": argv[5],
            "policies": state["users"].get(argv[4], {}).get("policies", []),
        }
        return 0
    if argv[1:3] == ["policy", "create"] and len(argv) == 6:
        try:
            document = json.loads(Path(argv[5]).read_text())
        except (OSError, ValueError) as err:
            return _fatal(f"Unable to get policy: {err}")
        state["policies"][argv[4]] = document
        return 0
    if argv[1:3] == ["policy", "attach"] and "--user" in argv:
        user = argv[argv.index("--user") + 1]
        policies = [w for w in argv[4:] if w not in ("--user", user)]
        if user not in state["users"] or any(
            p not in state["policies"] and p not in state["builtin_policies"] for p in policies
        ):
            return _fatal("Unable to make user/group policy association")
        attached = state["users"][user]["policies"]
        attached += [p for p in policies if p not in attached]  # attached again: still exit 0
        return 0
    return _fatal(f"the stub has no `mc {' '.join(argv[:3])}`")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
