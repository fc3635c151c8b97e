"""CURVE key files and allowlists in committee's formats (see common/cm_curve.h).

BASENAME.pub holds one 40-character Z85 public key; BASENAME.key holds "public KEY" and
"secret KEY" lines; '#' lines and blank lines are ignored.  An allowlist is a file of
"KEY [NAME]" lines or a directory of NAME.pub files.
"""
import os

import zmq

Z85 = set("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#")


class KeyError_(Exception):
    """A key file or allowlist that cannot be used; the message names the file."""


def _is_key(text):
    return len(text) == 40 and set(text) <= Z85


def _lines(path):
    try:
        with open(path, encoding="ascii") as file:
            text = file.read()
    except (OSError, UnicodeDecodeError) as error:
        raise KeyError_(f"{path}: cannot read a key file: {error}") from None
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if line and not line.startswith("#"):
            yield number, line


def load_keypair(path):
    """(public, secret) Z85 strings from a BASENAME.key file."""
    found = {}
    for number, line in _lines(path):
        parts = line.split()
        if len(parts) == 2 and parts[0] in ("public", "secret") and _is_key(parts[1]):
            found[parts[0]] = parts[1]
        elif not _is_key(line):
            raise KeyError_(f"line {number} of {path} is not 'public KEY', 'secret KEY' or a "
                            "'#' comment")
    if "secret" not in found:
        raise KeyError_(f"{path} has no 'secret KEY' line; is it a key file from keygen?")
    derived = zmq.curve_public(found["secret"].encode()).decode()
    if found.get("public", derived) != derived:
        raise KeyError_(f"the public and secret keys in {path} do not belong together")
    return derived, found["secret"]


def load_public(path):
    """The one Z85 public key in a BASENAME.pub file."""
    keys = [line.split()[0] for _, line in _lines(path)]
    if len(keys) != 1 or not _is_key(keys[0]):
        raise KeyError_(f"{path} does not hold exactly one 40-character Z85 public key")
    return keys[0]


def load_allowlist(path):
    """{public key: name} from a file of "KEY [NAME]" lines or a directory of NAME.pub."""
    allowed = {}
    if os.path.isdir(path):
        for entry in sorted(os.listdir(path)):
            if entry.endswith(".pub"):
                allowed[load_public(os.path.join(path, entry))] = entry[:-4]
    else:
        for number, line in _lines(path):
            parts = line.split(None, 1)
            if not _is_key(parts[0]):
                raise KeyError_(f"line {number} of {path} is not a 40-character Z85 key")
            allowed[parts[0]] = parts[1] if len(parts) > 1 else ""
    if not allowed:
        raise KeyError_(f"the allowlist {path} holds no keys; nobody could connect")
    return allowed


def write_keypair(basename):
    """Writes BASENAME.key (mode 0600) and BASENAME.pub; returns the public key (tests)."""
    public, secret = (key.decode() for key in zmq.curve_keypair())
    descriptor = os.open(basename + ".key", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(f"# committee CURVE secret key: keep it private\npublic {public}\n"
                   f"secret {secret}\n")
    with open(basename + ".pub", "w") as file:
        file.write(public + "\n")
    return public
