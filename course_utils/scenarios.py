"""Ready-made topologies that exercises start from.

An exercise that asks the learner to *use* a topology (rather than build one) gets it from here:
the data, a function that declares it from nothing in the chapter's vhost, and one that also draws
it. The exercise's check declares it with the same function, so the notebook and the check always
agree on what the learner was shown.

    from course_utils.scenarios import mostrar_restaurante
    mostrar_restaurante(curso)      # declares exercise 1.2's topology and draws it
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the drawing stack (networkx, matplotlib) loads only when something is drawn
    from .topology import TopologyGraph

# Exercise 1.2: a restaurant's order events go to a direct exchange, its notices to a fanout one.
RESTAURANTE = {
    "exchanges": {"pedidos": "direct", "avisos": "fanout"},
    "queues": ["cozinha", "financeiro", "entrega", "app_cliente"],
    # (exchange, queue, binding key)
    "bindings": [("pedidos", "cozinha", "novo"), ("pedidos", "financeiro", "novo"),
                 ("pedidos", "financeiro", "cancelado"), ("pedidos", "entrega", "pronto"),
                 ("avisos", "entrega", ""), ("avisos", "app_cliente", "")],
}


def montar_restaurante(curso) -> None:
    """Declare exercise 1.2's topology from nothing (deleting what an earlier try left):
    durable exchanges and queues, exactly the bindings of `RESTAURANTE`, empty queues."""
    with curso.connect() as connection:
        channel = connection.channel()
        for name in RESTAURANTE["queues"]:
            channel.queue_delete(queue=name)
        for name, kind in RESTAURANTE["exchanges"].items():
            channel.exchange_delete(exchange=name)
            channel.exchange_declare(exchange=name, exchange_type=kind, durable=True)
        for name in RESTAURANTE["queues"]:
            channel.queue_declare(queue=name, durable=True)
        for exchange, queue, key in RESTAURANTE["bindings"]:
            channel.queue_bind(queue=queue, exchange=exchange, routing_key=key)


def mostrar_restaurante(curso) -> TopologyGraph:
    """Declare exercise 1.2's topology and draw only it (the vhost may hold other exercises')."""
    from .topology import show_topology_part

    montar_restaurante(curso)
    return show_topology_part(curso, RESTAURANTE["exchanges"], RESTAURANTE["queues"],
                              title="Exercício 1.2: a topologia do restaurante")
