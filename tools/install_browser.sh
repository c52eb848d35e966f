#!/usr/bin/env bash
# Installs what the browser tests of `planner show` need (tests/test_show_browser.py):
# Debian's chromium and the chromedriver built for it (same package version, so they
# always match), and the selenium client from PyPI. Never downloads a browser build of
# its own: Selenium Manager is not used because the tests pass /usr/bin/chromedriver.
# Idempotent; needs root (CI runs as root). Usage: bash tools/install_browser.sh
set -euo pipefail

if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends chromium chromium-driver fonts-dejavu-core >/dev/null
fi
chromium --version
chromedriver --version

PY="${PYTHON:-python3}"
if ! "$PY" -c "import selenium" 2>/dev/null; then
    "$PY" -m pip install -q "selenium>=4.20,<5"
fi
"$PY" -c "import selenium; print('selenium', selenium.__version__)"
