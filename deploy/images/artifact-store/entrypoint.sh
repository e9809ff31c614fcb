#!/bin/sh
# Start vsftpd for the tenants' virtual FTP users. FLOPS_FTP_USERS lists them, separated by spaces, as
# NAME=VARIABLE: the user name and the environment variable that holds its password (the names the secrets file
# uses, e.g. flops_default=FLOPS_TENANT_DEFAULT_FTP_PASSWORD). Each user is chrooted to /srv/ftp/<user>, its
# artifacts under /srv/ftp/<user>/artifacts. Passive ports FLOPS_PASV_MIN_PORT..FLOPS_PASV_MAX_PORT, announced
# as FLOPS_PASV_ADDRESS (publish the same range on the host). FLOPS_FTP_TLS=true: explicit FTPS only (plain
# logins refused), with the certificate and key in the files FLOPS_FTP_TLS_CERT and FLOPS_FTP_TLS_KEY and the CA
# certificate FLOPS_FTP_CA_FILE (for the healthcheck), which compose mounts read-only under /etc/flops-tls.
# Oakestra passes no files: there FLOPS_FTP_TLS_CERT_B64, FLOPS_FTP_TLS_KEY_B64 and FLOPS_FTP_CA_B64 hold them as
# base64url (filled in by push), written to private files (0600, in a 0700 folder) that the three settings then name.
set -euf  # -f: no globbing of the words of FLOPS_FTP_USERS
fail() { echo "artifact-store: $*" >&2; exit 2; }
# One line matching an extended regex: grep alone would accept a value if any one of its lines matched.
valid() { case "$1" in *'
'*) return 1 ;; esac; printf '%s\n' "$1" | grep -Eq "$2"; }

users="${FLOPS_FTP_USERS:-}"
pasv_min="${FLOPS_PASV_MIN_PORT:-30000}"
pasv_max="${FLOPS_PASV_MAX_PORT:-30009}"
pasv_address="${FLOPS_PASV_ADDRESS:-127.0.0.1}"
[ -n "$users" ] || fail "FLOPS_FTP_USERS: required, e.g. flops_default=FLOPS_TENANT_DEFAULT_FTP_PASSWORD"
user_args="" first="" first_password="" variables=""
for entry in $users; do
    user="${entry%%=*}" variable="${entry#*=}"
    valid "$entry" '^[a-z_][a-z0-9_]{0,31}=[A-Z_][A-Z0-9_]{0,63}$' \
        || fail "FLOPS_FTP_USERS: '$entry' is not NAME=VARIABLE (a user name of lowercase letters, digits and _, then the name of the variable that holds its password)"
    eval "password=\${$variable:-}"
    [ -n "$password" ] || fail "$variable: required: the password of FTP user $user (set by flops-mlops secrets init)"
    case "$password" in placeholder-*) fail "$variable: still the .env.example placeholder; run flops-mlops secrets init" ;; esac
    user_args="$user_args --user $entry" variables="$variables $variable"
    [ -n "$first" ] || { first="$user"; first_password="$password"; }
done
for port in "$pasv_min" "$pasv_max"; do
    valid "$port" '^[0-9]{1,5}$' && [ "$port" -ge 1024 ] && [ "$port" -le 65535 ] \
        || fail "passive port '$port' is not a port 1024-65535"
done
[ "$pasv_min" -le "$pasv_max" ] || fail "FLOPS_PASV_MIN_PORT $pasv_min is above FLOPS_PASV_MAX_PORT $pasv_max"
valid "$pasv_address" '^([0-9]{1,3}\.){3}[0-9]{1,3}$' \
    || fail "FLOPS_PASV_ADDRESS: '$pasv_address' is not an IPv4 address"
