#!/usr/bin/env bash
# Headless Chromium and its WebDriver for tests/test_explore.py's browser test (Debian packages,
# as root, as scripts/slurm/start_local_slurm.sh installs SLURM). Nothing is started: the test
# starts its own headless browser with a fresh profile and no network features.
set -euo pipefail
if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
    echo "install_chromium: $(chromium --version 2>/dev/null || echo chromium) already installed"
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
echo "install_chromium: $(chromium --version 2>/dev/null || echo chromium), $(chromedriver --version)"
