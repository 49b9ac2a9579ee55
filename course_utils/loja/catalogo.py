"""The shop's price list, shared by Pagamentos and the price service (Preços)."""
PRECOS = {"camisa": 49.9, "caneca": 25.0, "bone": 35.0, "tenis": 299.0}


def valor(itens: list[dict]) -> float:
    """The value of `itens` ([{"sku", "quantidade"}]) at list prices (unknown SKUs cost 0)."""
    return round(sum(PRECOS.get(i["sku"], 0.0) * i["quantidade"] for i in itens), 2)
