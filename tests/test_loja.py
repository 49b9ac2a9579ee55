"""course_utils.loja.contratos: the shop's event contracts (chapters 10 and 13)."""
from course_utils.loja.contratos import CHAVES, ESQUEMAS, erros

PEDIDO = {"versao": 1, "pedido_id": "p-1", "cliente": "ana", "itens": [{"sku": "camisa-p", "quantidade": 2}],
          "total": 99.9}


def test_every_event_has_a_schema_and_a_name():
    assert set(CHAVES) == set(ESQUEMAS)
    assert all(name[0].isupper() for name in CHAVES.values())


def test_a_valid_order_passes_and_each_fault_is_named():
    assert erros("pedido.criado", PEDIDO) == []
    assert any("versao" in e for e in erros("pedido.criado", {**PEDIDO, "versao": 2}))
    assert any("itens" in e for e in erros("pedido.criado", {**PEDIDO, "itens": []}))
    assert any("cliente" in e for e in erros("pedido.criado", {k: v for k, v in PEDIDO.items() if k != "cliente"}))
    assert any("extra" in e for e in erros("pedido.criado", {**PEDIDO, "extra": 1}))
    assert erros("pedido.inventado", PEDIDO) == ["evento desconhecido: 'pedido.inventado'"]
