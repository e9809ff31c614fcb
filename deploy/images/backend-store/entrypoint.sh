#!/bin/bash
# The official MySQL image's environment contract, on Debian's MariaDB (our backend-store image, see Dockerfile).
# First start (empty datadir): initialise, set the root password, create MYSQL_DATABASE and MYSQL_USER
# (ALL on that database only), run /docker-entrypoint-initdb.d/*.sh (sourced) and *.sql, all on a temporary
# server without networking; then start the real server.
# Every later start (ours, not the official image's): the initdb.d scripts named in FLOPS_RERUN_ON_START
# (space-separated file names, each safe to run again) run again on such a temporary server, so tenants added
# to the configuration, or databases a newer release needs, appear on an existing data volume too.
# FLOPS_MYSQL_TLS=true (ours; backend_store.tls): the server speaks TLS with /etc/flops-tls/mysql.crt and .key
# (compose secrets: root's files, mode 0600), so the entrypoint must start as root; it gives mariadbd its own
# copies, mysql's and mode 0600, in /run/mysqld/tls (the container's memory-backed /run, not the data volume).
set -euo pipefail
SOCKET=/run/mysqld/mysqld.sock
DATADIR=/var/lib/mysql
log() { echo "backend-store-entrypoint: $*"; }
fail() { echo "backend-store-entrypoint: $*" >&2; exit 2; }

sql_string() { printf "'%s'" "$(printf '%s' "$1" | sed -e "s/\\\\/\\\\\\\\/g" -e "s/'/''/g")"; }

# The official image's helper: run SQL on the temporary server as root (password from a defaults file,
# never in argv); initdb.d shell scripts may call it.
docker_process_sql() {
    local defaults=/run/mysqld/root.cnf
    if [ -n "${MYSQL_DATABASE:-}" ]; then
        set -- --database="$MYSQL_DATABASE" "$@"
    fi
    mariadb --defaults-extra-file="$defaults" --protocol=socket -uroot --socket="$SOCKET" --comments "$@"
}

# A server on the socket only, for the first start's set-up and the later starts' reruns.
start_temporary_server() {
    mariadbd --user=mysql --datadir="$DATADIR" --skip-networking --socket="$SOCKET" &
    TEMPORARY_PID=$!
    for _ in $(seq 1 60); do
        mariadb-admin --socket="$SOCKET" -uroot ping >/dev/null 2>&1 && return 0
        kill -0 "$TEMPORARY_PID" 2>/dev/null || fail "the temporary server exited (see the lines above)"
        sleep 1
    done
    fail "the temporary server did not answer on $SOCKET within 60 s"
}

# root's password for docker_process_sql, in a 0600 file (never in argv).
write_root_defaults() {
    umask 077
    printf '[client]\npassword="%s"\n' "$(printf '%s' "$MYSQL_ROOT_PASSWORD" | sed 's/["\\]/\\&/g')" \
        >/run/mysqld/root.cnf
    umask 022
}

stop_temporary_server() {
    mariadb-admin --defaults-extra-file=/run/mysqld/root.cnf --socket="$SOCKET" -uroot shutdown >/dev/null 2>&1 \
        || kill "$TEMPORARY_PID"
    wait "$TEMPORARY_PID" || true
    rm -f /run/mysqld/root.cnf
}

