"""Ansible inventory plugin: the nodes an orchestrify controller knows, as hosts."""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.error import HTTPError, URLError

from ansible.errors import AnsibleParserError
from ansible.module_utils.urls import open_url
from ansible.plugins.inventory import BaseInventoryPlugin, Constructable

DOCUMENTATION = r"""
name: orchestrify
short_description: Worker hosts from an orchestrify controller
description:
  - Lists the nodes registered with an orchestrify controller (C(GET /v1/nodes)) as hosts
    of the group C(workers), each also in a group per node state (C(state_ready),
    C(state_notready), C(state_draining)...), with C(ansible_host) set to the node's
    address.
  - The source file's name must end in C(orchestrify.yml) or C(orchestrify.yaml).
extends_documentation_fragment:
  - constructed
options:
  plugin:
    description: Marks the file as a source for this plugin.
    required: true
    choices: ["orchestrify"]
  controller_url:
    description:
      - Base URL of the controller's REST API, or those of several controllers of one
        store, as a YAML list or as one string C(URL1,URL2) (so C(ORCHESTRIFY_URL) takes
        the same list as the CLI). They are asked in order; the next one is asked only
        when one cannot be reached or answers 503, never after another answer.
    type: list
    elements: str
    required: true
    env:
      - name: ORCHESTRIFY_URL
  token:
    description:
      - API token, sent as a Bearer token in the C(Authorization) header. Prefer the
        environment variable to writing it into the file.
    type: str
    env:
      - name: ORCHESTRIFY_TOKEN
  group:
    description: Group that every node goes into.
    type: str
    default: workers
  timeout:
    description: Seconds to wait for the controller.
    type: int
    default: 10
  validate_certs:
    description: Check the controller's TLS certificate.
    type: bool
    default: true
  ca_path:
    description:
      - PEM file of the CA that signed the controller's certificate (an https URL), e.g.
        the fleet's CA the roles install as C(/etc/orchestrify/tls/ca.crt) with
        C(orchestrify_tls). Unset, the system's trust store.
    type: path
    env:
      - name: ORCHESTRIFY_CA
"""

EXAMPLES = r"""
# inventory/orchestrify.yml; ORCHESTRIFY_TOKEN in the environment
plugin: orchestrify
controller_url: http://10.0.0.10:18080
keyed_groups:
  - key: orchestrify_node_state
    prefix: state

---
# Several controllers of one store: the first that answers lists the nodes.
plugin: orchestrify
controller_url:
  - https://10.0.0.10:18080
  - https://10.0.0.11:18080
ca_path: /etc/orchestrify/tls/ca.crt
keyed_groups:
  - key: orchestrify_node_state
    prefix: state
"""


class _Unreachable(Exception):
    """A controller that cannot answer now: the next one of the list is asked."""


def _group_safe(value: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", value).lower()


class InventoryModule(BaseInventoryPlugin, Constructable):
    NAME = "orchestrify"

    def verify_file(self, path: str) -> bool:
        return super().verify_file(path) and path.endswith(("orchestrify.yml", "orchestrify.yaml"))

    def _controller_urls(self) -> list[str]:
        """The configured URLs, in order: a list, or strings holding ``URL1,URL2``."""
        value = self.get_option("controller_url")
        items = value if isinstance(value, list) else [value]
        urls = [u.strip().rstrip("/") for item in items for u in str(item).split(",")]
        urls = [u for u in urls if u]
        for url in urls:
            if not re.match(r"^https?://[^/\s]", url):
                raise AnsibleParserError(
                    f"orchestrify controller_url {url!r} is not an http(s) URL "
                    "such as http://10.0.0.10:18080"
                )
        if not urls:
            raise AnsibleParserError("orchestrify controller_url is empty")
        return urls

    def _fetch_nodes(self) -> list[dict[str, Any]]:
        """GET /v1/nodes from the first controller that answers. Only a controller that
        cannot be reached or answers 503 passes the question to the next one; any other
        answer (a 401, a 404) is the answer: another controller of the store would give
        the same."""
        unreachable: list[str] = []
        for base in self._controller_urls():
            url = base + "/v1/nodes"
            try:
                return self._fetch_nodes_from(url)
            except _Unreachable as exc:
                unreachable.append(str(exc))
        raise AnsibleParserError("; ".join(unreachable))

    def _fetch_nodes_from(self, url: str) -> list[dict[str, Any]]:
        headers = {"Accept": "application/json"}
        token = self.get_option("token")
        if token:
            headers["Authorization"] = f"Bearer {token}"
        try:
            response = open_url(
                url,
                headers=headers,
                timeout=self.get_option("timeout"),
                validate_certs=self.get_option("validate_certs"),
                ca_path=self.get_option("ca_path"),
            )
            payload = json.loads(response.read())
        except HTTPError as exc:
            if exc.code == 503:
                raise _Unreachable(f"orchestrify controller {url} answered 503") from exc
            raise AnsibleParserError(f"orchestrify controller {url} answered {exc.code}") from exc
        except (URLError, OSError) as exc:
            raise _Unreachable(f"orchestrify controller {url} unreachable: {exc}") from exc
        except ValueError as exc:
            raise AnsibleParserError(f"orchestrify controller {url} sent invalid JSON") from exc
        if not isinstance(payload, list):
            raise AnsibleParserError(f"{url} did not return a JSON list of nodes")
        return payload

    def parse(self, inventory: Any, loader: Any, path: str, cache: bool = True) -> None:
        super().parse(inventory, loader, path, cache)
        self._read_config_data(path)
        group = self.inventory.add_group(self.get_option("group"))
        strict = self.get_option("strict")
        for node in self._fetch_nodes():
            if not isinstance(node, dict) or not node.get("name"):
                continue
            host = self.inventory.add_host(str(node["name"]), group=group)
            address = node.get("address")
            if address:
                self.inventory.set_variable(host, "ansible_host", str(address))
            hostvars = {
                "orchestrify_node_id": node.get("id"),
                "orchestrify_node_address": address,
                "orchestrify_node_state": node.get("state"),
            }
            for key, value in hostvars.items():
                self.inventory.set_variable(host, key, value)
            if node.get("state"):
                state_group = self.inventory.add_group(f"state_{_group_safe(str(node['state']))}")
                self.inventory.add_child(state_group, host)
            # compose / groups / keyed_groups from the source file (the `constructed` options)
            self._set_composite_vars(self.get_option("compose"), hostvars, host, strict=strict)
            self._add_host_to_composed_groups(
                self.get_option("groups"), hostvars, host, strict=strict
            )
            self._add_host_to_keyed_groups(
                self.get_option("keyed_groups"), hostvars, host, strict=strict
            )
