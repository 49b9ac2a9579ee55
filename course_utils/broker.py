"""Find or start the course broker.

Order (docs/architecture.md): RABBITMQ_URL → something already answering on localhost → a Docker
engine (rabbitmq:4-management, ports on 127.0.0.1) → a native node from the OS package → a pt-BR
error with the install command. Every wait is bounded and says what it waited for.

The 4.x course broker (`curso broker up --versao 4`, or CURSO_BROKER=4 for everything that calls
`ensure_broker()`: notebooks, tests, `curso broker ...`) is looked for the same way on its own port
block (`RABBIT4_PORTS`: AMQP 5682, management 15682): RABBITMQ_URL → something answering there →
a `course_utils.rabbit4` node (Debian 13's RabbitMQ 4.0 in a chroot; root only). Its start is
recorded in `started4.json`, beside the default broker's `started.json`.
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import time
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote, urlparse

import pika

from .errors import BrokerAuthError, BrokerNotFound, BrokerStartError
from .management import Management, ManagementError
from .native import NativeNode, Ports, amqp_answers, find_server, port_listening, who_listens
from .rabbit4 import COURSE4_NAME, COURSE4_PORTS, Rabbit4Node

DOCKER_IMAGE = "rabbitmq:4-management"
DOCKER_CONTAINER = "curso-rabbitmq"
HOST = "localhost"
# The course broker's ports. Tests point discovery at other ports by replacing this.
COURSE_PORTS = Ports()
# The 4.x course broker's ports (CURSO_BROKER=4, --versao 4): AMQP 5682, management 15682.
RABBIT4_PORTS = COURSE4_PORTS


def wanted_version(versao: str | None = None) -> str:
    """'4' for the RabbitMQ 4.x course broker, '' for the default one. `versao` (the CLI's
    --versao) wins over CURSO_BROKER; both accept 4 / 4.x, and ''/padrao for the default."""
    raw = versao if versao is not None else os.environ.get("CURSO_BROKER", "")
    value = str(raw).strip().lower()
    if value in ("", "padrao", "padrão", "default"):
        return ""
    if value in ("4", "4.x", "4x", "rabbit4"):
        return "4"
    raise BrokerNotFound(f"Versão de broker desconhecida: {raw!r} (CURSO_BROKER ou --versao). Use 4 para o "
                         "RabbitMQ 4.x do curso, ou deixe vazio (padrao) para o broker de sempre.")


def _ports(version: str) -> Ports:
    return RABBIT4_PORTS if version == "4" else COURSE_PORTS


def data_dir() -> Path:
    """Per-user folder for the course's own broker (override with CURSO_HOME)."""
    env = os.environ.get("CURSO_HOME")
    if env:
        return Path(env)
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "rabbitmq-curso"


def course_node(base: Path | None = None) -> NativeNode:
    # Node names are unique per host: a course node on other ports (tests) gets its own name.
    name = "curso" if COURSE_PORTS == Ports() else f"curso{COURSE_PORTS.amqp}"
    return NativeNode((base or data_dir()) / "node", name=name, ports=COURSE_PORTS)


def course_node4(base: Path | None = None) -> Rabbit4Node:
    """The 4.x course broker: a Rabbit4Node in `<data dir>/node4` on RABBIT4_PORTS."""
    name = COURSE4_NAME if RABBIT4_PORTS == COURSE4_PORTS else f"{COURSE4_NAME}-{RABBIT4_PORTS.amqp}"
    return Rabbit4Node((base or data_dir()) / "node4", name=name, ports=RABBIT4_PORTS)


def _node(version: str) -> NativeNode:
    return course_node4() if version == "4" else course_node()


def _local_broker(kind: str, started_here: bool = False, version: str = "", started_now: bool = False) -> "Broker":
    ports = _ports(version)
    return Broker(kind, HOST, ports.amqp, "guest", "guest",
                  f"http://{HOST}:{ports.management}", started_here=started_here, started_now=started_now)


