#!/usr/bin/env bash
# Install RabbitMQ if the course has no broker to use. Called by `make lab` and `make test`.
# Nothing is installed when RABBITMQ_URL is set, a broker already answers on localhost:5672,
# RabbitMQ is already installed, or a Docker engine runs (course_utils then starts a container).
set -e

if [ -n "${RABBITMQ_URL:-}" ]; then exit 0; fi
if [ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || command -v rabbitmq-server >/dev/null 2>&1 \
   || [ -x /opt/homebrew/sbin/rabbitmq-server ] || [ -x /usr/local/sbin/rabbitmq-server ]; then
  exit 0
fi
if (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; then exit 0; fi
if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then exit 0; fi

if command -v apt-get >/dev/null 2>&1; then
  if [ "$(id -u)" = "0" ]; then SUDO=""; elif command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "Instale o RabbitMQ como root:  apt-get install -y rabbitmq-server" >&2; exit 1
  fi
  echo "Instalando o RabbitMQ (apt-get install rabbitmq-server)..."
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq rabbitmq-server >/dev/null
  # Where systemd started the system service, give it the plugins the course uses.
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet rabbitmq-server 2>/dev/null; then
    $SUDO rabbitmq-plugins enable rabbitmq_management rabbitmq_prometheus rabbitmq_stream
  fi
elif command -v brew >/dev/null 2>&1; then
  echo "Instalando o RabbitMQ (brew install rabbitmq)..."
  brew install rabbitmq
else
  echo "Não sei instalar o RabbitMQ neste sistema. Use o Docker:" >&2
  echo "  docker run -d --name curso-rabbitmq -p 127.0.0.1:5672:5672 -p 127.0.0.1:15672:15672 rabbitmq:4-management" >&2
  echo "ou defina RABBITMQ_URL apontando para um broker seu." >&2
fi
