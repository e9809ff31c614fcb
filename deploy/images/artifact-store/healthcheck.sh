#!/bin/sh
# Healthy when the FTP user logs in and lists its chroot over a passive data connection.
exec curl --silent --show-error --fail --max-time 5 --netrc-file /run/flops-artifact-store/netrc \
    --ftp-skip-pasv-ip --output /dev/null "ftp://127.0.0.1:21/"
