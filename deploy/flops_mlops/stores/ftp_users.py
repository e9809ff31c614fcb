"""The artifact store's FTP users, defined once: their password file and folders, with owners and modes.

vsftpd serves virtual users (pam_pwdfile): a password file of crypt(3) hashes, one line per user, which vsftpd
reads as root from its own folder (0700). Each user is chrooted to <ftp root>/<user>; the FTP account the
users map to passes through the FTP root (0711) into the users' folders and their artifacts folders, which it
alone may read (0700). vsftpd's empty secure_chroot_dir is root's (0711).

Run by `flops-mlops up` (stores/vsftpd.py), by the artifact-store image's entrypoint (this file is copied into
the image, which has Debian's python3 but not our package: standard library only) and by pyinfra (which puts
the same folders and password file on a host: deploy/pyinfra/tasks/artifact_store.py). The hash is computed
here only: by openssl, with the password on stdin, never in argv.

    python3 ftp_users.py --home DIR --empty DIR --ftp-root DIR --owner ACCOUNT --user NAME=ENV_VARIABLE...

writes DIR/passwd and the folders; each user's password is read from the environment variable named.
"""

from __future__ import annotations

import argparse
import os
import pwd
import re
import secrets as random_source
import string
import subprocess
import sys
from dataclasses import dataclass

HOME_MODE = 0o700  # vsftpd's own folder: settings and the password file, root's
EMPTY_MODE = 0o711  # vsftpd's secure_chroot_dir: empty, root's
FTP_ROOT_MODE = 0o711  # passed through, never listed
USER_MODE = 0o700  # a user's chroot and its artifacts folder: the FTP account's alone
PASSWD_MODE = 0o600
ARTIFACTS = "artifacts"  # a user's artifacts folder, in its chroot (the tracking server's FTP path /artifacts)
USER_PATTERN = re.compile(r"^[a-z_][a-z0-9_]{0,31}$")
SALT_ALPHABET = string.ascii_letters + string.digits + "./"


@dataclass(frozen=True)
class Folder:
    path: str
    mode: int
    owner: str | None  # None: root (the account vsftpd runs as)


def _user(name: str) -> str:
    if not USER_PATTERN.fullmatch(name):
        raise ValueError(f"{name!r} is not a valid FTP user name (a lowercase letter or _, then lowercase letters, "
                         "digits or _; at most 32)")
    return name


def passwd_path(home: str) -> str:
    return f"{home}/passwd"


def folders(home: str, empty: str, ftp_root: str, users: list[str], owner: str) -> list[Folder]:
    """Every folder the store needs, parents first."""
    found = [Folder(home, HOME_MODE, None), Folder(empty, EMPTY_MODE, None), Folder(ftp_root, FTP_ROOT_MODE, None)]
    for user in users:
        chroot = f"{ftp_root}/{_user(user)}"
        found += [Folder(chroot, USER_MODE, owner), Folder(f"{chroot}/{ARTIFACTS}", USER_MODE, owner)]
    return found


def password_hash(password: str, salt: str | None = None) -> str:
    """SHA-512 crypt(3) hash by openssl, the password on stdin (never in argv); a random salt unless given."""
    salt = salt or "".join(random_source.choice(SALT_ALPHABET) for _ in range(16))
    result = subprocess.run(["openssl", "passwd", "-6", "-salt", salt, "-stdin"], input=password + "\n",
                            capture_output=True, text=True, check=True)
    return result.stdout.strip()


def _salts(existing: str) -> dict[str, str]:
    """user -> salt of the hashes already written, so an unchanged password gives an unchanged file."""
    salts = {}
    for line in existing.splitlines():
        user, _, hashed = line.partition(":")
        parts = hashed.split("$")
        if len(parts) == 4 and parts[1] == "6" and parts[2] and all(c in SALT_ALPHABET for c in parts[2]):
            salts[user] = parts[2]
    return salts


def passwd_text(users: list[tuple[str, str]], existing: str = "") -> str:
    """The password file for pam_pwdfile: ``user:hash`` lines, for (user, password) pairs. Salts of
    ``existing`` (the file as it is) are kept."""
    salts = _salts(existing)
    return "".join(f"{_user(user)}:{password_hash(password, salts.get(user))}\n" for user, password in users)


def apply(folders_: list[Folder], passwd_file: str, text: str) -> None:
    """Create the folders (owner and mode set every time) and write the password file (0600), on this machine."""
    for folder in folders_:
        os.makedirs(folder.path, exist_ok=True)
        if folder.owner is not None:
            account = pwd.getpwnam(folder.owner)
            os.chown(folder.path, account.pw_uid, account.pw_gid)
        os.chmod(folder.path, folder.mode)
    tmp = os.path.join(os.path.dirname(passwd_file), f".{os.path.basename(passwd_file)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PASSWD_MODE)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.chmod(tmp, PASSWD_MODE)
    os.replace(tmp, passwd_file)


def install(home: str, empty: str, ftp_root: str, owner: str, users: list[tuple[str, str]]) -> None:
    """Folders and password file of (user, password) pairs, on this machine."""
    path = passwd_path(home)
    existing = ""
    if os.path.exists(path):
        with open(path, encoding="utf-8") as handle:
            existing = handle.read()
    text = passwd_text(users, existing)
    apply(folders(home, empty, ftp_root, [user for user, _ in users], owner), path, text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="FTP users of the artifact store: password file and folders")
    for option in ("--home", "--empty", "--ftp-root", "--owner"):
        parser.add_argument(option, required=True)
    parser.add_argument("--user", action="append", required=True, metavar="NAME=ENV_VARIABLE",
                        help="an FTP user and the environment variable that holds its password")
    args = parser.parse_args(argv)
    users = []
    for item in args.user:
        name, _, variable = item.partition("=")
        password = os.environ.get(variable, "")
        if not password:
            print(f"ftp_users: {variable or '?'}: no password for FTP user {name!r}", file=sys.stderr)
            return 2
        try:
            users.append((_user(name), password))
        except ValueError as exc:
            print(f"ftp_users: {exc}", file=sys.stderr)
            return 2
    install(args.home, args.empty, args.ftp_root, args.owner, users)
    return 0


if __name__ == "__main__":
    sys.exit(main())
