#!/bin/sh
# Healthcheck of the tracking-server image (compose.yaml runs it every 10 s): a shell and one curl per check, no
# Python, so an idle tracking container costs next to nothing (bench/tracking_healthcheck.py measures it).
# /health answers 200 even with the database down. Healthy (exit 0) means: logged in as admin with
# FLOPS_ADMIN_PASSWORD, the server reads the default experiment (so its database answers), and every FL project
# user named in FLOPS_FL_USERS ("project:password,...") exists, so an aggregator never starts before its login
# works. The password reaches curl on its standard input (a config line written by printf, a shell builtin),
# never on a command line; the reasons printed name status codes and users, never a secret.
# With FLOPS_TLS=true (tracking.tls) it speaks HTTPS and verifies the server against the deployment's CA
# (FLOPS_TLS_CA_FILE, default /etc/flops-tls/ca.crt), for the name 127.0.0.1; never --insecure.
set -euf
port="${FLOPS_PORT:-5000}"
case "$port" in '' | *[!0-9]*) echo "healthcheck: FLOPS_PORT: '$port' is not a port"; exit 1 ;; esac
scheme=http
ca=""
case "${FLOPS_TLS:-false}" in
    true) scheme=https; ca="${FLOPS_TLS_CA_FILE:-/etc/flops-tls/ca.crt}"
          [ -r "$ca" ] || { echo "healthcheck: FLOPS_TLS_CA_FILE: cannot read '$ca'"; exit 1; } ;;
    false) ;;
    *) echo "healthcheck: FLOPS_TLS: expected true or false, got '${FLOPS_TLS}'"; exit 1 ;;
esac
[ -n "${FLOPS_ADMIN_PASSWORD:-}" ] || { echo "healthcheck: FLOPS_ADMIN_PASSWORD: required"; exit 1; }
# In curl's config syntax, inside double quotes, only \ and " need escaping.
login="$(printf '%s' "$FLOPS_ADMIN_PASSWORD" | sed 's/[\\"]/\\&/g')"

check() {  # check PATH WHAT: fails, saying why, unless GET PATH answers 200 to the admin
    status="$(printf 'user = "admin:%s"\n' "$login" | curl --config - --silent --max-time 4 --output /dev/null \
        ${ca:+--cacert "$ca"} --write-out '%{http_code}' "$scheme://127.0.0.1:$port$1")" || true
    case "$status" in
        200) return 0 ;;
        000 | '') echo "healthcheck: $2: no answer" ;;
        401) echo "healthcheck: $2: HTTP 401: the admin password was refused (the auth database keeps the one it was created with)" ;;
        404) echo "healthcheck: $2: HTTP 404: not there (yet)" ;;
        *) echo "healthcheck: $2: HTTP $status" ;;
    esac
    exit 1
}

check "/api/2.0/mlflow/experiments/get?experiment_id=0" "the default experiment (database)"
users=""
for item in $(printf '%s' "${FLOPS_FL_USERS:-}" | tr ',' ' '); do
    project="${item%%:*}"
    case "$project" in
        '' | *[!A-Za-z0-9]* | [!A-Za-z]*) echo "healthcheck: FLOPS_FL_USERS: item for '$project' is not project:password"; exit 1 ;;
    esac
    check "/api/2.0/mlflow/users/get?username=fl-$project" "FL project user fl-$project"
    users="$users fl-$project"
done
echo "healthcheck: ok (database readable as admin; FL project users:${users:- none})"