@dataclass
class Broker:
    """Where the course broker is and how to reach it."""

    kind: str  # "external" (RABBITMQ_URL or already running), "native", "docker" or "rabbit4"
    host: str
    port: int
    username: str
    password: str
    management_url: str
    vhost: str | None = None  # the vhost RABBITMQ_URL names; None: the sandbox picks one
    started_here: bool = False  # started by the course (`curso broker down` may stop it)
    tls: bool = False
    started_now: bool = False  # started by this very call (it was not answering before)

    def amqp_url(self, vhost: str | None = None) -> str:
        scheme = "amqps" if self.tls else "amqp"
        v = vhost if vhost is not None else (self.vhost if self.vhost is not None else "/")
        return (f"{scheme}://{quote(self.username, safe='')}:{quote(self.password, safe='')}"
                f"@{self.host}:{self.port}/{quote(v, safe='')}")

    def management(self, vhost: str | None = None) -> Management:
        return Management(self.management_url, self.username, self.password,
                          vhost if vhost is not None else (self.vhost or "/"))

    def display_url(self) -> str:
        scheme = "amqps" if self.tls else "amqp"
        return f"{scheme}://{self.username}:***@{self.host}:{self.port}/"


_cached: tuple[tuple[str | None, str], Broker] | None = None  # ((RABBITMQ_URL, version), broker)


def _marker(version: str = "") -> Path:
    return data_dir() / f"started{version}.json"


def _write_marker(kind: str, version: str = "", **extra) -> None:
    _marker(version).parent.mkdir(parents=True, exist_ok=True)
    _marker(version).write_text(json.dumps({"kind": kind, **extra}))


def _read_marker(version: str = "") -> dict:
    try:
        return json.loads(_marker(version).read_text())
    except (OSError, ValueError):
        return {}


# ---------------------------------------------------------------------------------------------
def from_url(url: str) -> Broker:
    """Parse RABBITMQ_URL (and RABBITMQ_MANAGEMENT_URL, if set)."""
    parsed = urlparse(url)
    if parsed.scheme not in ("amqp", "amqps") or not parsed.hostname:
        raise BrokerNotFound(f"RABBITMQ_URL inválida: {url!r}. Formato: amqp://usuario:senha@host:5672/vhost")
    tls = parsed.scheme == "amqps"
    port = parsed.port or (5671 if tls else 5672)
    vhost = unquote(parsed.path[1:]) if parsed.path and parsed.path != "/" else "/"
    mgmt = os.environ.get("RABBITMQ_MANAGEMENT_URL") or f"http://{parsed.hostname}:{port + 10000}"
    return Broker("external", parsed.hostname, port, unquote(parsed.username or "guest"),
                  unquote(parsed.password or "guest"), mgmt, vhost=vhost, tls=tls)


def verify_login(broker: Broker, vhost: str | None = None) -> None:
    """Open and close one AMQP connection; turn refusals into pt-BR errors that say which part is wrong."""
    v = vhost if vhost is not None else (broker.vhost or "/")
    params = pika.URLParameters(broker.amqp_url(v))
    params.connection_attempts = 1
    params.socket_timeout = 5
    params.blocked_connection_timeout = 5
    params.stack_timeout = 10
    try:
        pika.BlockingConnection(params).close()
    except (pika.exceptions.ProbableAuthenticationError, pika.exceptions.AuthenticationError) as exc:
        raise BrokerAuthError(
            f"O broker em {broker.host}:{broker.port} recusou o usuário '{broker.username}': senha errada "
            f"ou usuário inexistente. Confira usuário e senha em RABBITMQ_URL.") from exc
    except pika.exceptions.ProbableAccessDeniedError as exc:
        raise BrokerAuthError(
            f"O broker aceitou o usuário '{broker.username}', mas recusou o vhost '{v}': ele não existe "
            f"ou o usuário não tem permissão nele. Confira o vhost no fim de RABBITMQ_URL "
            f"(use %2F para o vhost '/').") from exc
    except pika.exceptions.AMQPConnectionError as exc:
        raise BrokerNotFound(f"Nada aceitou a conexão AMQP em {broker.host}:{broker.port} ({exc!r}).") from exc


def _docker_available() -> bool:
    if os.environ.get("CURSO_NO_DOCKER") or shutil.which("docker") is None:
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=8).returncode == 0
    except (subprocess.TimeoutExpired, OSError):
        return False


