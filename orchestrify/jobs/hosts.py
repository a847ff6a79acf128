"""Which hosts a job may touch, so that jobs on the same host never run at once.

The inventory is read with ``ansible-inventory --list`` through ansible-runner's
``get_inventory``; the limit pattern is then resolved here with Ansible's rules (plain
parts are a union, ``&`` parts intersect, ``!`` parts exclude). When a pattern cannot be
resolved exactly (ranges, an unreadable inventory) the answer is :data:`EVERY_HOST`,
which overlaps every job: waiting too long is safe, running two jobs on one host is not.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import re
import tempfile
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from orchestrify.errors import PlaybookFailed
from orchestrify.jobs.handoff import job_environment

log = logging.getLogger(__name__)

EVERY_HOST = "*"
# Ansible splits on commas when there is one, else on ':' (outside host[1:3] ranges).
_COLON_SPLIT = re.compile(r":(?![^\[]*\])")


class Inventory:
    """Host and group names of an inventory; groups are expanded to their hosts."""

    def __init__(self, groups: Mapping[str, Collection[str]], hosts: Collection[str]) -> None:
        self.groups = {name: frozenset(members) for name, members in groups.items()}
        self.hosts = frozenset(hosts)

    @classmethod
    def from_listing(cls, listing: Mapping[str, Any]) -> Inventory:
        """Build from ``ansible-inventory --list`` JSON."""
        direct: dict[str, set[str]] = {}
        children: dict[str, list[str]] = {}
        hosts: set[str] = set(listing.get("_meta", {}).get("hostvars", {}))
        for name, body in listing.items():
            if name == "_meta" or not isinstance(body, dict):
                continue
            direct[name] = set(body.get("hosts", []))
            children[name] = list(body.get("children", []))
            hosts |= direct[name]

        def expand(name: str, seen: frozenset[str]) -> set[str]:
            out = set(direct.get(name, ()))
            for child in children.get(name, ()):
                if child not in seen:
                    out |= expand(child, seen | {child})
            return out

        groups = {name: expand(name, frozenset({name})) for name in direct}
        groups["all"] = set(hosts)
        return cls(groups, hosts)

    def resolve(self, limit: str | None) -> frozenset[str]:
        """Hosts matched by ``limit``; ``{EVERY_HOST}`` when not exactly knowable."""
        if limit is None:
            return frozenset({EVERY_HOST})
        pieces = limit.split(",") if "," in limit else _COLON_SPLIT.split(limit)
        parts = [p.strip() for p in pieces if p.strip()]
        if not parts:
            return frozenset({EVERY_HOST})
        if parts[0][0] in "!&":
            parts.insert(0, "all")
        union: set[str] = set()
        intersections: list[frozenset[str]] = []
        exclusions: set[str] = set()
        for part in parts:
            prefix, name = (part[0], part[1:]) if part[0] in "!&" else ("", part)
            matched = self._match(name)
            if matched is None:
                if prefix == "!":
                    continue  # excluding an unknown set can only make the job larger
                return frozenset({EVERY_HOST})
            if prefix == "&":
                intersections.append(matched)
            elif prefix == "!":
                exclusions |= matched
            else:
                union |= matched
        for group in intersections:
            union &= group
        return frozenset(union - exclusions)

    def _match(self, name: str) -> frozenset[str] | None:
        if "[" in name:
            return None  # host ranges: resolving them exactly is Ansible's business
        if name in ("all", "*"):
            return self.hosts
        if "*" in name:
            out: set[str] = {h for h in self.hosts if fnmatch.fnmatchcase(h, name)}
            for group, members in self.groups.items():
                if fnmatch.fnmatchcase(group, name):
                    out |= members
            return frozenset(out)
        if name in self.groups:
            return self.groups[name]
        # A host outside the inventory (Ansible warns and skips it). Keep the name: two
        # jobs naming it still serialize.
        return frozenset({name})


def read_inventory(inventory: Path) -> Inventory:
    """Run ``ansible-inventory --list`` through ansible-runner; PlaybookFailed on error.

    This is ``ansible_runner.get_inventory`` with the environment cut down as for a job
    (a dynamic inventory is a program too, and must not see the controller's tokens).
    """
    from ansible_runner import Runner
    from ansible_runner.config.inventory import InventoryConfig
    from ansible_runner.utils import sanitize_json_response

    with tempfile.TemporaryDirectory(prefix="orchestrify-inventory-") as tmp:
        try:
            config = InventoryConfig(private_data_dir=tmp, quiet=True)
            config.prepare_inventory_command(
                action="list", inventories=[str(inventory)], response_format="json"
            )
            config.env = job_environment(config.env)
            runner = Runner(config)
            runner.run()
            with runner.stdout as stdout, runner.stderr as stderr:
                text, err = stdout.read(), stderr.read()
            out = json.loads(sanitize_json_response(text)) if text else text
        except Exception as exc:  # ansible-runner raises its own and plain errors alike
            raise PlaybookFailed(f"cannot read the inventory {inventory}: {exc}") from exc
    if not isinstance(out, dict):
        raise PlaybookFailed(f"cannot read the inventory {inventory}: {err or out}".strip())
    return Inventory.from_listing(out)


def overlaps(a: Collection[str], b: Collection[str]) -> bool:
    if EVERY_HOST in a or EVERY_HOST in b:
        return True
    return not set(a).isdisjoint(b)
