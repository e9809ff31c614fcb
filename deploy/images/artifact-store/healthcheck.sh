#!/bin/sh
# Healthy when the FTP user logs in and lists its chroot over a passive data connection (FLOPS_FTP_TLS=true:
# over explicit FTPS, the certificate verified against the deployment's CA for 127.0.0.1). Docker starts the
# healthcheck as root (the container's user, for vsftpd); it drops to the unprivileged user ftpcheck first,
# which owns only the netrc the entrypoint wrote.
set -eu
if [ "$(id -u)" = 0 ]; then
    exec setpriv --reuid=ftpcheck --regid=ftpcheck --clear-groups --inh-caps=-all "$0" "$@"
fi
if [ "${FLOPS_FTP_TLS:-false}" = true ]; then
    set -- --ssl-reqd --cacert "${FLOPS_FTP_CA_FILE:-/etc/flops-tls/ca.crt}"
else
    set --
fi
exec curl "$@" --silent --show-error --fail --max-time 5 --netrc-file /run/flops-artifact-store-check/netrc \
    --ftp-skip-pasv-ip --output /dev/null "ftp://127.0.0.1:21/"
