#!/bin/sh
# Installs pam-agent as a systemd service (as root):
#   deploy/install.sh [path/to/pam-agent]    (default: target/release/pam-agent)
# Uninstall (detaches everything, leaves no pinned objects):
#   deploy/install.sh --uninstall
set -eu
here="$(cd "$(dirname "$0")" && pwd)"
if [ "${1:-}" = "--uninstall" ]; then
    systemctl disable --now pam-agent.service 2>/dev/null || true
    /usr/local/bin/pam-agent disable --config /etc/pam-agent/config.toml || true
    rm -f /etc/systemd/system/pam-agent.service /etc/systemd/system/pam-workers.slice
    rm -f /usr/local/bin/pam-agent
    systemctl daemon-reload 2>/dev/null || true
    echo "pam-agent uninstalled; /etc/pam-agent and /var/lib/pam-agent (the journal) are kept"
    exit 0
fi
bin="${1:-$here/../target/release/pam-agent}"
install -m 0755 "$bin" /usr/local/bin/pam-agent
install -d -m 0750 /etc/pam-agent /var/lib/pam-agent
if [ ! -e /etc/pam-agent/config.toml ]; then
    install -m 0640 "$here/config.toml" /etc/pam-agent/config.toml
    echo "installed default config /etc/pam-agent/config.toml: edit resources and cgroups"
fi
if grep -q '^\[worker_tls\]' /etc/pam-agent/config.toml; then
    # The agent CA exists before the first start, so it can be given to workers now.
    /usr/local/bin/pam-agent ca init --config /etc/pam-agent/config.toml
fi
install -m 0644 "$here/pam-agent.service" /etc/systemd/system/pam-agent.service
install -m 0644 "$here/pam-workers.slice" /etc/systemd/system/pam-workers.slice
if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
    systemctl daemon-reload
    echo "installed; start with: systemctl enable --now pam-agent.service"
else
    echo "installed; systemd is not running here: start with /usr/local/bin/pam-agent run --config /etc/pam-agent/config.toml"
fi
