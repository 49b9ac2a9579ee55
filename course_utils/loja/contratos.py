"""The shop's message contracts (chapters 10 and 13): one topic exchange of events, the routing
key of each event, and the JSON Schema its body must follow.

Every event is published to the topic exchange `EXCHANGE` with its routing key (`pedido.criado`)
as a persistent JSON message whose properties say what it is: `type` = the event's name
(`PedidoCriado`), `content_type` = "application/json", `message_id` = a new id for this message,
and `correlation_id` = the order's id (`pedido_id`), carried unchanged through every hop. The
body carries its contract version (`"versao": 1`); a consumer that gets a version or a shape it
does not know rejects the message to a dead-letter queue, never requeues it.

    from course_utils.loja.contratos import EXCHANGE, CHAVES, erros
    erros("pedido.criado", {"versao": 1, "pedido_id": "p1", ...})  # [] when valid
"""
from __future__ import annotations

import functools
import sys

# jsonschema imports rfc3987_syntax (only for the "iri" format, which no contract uses) when it is
# installed, and that module builds a grammar at import: 0.9 s idle, 2.7 s on a loaded machine, at
# each service start and at a kernel's first erros(). Skip it (unless something imported it already).
sys.modules.setdefault("rfc3987_syntax", None)  # type: ignore[arg-type]

EXCHANGE = "loja.eventos"

# routing key -> the event's name (the `type` property), as the ebook's case study names them
CHAVES = {
    "pedido.criado": "PedidoCriado",
    "estoque.reservado": "EstoqueReservado",
    "estoque.indisponivel": "EstoqueIndisponivel",
    "pagamento.aprovado": "PagamentoAprovado",
    "pagamento.rejeitado": "PagamentoRejeitado",
    "estoque.liberado": "EstoqueLiberado",
    "logistica.em_preparo": "PedidoEmPreparo",
    "logistica.enviado": "PedidoEnviado",
}

_ID = {"type": "string", "minLength": 1}
_ITEM = {"type": "object", "required": ["sku", "quantidade"], "additionalProperties": False,
         "properties": {"sku": _ID, "quantidade": {"type": "integer", "minimum": 1}}}


def _evento(**campos) -> dict:
    """A version-1 event body: `versao` 1, `pedido_id`, and the given fields, all required."""
    properties = {"versao": {"const": 1}, "pedido_id": _ID, **campos}
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object",
            "required": list(properties), "properties": properties, "additionalProperties": False}


ESQUEMAS = {
    "pedido.criado": _evento(cliente=_ID, itens={"type": "array", "minItems": 1, "items": _ITEM},
                             total={"type": "number", "exclusiveMinimum": 0}),
    "estoque.reservado": _evento(itens={"type": "array", "minItems": 1, "items": _ITEM}),
    "estoque.indisponivel": _evento(motivo={"type": "string"}),
    "pagamento.aprovado": _evento(valor={"type": "number", "exclusiveMinimum": 0}),
    "pagamento.rejeitado": _evento(motivo={"type": "string"}),
    "estoque.liberado": _evento(itens={"type": "array", "minItems": 1, "items": _ITEM}),
    "logistica.em_preparo": _evento(),
    "logistica.enviado": _evento(codigo_rastreio=_ID),
}


@functools.lru_cache(maxsize=None)
def _validator(chave: str):
    from jsonschema import Draft202012Validator

    return Draft202012Validator(ESQUEMAS[chave])


def erros(chave: str, corpo) -> list[str]:
    """What is wrong with `corpo` (a decoded JSON body) for the event `chave`: one line per error,
    the field's path then jsonschema's message (in English); [] if valid."""
    if chave not in ESQUEMAS:
        return [f"evento desconhecido: {chave!r}"]
    validator = _validator(chave)
    return [f"{'/'.join(map(str, e.absolute_path)) or '(corpo)'}: {e.message}"
            for e in sorted(validator.iter_errors(corpo), key=lambda e: list(map(str, e.path)))]


__all__ = ["EXCHANGE", "CHAVES", "ESQUEMAS", "erros"]
