"""The `curso` command: `curso broker up|down|status|reset`, `curso exercises build|check`, `curso grade`."""
from __future__ import annotations

import argparse
import os
import sys

from .errors import CourseError


def _broker(args: argparse.Namespace) -> int:
    from . import broker

    versao = args.versao
    if args.action == "up":
        b = broker.ensure_broker(timeout=args.timeout, versao=versao)
        origin = "iniciado agora" if b.started_now else "já estava no ar"
        print(f"Broker {b.kind} ({origin}): {b.display_url()}  gerenciamento: {b.management_url}")
        if broker.wanted_version(versao) == "4" and not os.environ.get("RABBITMQ_URL"):
            print("Para os notebooks usarem este broker: export CURSO_BROKER=4")
    elif args.action == "down":
        print(broker.stop_broker(versao=versao))
    elif args.action == "status":
        status = broker.broker_status(versao=versao)
        yes = {True: "responde", False: "NÃO responde"}
        print(f"tipo:           {status['tipo']}")
        print(f"versão:         {status['versao'] or '?'}")
        if status.get("no"):
            print(f"nó:             {status['no']}")
        print(f"AMQP:           {status['amqp']}  ({yes[status['amqp_responde']]})")
        print(f"gerenciamento:  {status['gerenciamento']}  ({yes[status['gerenciamento_responde']]})")
        return 0 if status["amqp_responde"] else 1
    elif args.action == "reset":
        removed = broker.reset_broker(versao=versao)
        print(f"vhosts do curso removidos: {', '.join(removed) if removed else 'nenhum'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="curso", description="RabbitMQ com Python: ferramentas do curso")
    sub = parser.add_subparsers(dest="command", required=True)

    p_broker = sub.add_parser("broker", help="sobe, para, mostra ou limpa o broker do curso")
    p_broker.add_argument("action", choices=["up", "down", "status", "reset"])
    p_broker.add_argument("--timeout", type=float, default=60.0, help="segundos de espera pela partida")
    p_broker.add_argument("--versao", choices=["4", "padrao"], default=None,
                          help="4: o RabbitMQ 4.x do curso (portas 5682/15682; Linux, root); padrao: o broker "
                               "de sempre (5672). Sem a opção vale CURSO_BROKER")
    p_broker.set_defaults(func=_broker)

    for register in _extra_commands():
        register(sub)
    return parser


def _extra_commands():
    """Sub-commands that live in their own modules (exercises, grading)."""
    registrars = []
    try:
        from .exercises.cli import register as exercises_register
        registrars.append(exercises_register)
    except ImportError:
        pass
    try:
        from .grading.cli import register as grading_register
        registrars.append(grading_register)
    except ImportError:
        pass
    return registrars


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except CourseError as exc:
        print(f"erro: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrompido.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
