# Shared by scripts/test and scripts/bench: install what is missing (as root) and
# run a throwaway PostgreSQL cluster. Source it; call `setup_machine`, then
# `start_postgres` (sets POSTBOTE_TEST_PG_URL and cleans up on exit).

log() { printf '\n==> %s\n' "$*" >&2; }

setup_machine() {
  local need_packages=()
  command -v smtp-sink >/dev/null 2>&1 || [ -x /usr/sbin/smtp-sink ] || need_packages+=(postfix)
  pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
  [ -n "$pg_bin" ] && [ -x "$pg_bin/initdb" ] || need_packages+=(postgresql)
  command -v python3 >/dev/null 2>&1 || need_packages+=(python3)
  command -v openssl >/dev/null 2>&1 || need_packages+=(openssl)
  [ -x /usr/bin/time ] || need_packages+=(time)
  # scripts/bench: wrk loads the sign-up form, ss finds ports and counts sessions,
  # openssl makes the DKIM keys.
  command -v wrk >/dev/null 2>&1 || need_packages+=(wrk)
  command -v ss >/dev/null 2>&1 || need_packages+=(iproute2)
  command -v openssl >/dev/null 2>&1 || need_packages+=(openssl)
  install_packages "${need_packages[@]}"
  [ ${#need_packages[@]} -eq 0 ] || pg_bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
  export PATH="$PATH:/usr/sbin"
  work=$(mktemp -d /tmp/postbote-run.XXXXXX)
  chmod 755 "$work"
  trap cleanup EXIT INT TERM
}

# Installs the Debian packages named (none: nothing to do); only root may.
install_packages() {
  [ $# -gt 0 ] || return 0
  if [ "$(id -u)" -ne 0 ]; then
    echo "missing: $* (install them, or run this script as root)" >&2
    exit 1
  fi
  log "installing $*"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# The browser tests (tests/it/browser.rs): Debian's Chromium and chromedriver, and
# axe-core from the npm registry at the version tests/browser/package-lock.json pins,
# into tests/browser/node_modules (git-ignored). The tests start chromedriver themselves.
setup_browser_tests() {
  local need_packages=()
  [ -x /usr/bin/chromium ] || need_packages+=(chromium)
  [ -x /usr/bin/chromedriver ] || need_packages+=(chromium-driver)
  command -v npm >/dev/null 2>&1 || need_packages+=(npm)
  install_packages "${need_packages[@]}"
  log "npm ci (axe-core for the browser tests)"
  (cd tests/browser && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
}

run_pg() {
  # PostgreSQL refuses to run as root; the cluster belongs to the postgres user.
  if [ "$(id -u)" -eq 0 ]; then su postgres -s /bin/sh -c "$*"; else sh -c "$*"; fi
}

cleanup() {
  if [ -n "${pg_data:-}" ] && [ -f "$pg_data/postmaster.pid" ]; then
    run_pg "'$pg_bin/pg_ctl' -D '$pg_data' -m immediate stop" >/dev/null 2>&1 || true
  fi
  [ -n "${work:-}" ] && rm -rf "$work"
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

start_postgres() {
  pg_port=$(free_port)
  pg_data="$work/pg"
  log "starting PostgreSQL on 127.0.0.1:$pg_port"
  mkdir -p "$pg_data"
  [ "$(id -u)" -eq 0 ] && chown postgres "$pg_data"
  run_pg "'$pg_bin/initdb' -D '$pg_data' -A trust -U postgres --no-sync" >"$work/initdb.log" 2>&1 \
    || { cat "$work/initdb.log" >&2; exit 1; }
  run_pg "'$pg_bin/pg_ctl' -D '$pg_data' -l '$pg_data/server.log' -w -o \"-p $pg_port -k '$pg_data' -c listen_addresses=127.0.0.1 ${PG_EXTRA_OPTIONS:-} -c max_connections=400\" start" >/dev/null
  export POSTBOTE_TEST_PG_URL="postgres://postgres@127.0.0.1:$pg_port/postgres"
}
