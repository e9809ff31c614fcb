#!/bin/sh
# Start vsftpd for one virtual FTP user: FLOPS_FTP_USER / FLOPS_FTP_PASSWORD, chrooted to /srv/ftp/<user>,
# artifacts under /srv/ftp/<user>/artifacts. Passive ports FLOPS_PASV_MIN_PORT..FLOPS_PASV_MAX_PORT, announced
# as FLOPS_PASV_ADDRESS (publish the same range on the host).
set -eu
fail() { echo "artifact-store: $*" >&2; exit 2; }
# One line matching an extended regex: grep alone would accept a value if any one of its lines matched.
valid() { case "$1" in *'
'*) return 1 ;; esac; printf '%s\n' "$1" | grep -Eq "$2"; }

user="${FLOPS_FTP_USER:-}"
password="${FLOPS_FTP_PASSWORD:-}"
pasv_min="${FLOPS_PASV_MIN_PORT:-30000}"
pasv_max="${FLOPS_PASV_MAX_PORT:-30009}"
pasv_address="${FLOPS_PASV_ADDRESS:-127.0.0.1}"
valid "$user" '^[a-z_][a-z0-9_]{0,31}$' || fail "FLOPS_FTP_USER: '$user' is not a valid user name"
[ -n "$password" ] || fail "FLOPS_FTP_PASSWORD: required (set by flops-mlops secrets init)"
case "$password" in placeholder-*) fail "FLOPS_FTP_PASSWORD: still the .env.example placeholder; run flops-mlops secrets init" ;; esac
for port in "$pasv_min" "$pasv_max"; do
    valid "$port" '^[0-9]{1,5}$' && [ "$port" -ge 1024 ] && [ "$port" -le 65535 ] \
        || fail "passive port '$port' is not a port 1024-65535"
done
[ "$pasv_min" -le "$pasv_max" ] || fail "FLOPS_PASV_MIN_PORT $pasv_min is above FLOPS_PASV_MAX_PORT $pasv_max"
valid "$pasv_address" '^([0-9]{1,3}\.){3}[0-9]{1,3}$' \
    || fail "FLOPS_PASV_ADDRESS: '$pasv_address' is not an IPv4 address"

lib=/usr/local/lib/flops-artifact-store
run=/run/flops-artifact-store
# The healthcheck's netrc, readable only by the unprivileged user the healthcheck runs as.
check=/run/flops-artifact-store-check
mkdir -p "$check" /var/log/vsftpd
chmod 0700 "$check"
chown ftpcheck:ftpcheck "$check"

# The FTP users' routine every target runs (flops_mlops/stores/ftp_users.py): vsftpd's folder with the
# password hash for pam_pwdfile (hashed by openssl, the password on stdin, never in argv), its empty
# secure_chroot_dir, and the user's chroot and artifacts folder on the volume, owned by the account the
# virtual users map to (0700). The password is read from FLOPS_FTP_PASSWORD, not passed.
python3 "$lib/ftp_users.py" --home "$run" --empty /run/vsftpd/empty --ftp-root /srv/ftp --owner ftp \
    --user "$user=FLOPS_FTP_PASSWORD"

# netrc for the healthcheck's login.
umask 077
printf 'machine 127.0.0.1 login %s password %s\n' "$user" "$password" >"$check/netrc"
chown ftpcheck:ftpcheck "$check/netrc"
umask 022

python3 "$lib/render.py" vsftpd.pam.j2 /etc/pam.d/flops-artifact-store 644 "passwd_file=$run/passwd"
python3 "$lib/render.py" vsftpd.conf.j2 "$run/vsftpd.conf" 600 \
    listen_address=0.0.0.0 listen_port=21 os_user=ftp ftp_root=/srv/ftp pam_service=flops-artifact-store \
    "pasv_min_port=$pasv_min" "pasv_max_port=$pasv_max" "pasv_address=$pasv_address" \
    empty_dir=/run/vsftpd/empty log_file=/var/log/vsftpd/transfers.log

unset FLOPS_FTP_PASSWORD password
echo "artifact-store: vsftpd for $user, passive ports $pasv_min-$pasv_max announced as $pasv_address"
exec vsftpd "$run/vsftpd.conf"
