#!/bin/sh
# What tests/viz/test_browser.py needs outside the venv: Debian's Chromium (Playwright's own browser download needs
# the internet, which CI does not have). Installed with apt-get when missing and running as root, as on the CI
# machine; anywhere else nothing is installed and the browser test skips, saying why. Never fails the build.
if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" != "0" ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "install-browser: Chromium missing and cannot be installed here (needs root and apt-get);" \
         "tests/viz/test_browser.py will skip. Install it with: apt-get install chromium"
    exit 0
fi
echo "install-browser: installing Debian's chromium for the browser test"
if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }; then
    echo "install-browser: apt-get could not install chromium; tests/viz/test_browser.py will skip"
fi
exit 0
