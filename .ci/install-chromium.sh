#!/usr/bin/env bash
# Chromium for the browser test (tests/test_browser.py: JupyterLab driven by Playwright). Debian's
# own package, /usr/bin/chromium: Playwright never downloads a browser of its own here. Installed
# with apt-get where we are root on Debian/Ubuntu; elsewhere, or if apt-get fails, nothing stops:
# the browser test skips and says why.
set -e
if [ -x /usr/bin/chromium ]; then exit 0; fi
if [ "$(id -u)" != "0" ] || ! command -v apt-get >/dev/null 2>&1; then exit 0; fi
echo "Instalando o Chromium (para o teste no navegador)..."
if ! { apt-get update -qq \
       && DEBIAN_FRONTEND=noninteractive DEBCONF_NOWARNINGS=yes apt-get install -y -qq chromium >/dev/null; }; then
  echo "Não consegui instalar o Chromium: o teste no navegador (tests/test_browser.py) será pulado." >&2
fi
