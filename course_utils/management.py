"""A small typed client for the RabbitMQ management HTTP API, scoped to one vhost.

Only what the course needs: overview, queues, exchanges, bindings, connections, vhosts, users,
permissions and message peeking. Every call has a timeout; errors become pt-BR CourseErrors.
"""
from __future__ import annotations

import base64
import time
from typing import Any, Iterable
from urllib.parse import quote

import requests

from .errors import BrokerAuthError, CourseError


class ManagementError(CourseError):
    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


def _q(name: str) -> str:
    return quote(name, safe="")


class Management:
    """HTTP client for the management API. `vhost` is the default vhost of the per-vhost calls."""

    def __init__(self, base_url: str, username: str, password: str, vhost: str = "/",
                 timeout: float = 10.0):
        self.base_url = base_url.rstrip("/")
        self.username = username
        self.vhost = vhost
        self.timeout = timeout
        self._session = requests.Session()
        self._session.auth = (username, password)
        self._session.headers["content-type"] = "application/json"

    def __repr__(self) -> str:
        return f"Management({self.base_url!r}, user={self.username!r}, vhost={self.vhost!r})"

    def for_vhost(self, vhost: str) -> "Management":
        other = Management.__new__(Management)
        other.__dict__.update(self.__dict__)
        other.vhost = vhost
        return other

    # transport --------------------------------------------------------------------------
    def request(self, method: str, path: str, json: Any = None, ok: Iterable[int] = ()) -> Any:
        url = f"{self.base_url}/api/{path}"
        try:
            resp = self._session.request(method, url, json=json, timeout=self.timeout)
        except requests.RequestException as exc:
            raise ManagementError(f"A API de gerenciamento em {self.base_url} não respondeu ({exc.__class__.__name__}).") from exc
        if resp.status_code == 401:
            raise BrokerAuthError(f"A API de gerenciamento recusou o usuário '{self.username}' (senha errada ou usuário sem a tag 'management').")
        if resp.status_code in ok:
            return None
        if resp.status_code == 404 and method == "GET":
            raise ManagementError(f"Não encontrado na API de gerenciamento: {path}", 404)
        if resp.status_code >= 400:
            raise ManagementError(f"A API de gerenciamento respondeu {resp.status_code} a {method} {path}: {resp.text[:300]}", resp.status_code)
        if not resp.content:
            return None
        return resp.json()

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    # broker-wide ------------------------------------------------------------------------
    def overview(self) -> dict:
        return self.get("overview")

    def version(self) -> str:
        return self.overview().get("rabbitmq_version", "?")

    def whoami(self) -> dict:
        return self.get("whoami")

    def vhosts(self) -> list[dict]:
        return self.get("vhosts")

    def nodes(self) -> list[dict]:
        """`GET /api/nodes`: every node of the cluster as this node sees it (`name`, `running`,
        `partitions`, `uptime`, ...). Needs the `monitoring` or administrator tag."""
        return self.get("nodes")

    def get_or_none(self, path: str) -> Any:
        """GET `path`, or None when the API answers 404."""
        try:
            return self.get(path)
        except ManagementError as exc:
            if exc.status == 404:
                return None
            raise

    def vhost_record(self, vhost: str | None = None) -> dict | None:
        """The vhost's record (description, tags, tracing, message_stats...), None if it is gone.

        `GET /api/vhosts/{name}` is for administrators; a user with the `management` tag only (a
        student's, when grading) gets 401 there, but the list `GET /api/vhosts` shows it the
        vhosts it may use."""
        vhost = vhost or self.vhost
        try:
            return self.get_or_none(f"vhosts/{_q(vhost)}")
        except BrokerAuthError:
            return next((v for v in self.vhosts() if v.get("name") == vhost), None)

    def vhost_exists(self, vhost: str) -> bool:
        return self.vhost_record(vhost) is not None

    def create_vhost(self, vhost: str, description: str = "") -> None:
        self.request("PUT", f"vhosts/{_q(vhost)}", json={"description": description, "tags": "curso"})

    def delete_vhost(self, vhost: str) -> None:
        self.request("DELETE", f"vhosts/{_q(vhost)}", ok=(404,))

    def recreate_vhost(self, vhost: str, description: str = "", attempts: int = 4) -> None:
        """Delete `vhost` and create it again, empty.

        The node removes a deleted vhost's message-store folder after the DELETE has answered, and
        a vhost of the same name has the same folder: created again at once, on a busy node, it can
        collide with that removal (RabbitMQ 3.10 answers 500 `failed_to_start_vhost_on_nodes`, and
        the vhost exists but is broken). Then it is deleted and created again, a little later."""
        for attempt in range(attempts):
            self.delete_vhost(vhost)
            if attempt:
                time.sleep(0.25 * 2 ** attempt)
            try:
                self.create_vhost(vhost, description)
                return
            except ManagementError as exc:
                if exc.status != 500 or attempt == attempts - 1:
                    raise

    def set_tracing(self, on: bool, vhost: str | None = None) -> None:
        """Switch the firehose tracer of the vhost on or off (`rabbitmqctl trace_on -p VHOST`),
        keeping its description, tags and default queue type. Needs the administrator tag."""
        vhost = vhost or self.vhost
        info = self.get(f"vhosts/{_q(vhost)}")
        body = {"tracing": on, "description": info.get("description", ""),
                "tags": ",".join(info.get("tags") or [])}
        if info.get("default_queue_type") not in (None, "undefined"):
            body["default_queue_type"] = info["default_queue_type"]
        self.request("PUT", f"vhosts/{_q(vhost)}", json=body)

    def all_connections(self) -> list[dict]:
        """Every connection on the broker (an administrator sees all; others see their own)."""
        return self.get("connections")

    def users(self) -> list[dict]:
        return self.get("users")

    def create_user(self, user: str, password: str, tags: str = "management") -> None:
        self.request("PUT", f"users/{_q(user)}", json={"password": password, "tags": tags})

    def delete_user(self, user: str) -> None:
        self.request("DELETE", f"users/{_q(user)}", ok=(404,))

    def permissions(self, vhost: str | None = None) -> list[dict]:
        return self.get(f"vhosts/{_q(vhost or self.vhost)}/permissions")

    def set_permissions(self, user: str, vhost: str | None = None, configure: str = ".*",
                        write: str = ".*", read: str = ".*") -> None:
        self.request("PUT", f"permissions/{_q(vhost or self.vhost)}/{_q(user)}",
                     json={"configure": configure, "write": write, "read": read})

    # per vhost --------------------------------------------------------------------------
    def queues(self, vhost: str | None = None) -> list[dict]:
        return self.get(f"queues/{_q(vhost or self.vhost)}")

    def queue(self, name: str, vhost: str | None = None) -> dict:
        return self.get(f"queues/{_q(vhost or self.vhost)}/{_q(name)}")

    def queue_or_none(self, name: str, vhost: str | None = None) -> dict | None:
        return self.get_or_none(f"queues/{_q(vhost or self.vhost)}/{_q(name)}")

    def delete_queue(self, name: str, vhost: str | None = None) -> None:
        self.request("DELETE", f"queues/{_q(vhost or self.vhost)}/{_q(name)}", ok=(404,))

    def exchanges(self, vhost: str | None = None) -> list[dict]:
        return self.get(f"exchanges/{_q(vhost or self.vhost)}")

    def exchange(self, name: str, vhost: str | None = None) -> dict:
        return self.get(f"exchanges/{_q(vhost or self.vhost)}/{_q(name)}")

    def exchange_or_none(self, name: str, vhost: str | None = None) -> dict | None:
        return self.get_or_none(f"exchanges/{_q(vhost or self.vhost)}/{_q(name)}")

    def delete_exchange(self, name: str, vhost: str | None = None) -> None:
        self.request("DELETE", f"exchanges/{_q(vhost or self.vhost)}/{_q(name)}", ok=(404,))

    def set_policy(self, name: str, pattern: str, definition: dict, apply_to: str = "queues",
                   priority: int = 0, vhost: str | None = None) -> None:
        self.request("PUT", f"policies/{_q(vhost or self.vhost)}/{_q(name)}",
                     json={"pattern": pattern, "definition": definition, "apply-to": apply_to,
                           "priority": priority})

    def delete_policy(self, name: str, vhost: str | None = None) -> None:
        self.request("DELETE", f"policies/{_q(vhost or self.vhost)}/{_q(name)}", ok=(404,))

    def bindings(self, vhost: str | None = None) -> list[dict]:
        return self.get(f"bindings/{_q(vhost or self.vhost)}")

    def connections(self, vhost: str | None = None) -> list[dict]:
        return self.get(f"vhosts/{_q(vhost or self.vhost)}/connections")

    def close_connection(self, name: str, reason: str = "fechada pelo curso") -> None:
        self.request("DELETE", f"connections/{_q(name)}", ok=(404,))

    def channels(self, vhost: str | None = None) -> list[dict]:
        return self.get(f"vhosts/{_q(vhost or self.vhost)}/channels")

    def consumers(self, vhost: str | None = None) -> list[dict]:
        return self.get(f"consumers/{_q(vhost or self.vhost)}")

    def peek(self, queue: str, count: int = 10, vhost: str | None = None) -> list[dict]:
        """Read up to `count` messages and put them back.

        Not a true peek: RabbitMQ takes the messages and requeues them, so they come back marked
        `redelivered` (and a quorum queue counts a delivery). Use it to look, not in hot paths.
        """
        return self.request("POST", f"queues/{_q(vhost or self.vhost)}/{_q(queue)}/get",
                            json={"count": count, "ackmode": "ack_requeue_true",
                                  "encoding": "auto", "truncate": 50000})

    def publish(self, exchange: str, routing_key: str, payload: str,
                properties: dict | None = None, vhost: str | None = None) -> bool:
        """Publish through the HTTP API (for checks and demos). Returns whether it was routed."""
        exchange_path = _q(exchange or "amq.default")
        body = {"properties": properties or {}, "routing_key": routing_key,
                "payload": payload, "payload_encoding": "string"}
        if any(ord(ch) > 127 for ch in payload):
            body.update(payload=base64.b64encode(payload.encode()).decode(), payload_encoding="base64")
        result = self.request("POST", f"exchanges/{_q(vhost or self.vhost)}/{exchange_path}/publish", json=body)
        return bool(result and result.get("routed"))