def _wait_answering(timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if amqp_answers(HOST, COURSE_PORTS.amqp) and port_listening(HOST, COURSE_PORTS.management):
            return
        time.sleep(0.5)
    raise BrokerStartError(f"Esperei {timeout:.0f} s por {what} nas portas {COURSE_PORTS.amqp}/"
                           f"{COURSE_PORTS.management} e elas não responderam.")


def _start_docker(timeout: float) -> Broker:
    base = data_dir()
    base.mkdir(parents=True, exist_ok=True)
    plugins = base / "docker_enabled_plugins"
    plugins.write_text("[rabbitmq_management,rabbitmq_prometheus,rabbitmq_stream].\n")
    exists = subprocess.run(["docker", "container", "inspect", DOCKER_CONTAINER], capture_output=True, timeout=30)
    if exists.returncode == 0:
        cmd = ["docker", "start", DOCKER_CONTAINER]
    else:
        cmd = ["docker", "run", "-d", "--name", DOCKER_CONTAINER, "--hostname", "curso-rabbitmq",
               "--label", "curso=broker"]
        p = COURSE_PORTS
        for host_port, port in ((p.amqp, 5672), (p.management, 15672), (p.prometheus, 15692), (p.stream, 5552)):
            cmd += ["-p", f"127.0.0.1:{host_port}:{port}"]
        cmd += ["-v", f"{plugins}:/etc/rabbitmq/enabled_plugins:ro", DOCKER_IMAGE]
    print(f"Iniciando o RabbitMQ no Docker ({DOCKER_IMAGE}); na primeira vez a imagem é baixada...")
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    except subprocess.TimeoutExpired as exc:
        raise BrokerStartError("O Docker não terminou de baixar/iniciar a imagem em 15 minutos.") from exc
    if result.returncode != 0:
        raise BrokerStartError(f"O Docker não conseguiu iniciar o RabbitMQ:\n{result.stderr.strip()[-2000:]}")
    _write_marker("docker", container=DOCKER_CONTAINER)
    try:
        _wait_answering(timeout, f"o contêiner {DOCKER_CONTAINER}")
    except BrokerStartError as exc:
        logs = subprocess.run(["docker", "logs", "--tail", "25", DOCKER_CONTAINER], capture_output=True, text=True, timeout=30)
        raise BrokerStartError(f"{exc}\nFim do log do contêiner:\n{logs.stdout}{logs.stderr}") from exc
    return _local_broker("docker", started_here=True, started_now=True)


def install_hint() -> str:
    system = platform.system()
    lines = ["Não encontrei um RabbitMQ rodando nem um jeito de iniciar um. Instale-o:"]
    if system == "Darwin":
        lines.append("  macOS (Homebrew):   brew install rabbitmq")
    elif system == "Windows":
        lines.append("  Windows: instale o Docker Desktop e rode  docker run -d --name curso-rabbitmq "
                     "-p 127.0.0.1:5672:5672 -p 127.0.0.1:15672:15672 rabbitmq:4-management")
    else:
        lines.append("  Debian/Ubuntu:      sudo apt-get install -y rabbitmq-server")
    lines += ["  ou, com Docker:     docker run -d --name curso-rabbitmq -p 127.0.0.1:5672:5672 "
              "-p 127.0.0.1:15672:15672 rabbitmq:4-management",
              "  ou aponte para um broker seu: export RABBITMQ_URL=amqp://usuario:senha@host:5672/vhost",
              "Depois rode de novo:  curso broker up"]
    return "\n".join(lines)


def ensure_broker(timeout: float = 60.0, refresh: bool = False, versao: str | None = None) -> Broker:
    """Return the course broker, starting one if needed (see module docstring for the order).
    `versao="4"` (or CURSO_BROKER=4): the RabbitMQ 4.x course broker instead."""
    global _cached
    key = (os.environ.get("RABBITMQ_URL"), wanted_version(versao))
    if _cached is not None and not refresh and _cached[0] == key:
        if amqp_answers(_cached[1].host, _cached[1].port, timeout=1):
            return dataclasses.replace(_cached[1], started_now=False)  # up already: not started by this call
    broker = _discover(timeout, key[1])
    _cached = (key, broker)
    return broker


def _discover(timeout: float, version: str = "") -> Broker:
    url = os.environ.get("RABBITMQ_URL")
    if url:
        broker = from_url(url)
        verify_login(broker)
        return broker

    ports = _ports(version)
    answering = amqp_answers(HOST, ports.amqp)
    if answering:
        kind = _read_marker(version).get("kind", "external")
        if kind in ("native", "rabbit4") and not _node(version).is_running():
            kind = "external"
        broker = _local_broker(kind, started_here=kind != "external", version=version)
        verify_login(broker, "/")
        if not port_listening(HOST, ports.management):
            raise BrokerNotFound(
                f"Um RabbitMQ responde em localhost:{ports.amqp}, mas a API de gerenciamento "
                f"(porta {ports.management}) não. "
                "Ative o plugin: rabbitmq-plugins enable rabbitmq_management")
        return broker
    if answering is False:
        holder = who_listens(ports.amqp)
        raise BrokerNotFound(
            f"A porta {ports.amqp} de localhost está ocupada{' por ' + holder if holder else ''}, mas quem responde "
            f"não é um RabbitMQ. Pare esse processo ou aponte o curso para o seu broker com RABBITMQ_URL.")

    if version == "4":  # Debian 13's RabbitMQ 4.0 in a chroot (root only; Rabbit4Unavailable says what else)
        node = course_node4()
        node.start(timeout)
        _write_marker("rabbit4", version, pid=node.pid(), node=node.node_name)
        return _local_broker("rabbit4", started_here=True, version=version, started_now=True)

    if _docker_available():
        return _start_docker(timeout)

    if find_server() is not None:
        node = course_node()
        node.start(timeout)
        _write_marker("native", pid=node.pid(), node=node.node_name)
        return _local_broker("native", started_here=True, started_now=True)

    raise BrokerNotFound(install_hint())


def stop_broker(timeout: float = 30.0, versao: str | None = None) -> str:
    """Stop what `ensure_broker` started; leave anything else alone. Returns a pt-BR sentence."""
    global _cached
    version = wanted_version(versao)
    marker = _read_marker(version)
    _cached = None
    if marker.get("kind") == "rabbit4":
        node = course_node4()
        stopped = node.stop(timeout)
        _marker(version).unlink(missing_ok=True)
        return (f"Nó RabbitMQ 4.x {node.node_name} parado." if stopped
                else "O nó RabbitMQ 4.x do curso já estava parado.")
    if marker.get("kind") == "native":
        node = course_node()
        stopped = node.stop(timeout)
        _marker().unlink(missing_ok=True)
        return f"Nó nativo {node.node_name} parado." if stopped else "O nó nativo do curso já estava parado."
    if marker.get("kind") == "docker":
        subprocess.run(["docker", "stop", marker.get("container", DOCKER_CONTAINER)], capture_output=True, timeout=60)
        _marker().unlink(missing_ok=True)
        return f"Contêiner {marker.get('container', DOCKER_CONTAINER)} parado."
    return "Nada a parar: o curso não iniciou nenhum broker (um broker externo não é parado pelo curso)."


def _known_broker(version: str) -> Broker:
    """The broker RABBITMQ_URL names, or the course broker of `version` as its marker describes it
    (answering or not; nothing is started)."""
    url = os.environ.get("RABBITMQ_URL")
    if url:
        return from_url(url)
    kind = _read_marker(version).get("kind", "external")
    if kind in ("native", "rabbit4") and not _node(version).is_running():
        kind = "external"
    return _local_broker(kind, version=version)


def running_broker(versao: str | None = None) -> Broker | None:
    """The course broker if it answers now, else None: never starts one (clean-up code uses it)."""
    broker = _known_broker(wanted_version(versao))
    return broker if amqp_answers(broker.host, broker.port) else None


def broker_status(versao: str | None = None) -> dict:
    """What `curso broker status` prints: kind, version, URLs and whether each answers."""
    url = os.environ.get("RABBITMQ_URL")
    version = wanted_version(versao)
    broker = _known_broker(version)
    amqp_ok = bool(amqp_answers(broker.host, broker.port))
    if not url and not amqp_ok:
        broker.kind = "nenhum (parado)"
    status = {"tipo": broker.kind, "amqp": broker.display_url(), "amqp_responde": amqp_ok,
              "gerenciamento": broker.management_url, "gerenciamento_responde": False, "versao": None}
    if broker.kind in ("native", "rabbit4"):
        node = _node(version)
        status["no"] = node.node_name
        status["dados"] = str(node.base_dir)
    try:
        overview = broker.management().overview()
        status.update(gerenciamento_responde=True, versao=overview.get("rabbitmq_version"),
                      no=overview.get("node", status.get("no")))
    except Exception:  # status reports, it does not raise
        pass
    return status


def course_vhosts(mgmt: Management) -> list[str]:
    return [v["name"] for v in mgmt.vhosts() if v["name"].startswith(VHOST_PREFIX)]


VHOST_PREFIX = "curso-"


def reset_broker(versao: str | None = None) -> list[str]:
    """Delete every vhost the course created (names starting with 'curso-')."""
    broker = ensure_broker(versao=versao)
    mgmt = broker.management()
    removed = course_vhosts(mgmt)
    for vhost in removed:
        mgmt.delete_vhost(vhost)
    return removed


__all__ = ["Broker", "ensure_broker", "running_broker", "stop_broker", "broker_status", "reset_broker", "from_url",
           "verify_login", "data_dir", "course_node", "course_node4", "wanted_version", "install_hint",
           "ManagementError", "RABBIT4_PORTS"]
