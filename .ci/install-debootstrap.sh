#!/usr/bin/env bash
# debootstrap builds the root filesystem of the RabbitMQ 4.x course broker (course_utils.rabbit4).
# Installed with apt-get where we are root on Debian/Ubuntu; elsewhere nothing is done (the 4.x
# broker needs root anyway, and `curso broker up --versao 4` says what to use instead).
set -e
if command -v debootstrap >/dev/null 2>&1; then exit 0; fi
if [ "$(id -u)" != "0" ] || ! command -v apt-get >/dev/null 2>&1; then exit 0; fi
echo "Instalando o debootstrap (para o RabbitMQ 4.x do curso)..."
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
