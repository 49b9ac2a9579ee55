"""One module per chapter, `capNN.py`: its exercises' checks (data, expectations, pt-BR hints).

The shared machinery lives one level up: `checks` (the framework), `kit` (helpers) and `phrases`."""
