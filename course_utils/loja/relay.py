"""The outbox relay of Pedidos: publishes what `pedidos.db`'s outbox holds, then marks it sent.

    python -m course_utils.loja.relay [--dados PASTA] [--intervalo S] [--atraso S] [--cair-apos N]

Every `--intervalo` s it reads the unsent rows of `outbox` (oldest first) and, one by one,
publishes the row (confirm mode: it waits for the broker's ack), THEN marks it `enviado = 1`. A
crash between the two republishes that row at the next start, with the same `message_id`: at
least once, never lost; the consumer's inbox drops the duplicate. `--cair-apos N` kills the
relay (os._exit) right after the Nth publish and before marking it: the crash in that gap.
`--atraso S` waits S s before each publish (to watch it work). Ends on SIGTERM.
"""
from __future__ import annotations

import json
import os
import signal
import time

from . import servico
from .pedidos import abrir


def main() -> None:
    args = servico.opcoes(__doc__, intervalo=(float, 0.2, "segundos entre leituras da outbox"),
                          cair_apos=(int, 0, "morre logo após a N-ésima publicação, antes de marcá-la")).parse_args()
    db = abrir(args.dados)
    connection, channel = servico.conectar()
    channel.confirm_delivery()
    parar = []
    signal.signal(signal.SIGTERM, lambda *_: parar.append(True))
    publicadas = 0
    print("pronto", flush=True)
    while not parar:
        linhas = db.execute("SELECT id, message_id, chave, corpo, correlation_id FROM outbox "
                            "WHERE enviado = 0 ORDER BY id LIMIT 100").fetchall()
        for id_, message_id, chave, corpo, corr in linhas:
            if parar:
                break
            time.sleep(args.atraso)
            servico.publicar(channel, chave, json.loads(corpo), corr, message_id=message_id)  # waits for the confirm
            publicadas += 1
            if publicadas == args.cair_apos:
                print(f"caiu antes de marcar a linha {id_} (corr {corr})", flush=True)
                os._exit(1)
            db.execute("UPDATE outbox SET enviado = 1 WHERE id = ?", (id_,))
            print(f"marcou a linha {id_} como enviada (corr {corr})")
        # a full batch means more rows are waiting: read again at once (events still served)
        connection.process_data_events(time_limit=0 if len(linhas) == 100 else args.intervalo)
    connection.close()
    print("parado", flush=True)


if __name__ == "__main__":
    main()
