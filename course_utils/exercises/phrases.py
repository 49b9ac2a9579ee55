"""pt-BR sentences that the checks of several chapters say: one place, one wording."""
from __future__ import annotations

from ..numbers import format_number

PERSISTENT = "use properties=pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent)"

MANUAL_ACK = ("Use auto_ack=False (o padrão) e confirme cada mensagem depois de processá-la com "
              "ch.basic_ack(delivery_tag=method.delivery_tag).")

CLOSE_CONNECTION = ("Feche a conexão antes de sair da função: connection.close(), ou "
                    "`with pika.BlockingConnection(curso.params()) as connection:`.")

CANCEL_CONSUMER = ("Ao terminar, cancele o consumidor: channel.cancel() depois de channel.consume(...), "
                   "ou channel.basic_cancel(consumer_tag) depois de basic_consume(...).")

RERUN = "a verificação a cria e publica nela; rode a célula de verificação de novo."

STATS_MAY_LAG = ("(Este número vem das estatísticas do broker, que atrasam até um intervalo de "
                 "coleta — 1 s nos nós do curso, 5 s num RabbitMQ padrão.)")


def decimal(value, digits: int = 1) -> str:
    """A figure in a sentence, the pt-BR way with fixed decimals: 0.6 -> '0,6' (None counts as 0)."""
    return format_number(value or 0, digits)


def not_found(name: str, what: str = "função") -> str:
    return (f"Não encontrei a {what} `{name}`. Escreva-a na célula de resposta acima e rode essa "
            f"célula antes desta verificação.")


def not_callable(name: str, kind: str) -> str:
    return f"`{name}` deveria ser uma função, mas é {kind}."


def not_implemented(name: str) -> str:
    return (f"`{name}` ainda não foi implementada: escreva o corpo da função na célula de resposta (no "
            f"lugar do raise NotImplementedError).")


def too_slow(name: str, seconds: float) -> str:
    return (f"`{name}` não terminou em {seconds:.0f} s. Um consumidor que usa start_consuming() ou "
            f"consume() sem inactivity_timeout espera mensagens para sempre: pare depois de receber o "
            f"que precisa ou use um tempo limite.")


def strict_refused(name: str, exc: Exception) -> str:
    return f"`{name}` declarou algo que o RabbitMQ 4.x recusa: {exc}"


def channel_closed(name: str, code, text: str) -> str:
    return f"Durante `{name}` o broker fechou o canal: {code} {text}."


def connection_failed(name: str, exc: Exception) -> str:
    return f"Durante `{name}` a conexão com o broker falhou: {exc!r}."


def raised(name: str, exc: BaseException) -> str:
    text = str(exc).rstrip(".") or "(sem mensagem)"
    return f"O seu código (`{name}`) levantou {type(exc).__name__}: {text}."


def queue_missing(name: str) -> str:
    return f"A fila '{name}' não existe: {RERUN}"

# Threads and pika (chapter 5 on, wherever a learner's code consumes from several threads).
THREADS_ACK = ("Conexões e canais do pika não são thread-safe: só a thread que criou a conexão pode usá-la. "
               "A thread trabalhadora deve pedir o ack à thread da conexão: "
               "connection.add_callback_threadsafe(functools.partial(ch.basic_ack, delivery_tag=tag)) — ou "
               "então cada thread abre a sua própria conexão, dentro dela. (A verificação fez essas chamadas "
               "pelo caminho seguro para poder continuar; sem isso, o pika corrompe o próprio estado e falha "
               "de jeitos aleatórios, como IndexError('pop from an empty deque').)")

THREADS_EBOOK = ("threading.Thread(target=channel.basic_consume, ...) — o exemplo do e-book — está errado duas "
                 "vezes: basic_consume só registra o consumidor (quem entrega as mensagens é o laço: "
                 "start_consuming(), process_data_events() ou consume()), e um canal do pika não pode ser usado "
                 "por várias threads.")
THREADS_CONSUME = ("Conexões e canais do pika não são thread-safe: só a thread que criou a conexão pode "
                   "usá-la. Ou cada thread abre a sua própria conexão, dentro dela, e consome nela; ou uma "
                   "thread só consome e as trabalhadoras confirmam por connection.add_callback_threadsafe(...).")