initialise() {
    [ -n "${MYSQL_ROOT_PASSWORD:-}" ] || fail "MYSQL_ROOT_PASSWORD is required"
    if [ -n "${MYSQL_DATABASE:-}" ]; then
        [[ "$MYSQL_DATABASE" =~ ^[A-Za-z0-9_]{1,64}$ ]] || fail "MYSQL_DATABASE: not a plain database name"
    fi
    if [ -n "${MYSQL_USER:-}" ]; then
        [[ "$MYSQL_USER" =~ ^[A-Za-z0-9_]{1,32}$ ]] || fail "MYSQL_USER: not a plain user name"
        [ -n "${MYSQL_PASSWORD:-}" ] || fail "MYSQL_PASSWORD is required with MYSQL_USER"
    fi
    log "initialising $DATADIR"
    mariadb-install-db --user=mysql --datadir="$DATADIR" --skip-test-db --auth-root-authentication-method=normal \
        >/tmp/install-db.log 2>&1 || { cat /tmp/install-db.log >&2; exit 1; }
    start_temporary_server
    local root_password
    root_password="$(sql_string "$MYSQL_ROOT_PASSWORD")"
    mariadb --protocol=socket --socket="$SOCKET" -uroot <<SQL
ALTER USER 'root'@'localhost' IDENTIFIED BY ${root_password};
CREATE USER 'root'@'%' IDENTIFIED BY ${root_password};
GRANT ALL PRIVILEGES ON *.* TO 'root'@'%' WITH GRANT OPTION;
FLUSH PRIVILEGES;
SQL
    write_root_defaults
    if [ -n "${MYSQL_DATABASE:-}" ]; then
        docker_process_sql --database=mysql <<<"CREATE DATABASE IF NOT EXISTS \`$MYSQL_DATABASE\`;"
    fi
    if [ -n "${MYSQL_USER:-}" ]; then
        docker_process_sql --database=mysql <<SQL
CREATE USER '$MYSQL_USER'@'%' IDENTIFIED BY $(sql_string "$MYSQL_PASSWORD");
${MYSQL_DATABASE:+GRANT ALL PRIVILEGES ON \`$MYSQL_DATABASE\`.* TO '$MYSQL_USER'@'%';}
SQL
    fi
    local f
    for f in /docker-entrypoint-initdb.d/*; do
        case "$f" in
            *.sh)  log "sourcing $f"; . "$f" ;;
            *.sql) log "running $f"; docker_process_sql <"$f" ;;
            *)     [ -e "$f" ] && log "ignoring $f" ;;
        esac
    done
    stop_temporary_server
    log "initialised"
}

rerun_on_start() {
    local name f
    [ -n "${FLOPS_RERUN_ON_START:-}" ] || return 0
    [ -n "${MYSQL_ROOT_PASSWORD:-}" ] || fail "MYSQL_ROOT_PASSWORD is required to run FLOPS_RERUN_ON_START"
    start_temporary_server
    write_root_defaults
    for name in $FLOPS_RERUN_ON_START; do
        [[ "$name" =~ ^[A-Za-z0-9_.-]+$ ]] || fail "FLOPS_RERUN_ON_START: $name is not a file name"
        f="/docker-entrypoint-initdb.d/$name"
        [ -f "$f" ] || fail "FLOPS_RERUN_ON_START names $name, which /docker-entrypoint-initdb.d does not hold"
        case "$f" in
            *.sh)  log "sourcing $f again"; . "$f" ;;
            *.sql) log "running $f again"; docker_process_sql <"$f" ;;
            *)     fail "FLOPS_RERUN_ON_START: $name is neither .sh nor .sql" ;;
        esac
    done
    stop_temporary_server
}

# With FLOPS_MYSQL_TLS: mariadbd's copies of the certificate, key and CA; prints the server options naming them.
tls_options() {
    local dir=/run/mysqld/tls name
    case "${FLOPS_MYSQL_TLS:-false}" in
        false) return 0 ;;
        true) ;;
        *) fail "FLOPS_MYSQL_TLS: expected true or false, got '$FLOPS_MYSQL_TLS'" ;;
    esac
    [ "$(id -u)" = 0 ] || fail "FLOPS_MYSQL_TLS is true, so start as root (the key is root's; mariadbd gets a copy)"
    install -d -o mysql -g mysql -m 700 "$dir"
    for name in mysql.crt mysql.key ca.crt; do
        [ -r "/etc/flops-tls/$name" ] || fail "FLOPS_MYSQL_TLS is true, but /etc/flops-tls/$name is missing " \
            "(flops-mlops secrets init makes it beside the secrets file)"
        install -o mysql -g mysql -m 600 "/etc/flops-tls/$name" "$dir/$name"
    done
    echo "--ssl-ca=$dir/ca.crt --ssl-cert=$dir/mysql.crt --ssl-key=$dir/mysql.key"
}

if [ "${1:-}" = mariadbd ] || [ "${1:-}" = mysqld ]; then
    shift
    chown -R mysql:mysql "$DATADIR" /run/mysqld
    TLS_OPTIONS="$(tls_options)"
    if [ ! -d "$DATADIR/mysql" ]; then
        initialise
    else
        rerun_on_start
    fi
    # shellcheck disable=SC2086 # TLS_OPTIONS: options without spaces, split on purpose
    exec mariadbd --user=mysql --datadir="$DATADIR" --socket="$SOCKET" --bind-address=0.0.0.0 --port=3306 \
        --skip-name-resolve $TLS_OPTIONS "$@"
fi
exec "$@"
