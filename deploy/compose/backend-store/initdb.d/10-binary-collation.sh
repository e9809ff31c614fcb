#!/bin/bash
# Sourced by the MySQL image's entrypoint on the first start (docker_process_sql is its helper): give the
# tenant database utf8mb4 with a binary NO PAD collation, so MLflow keys that differ only in case stay
# distinct. MySQL 8: utf8mb4_0900_bin; MariaDB (the CI stand-in): utf8mb4_nopad_bin.
if ! command -v docker_process_sql >/dev/null 2>&1; then
    # Executed rather than sourced (when the file is executable): talk to the first-start server
    # over its socket as root, the password from the environment (not argv).
    docker_process_sql() { MYSQL_PWD="$MYSQL_ROOT_PASSWORD" mysql --protocol=socket -uroot "$@"; }
fi
# [[ =~ ]] matches the whole value (grep would accept any one line of a multi-line value).
if ! [[ "${MYSQL_DATABASE:-}" =~ ^[A-Za-z0-9_]{1,64}$ ]]; then
    echo "10-binary-collation.sh: MYSQL_DATABASE '${MYSQL_DATABASE:-}' is not a plain database name" >&2
    exit 1
fi
flops_collation="$(docker_process_sql --database=mysql --batch --skip-column-names <<'SQL'
SELECT COLLATION_NAME FROM information_schema.COLLATIONS
 WHERE COLLATION_NAME IN ('utf8mb4_0900_bin', 'utf8mb4_nopad_bin')
 ORDER BY COLLATION_NAME = 'utf8mb4_0900_bin' DESC LIMIT 1;
SQL
)"
if [ -z "$flops_collation" ]; then
    echo "10-binary-collation.sh: the server has neither utf8mb4_0900_bin nor utf8mb4_nopad_bin" >&2
    exit 1
fi
docker_process_sql --database=mysql <<SQL
ALTER DATABASE \`${MYSQL_DATABASE}\` CHARACTER SET utf8mb4 COLLATE ${flops_collation};
SQL
echo "10-binary-collation.sh: database ${MYSQL_DATABASE} uses utf8mb4 / ${flops_collation}"
unset flops_collation
