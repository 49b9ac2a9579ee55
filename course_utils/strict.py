"""Strict mode: make RabbitMQ 3.10 refuse what RabbitMQ 4.x refuses.

The test broker (Debian's 3.10) still accepts transient non-exclusive queues, global QoS,
`x-queue-mode`, `x-queue-version=1` and `x-queue-master-locator`; RabbitMQ 4.3 (the Docker image learners get) does not. With
strict mode on, pika's channel raises StrictModeError before sending such a declaration, so code
that passes here also runs on 4.3. It patches `pika.channel.Channel`, which both
BlockingConnection and SelectConnection use.

On by default in every chapter sandbox, in the tests and in grading; `CURSO_STRICT=0` turns it off.
"""
from __future__ import annotations

import functools
import os

import pika.channel

from .errors import StrictModeError

_original: dict[str, object] = {}

TRANSIENT_QUEUE = (
    "O RabbitMQ 4.3 recusaria esta fila: filas transitórias não exclusivas ({what}) são um recurso "
    "obsoleto, negado por padrão a partir do 4.3, e a conexão seria fechada com o erro 541. Uma fila "
    "temporária, que deve sumir com a conexão, se declara com exclusive=True; uma que deve durar, com "
    "durable=True (uma fila quorum ou stream é sempre durable=True)."
)
GLOBAL_QOS = (
    "A partir do RabbitMQ 4.3 o QoS global é negado por padrão: basic_qos(global_qos=True) é aceito, "
    "mas vira silenciosamente um limite por consumidor. Use "
    "basic_qos(prefetch_count=N) sem global_qos."
)
QUEUE_MODE = (
    "O RabbitMQ 4.3 recusa o argumento {arg}={value!r} (filas 'lazy' e a versão 1 das filas clássicas "
    "foram removidas; o 4.0 ainda o aceita, mas o ignora). Tire esse argumento: as filas clássicas já "
    "guardam as mensagens em disco."
)
MASTER_LOCATOR = (
    "O RabbitMQ 4.3 recusa o argumento x-queue-master-locator (o recurso 'queue_master_locator' é "
    "obsoleto e negado por padrão a partir do 4.3; a conexão seria fechada com o erro 541). Para "
    "escolher onde uma fila nasce use x-queue-leader-locator ('client-local' ou 'balanced')."
)
MIRRORING = (
    "O RabbitMQ 4.0 removeu o espelhamento de filas clássicas (políticas ha-mode/ha-params). "
    "Use filas quorum: arguments={'x-queue-type': 'quorum'}."
)


def check_queue_declare(queue: str, passive: bool, durable: bool, exclusive: bool,
                        arguments: dict | None) -> None:
    if passive:
        return
    if not durable and not exclusive:
        what = "queue_declare('')" if queue == "" else f"queue_declare({queue!r}) sem durable=True"
        raise StrictModeError(TRANSIENT_QUEUE.format(what=what))
    arguments = arguments or {}
    if "x-queue-mode" in arguments:
        raise StrictModeError(QUEUE_MODE.format(arg="x-queue-mode", value=arguments["x-queue-mode"]))
    if arguments.get("x-queue-version") == 1:
        raise StrictModeError(QUEUE_MODE.format(arg="x-queue-version", value=1))
    if "x-queue-master-locator" in arguments:
        raise StrictModeError(MASTER_LOCATOR)


def check_policy(definition: dict) -> None:
    if any(key.startswith("ha-") for key in definition):
        raise StrictModeError(MIRRORING)


def _guard_queue_declare(original):
    @functools.wraps(original)
    def queue_declare(self, queue, passive=False, durable=False, exclusive=False, auto_delete=False,
                      arguments=None, callback=None):
        check_queue_declare(queue, passive, durable, exclusive, arguments)
        return original(self, queue, passive=passive, durable=durable, exclusive=exclusive,
                        auto_delete=auto_delete, arguments=arguments, callback=callback)
    return queue_declare


def _guard_basic_qos(original):
    @functools.wraps(original)
    def basic_qos(self, prefetch_size=0, prefetch_count=0, global_qos=False, callback=None):
        if global_qos:
            raise StrictModeError(GLOBAL_QOS)
        return original(self, prefetch_size=prefetch_size, prefetch_count=prefetch_count,
                        global_qos=global_qos, callback=callback)
    return basic_qos


def enable() -> None:
    if _original:
        return
    Channel = pika.channel.Channel
    _original["queue_declare"] = Channel.queue_declare
    _original["basic_qos"] = Channel.basic_qos
    Channel.queue_declare = _guard_queue_declare(Channel.queue_declare)
    Channel.basic_qos = _guard_basic_qos(Channel.basic_qos)


def disable() -> None:
    Channel = pika.channel.Channel
    for name, original in _original.items():
        setattr(Channel, name, original)
    _original.clear()


def is_enabled() -> bool:
    return bool(_original)


def wanted() -> bool:
    """Strict mode unless CURSO_STRICT says 0/false/no."""
    return os.environ.get("CURSO_STRICT", "1").strip().lower() not in ("0", "false", "no", "off")