tls="${FLOPS_FTP_TLS:-false}"
tls_args=""
case "$tls" in
    true)
        if [ -n "${FLOPS_FTP_TLS_CERT_B64:-}${FLOPS_FTP_TLS_KEY_B64:-}${FLOPS_FTP_CA_B64:-}" ]; then
            pem=$(mktemp -d /run/flops-pem.XXXXXX)  # 0700
            python3 /usr/local/lib/flops-artifact-store/pem_env.py "$pem" FLOPS_FTP_TLS_CERT_B64=ftp.crt \
                FLOPS_FTP_TLS_KEY_B64=ftp.key FLOPS_FTP_CA_B64=ca.crt || fail "FTPS files: see the line above"
            [ -z "${FLOPS_FTP_TLS_CERT_B64:-}" ] || FLOPS_FTP_TLS_CERT="$pem/ftp.crt"
            [ -z "${FLOPS_FTP_TLS_KEY_B64:-}" ] || FLOPS_FTP_TLS_KEY="$pem/ftp.key"
            [ -z "${FLOPS_FTP_CA_B64:-}" ] || FLOPS_FTP_CA_FILE="$pem/ca.crt"
            unset FLOPS_FTP_TLS_KEY_B64
        fi
        for file in "${FLOPS_FTP_TLS_CERT:=/etc/flops-tls/ftp.crt}" "${FLOPS_FTP_TLS_KEY:=/etc/flops-tls/ftp.key}" \
                    "${FLOPS_FTP_CA_FILE:=/etc/flops-tls/ca.crt}"; do
            valid "$file" '^/[A-Za-z0-9._/-]+$' \
                || fail "FTPS file '$file' is not an absolute path of letters, digits, ._/-"
            [ -f "$file" ] && [ -r "$file" ] \
                || fail "FLOPS_FTP_TLS is true, but '$file' is not a readable file (made by flops-mlops secrets init)"
        done
        tls_args="tls=true tls_certificate=$FLOPS_FTP_TLS_CERT tls_key=$FLOPS_FTP_TLS_KEY" ;;
    false) ;;
    *) fail "FLOPS_FTP_TLS: expected true or false, got '$tls'" ;;
esac

lib=/usr/local/lib/flops-artifact-store
run=/run/flops-artifact-store
# The healthcheck's netrc, readable only by the unprivileged user the healthcheck runs as.
check=/run/flops-artifact-store-check
mkdir -p "$check" /var/log/vsftpd
chmod 0700 "$check"
chown ftpcheck:ftpcheck "$check"

# The FTP users' routine every target runs (flops_mlops/stores/ftp_users.py): vsftpd's folder with the
# password hashes for pam_pwdfile (hashed by openssl, the passwords on stdin, never in argv), its empty
# secure_chroot_dir, and each user's chroot and artifacts folder on the volume, owned by the account the
# virtual users map to (0700). The passwords are read from the variables named, not passed.
# shellcheck disable=SC2086 # user_args: validated NAME=VARIABLE words
python3 "$lib/ftp_users.py" --home "$run" --empty /run/vsftpd/empty --ftp-root /srv/ftp --owner ftp $user_args

# netrc for the healthcheck's login, as the first user.
umask 077
printf 'machine 127.0.0.1 login %s password %s\n' "$first" "$first_password" >"$check/netrc"
chown ftpcheck:ftpcheck "$check/netrc"
umask 022

python3 "$lib/render.py" vsftpd.pam.j2 /etc/pam.d/flops-artifact-store 644 "passwd_file=$run/passwd"
# shellcheck disable=SC2086 # tls_args: validated paths
python3 "$lib/render.py" vsftpd.conf.j2 "$run/vsftpd.conf" 600 \
    listen_address=0.0.0.0 listen_port=21 os_user=ftp ftp_root=/srv/ftp pam_service=flops-artifact-store \
    "pasv_min_port=$pasv_min" "pasv_max_port=$pasv_max" "pasv_address=$pasv_address" \
    empty_dir=/run/vsftpd/empty log_file=/var/log/vsftpd/transfers.log $tls_args

# shellcheck disable=SC2086 # variables: validated names
unset $variables password first_password
echo "artifact-store: vsftpd for$(printf ' %s' $users | sed 's/=[A-Z0-9_]*//g'), passive ports" \
    "$pasv_min-$pasv_max announced as $pasv_address, FTPS only: $tls"
exec vsftpd "$run/vsftpd.conf"
