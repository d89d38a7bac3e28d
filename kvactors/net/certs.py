"""Certificates, roles and the trust set: who may connect, and what each may do.

Every node and every client has a CURVE key pair, kept in two text files in the
certificate format of `zmq.auth` (ZPL: sections at the left margin, `name = "value"`
properties indented by four spaces):

    DIR/NAME.key          the public certificate: handed to whoever must trust NAME
    DIR/NAME.key_secret   the secret certificate: stays with NAME, mode 0600

Both files carry the name and the role in their `metadata` section (pyzmq's
`create_certificates` writes metadata into the secret file only, and its
`load_certificate` ignores metadata, so this module writes and reads the files itself).
A `node` certificate also carries an Ed25519 key pair for signing gossip (CURVE's X25519
keys cannot sign): the verify key as `sign-key` in both files, the signing key (its
32-byte seed) as `sign-secret-key` in the secret file only:

    metadata
        name = "node-a"
        role = "node"
        sign-key = "<40 characters of Z85>"
        sign-secret-key = "<40 characters of Z85>"       (secret file only)
    curve
        public-key = "<40 characters of Z85>"
        secret-key = "<40 characters of Z85>"            (secret file only)

Every key, in the files and in `Certificate`, is the 40-byte Z85 form (RFC 32) of the
32-byte key, which is what zmq's CURVE socket options take; `z85_key` turns a raw key
(as a ZAP request carries it) into that form. Unknown metadata properties are kept out
of `Certificate` but do not make a file bad, so later releases can add some.

The roles (`Role`) and what each may ask on the client plane (`role_allows`):

    read    get, get_many, status, ping; and scan, keys, backup once they exist
    write   what read may, and put, delete, put_many; and cas, increment once they exist
    admin   what write may, and leave, remove; and restore once it exists
    node    what admin may. A node joins a cluster, and is asked to leave, through
            client calls, so a node's key needs admin's authority on the client plane.
            The peer plane admits node keys only (its ZAP domain refuses every other
            role at the handshake), so every peer-plane call comes from a node and
            `role_allows` is not consulted there.

An operation this module does not know is refused for every role: a new operation that
nobody added to the tables shows up as `forbidden`, never as an open door.

`TrustSet` holds the public certificates of a trust directory (its `*.key` files) and
answers "who is this key?" and "what are NAME's keys?"; `reload` re-reads the directory
(on SIGHUP or a timer) so that removing a file withdraws its key's access.
"""

from __future__ import annotations

import datetime
import os
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Final

import nacl.signing
import zmq
from zmq.utils import z85

from kvactors.errors import ConfigError

__all__ = [
    "MAX_CERTIFICATE_BYTES",
    "MAX_NAME_BYTES",
    "PUBLIC_SUFFIX",
    "SECRET_SUFFIX",
    "Certificate",
    "Role",
    "TrustSet",
    "check_name",
    "load_certificate",
    "role_allows",
    "write_key_pair",
    "z85_key",
]

PUBLIC_SUFFIX: Final = ".key"
SECRET_SUFFIX: Final = ".key_secret"
MAX_NAME_BYTES: Final = 255
# A certificate is a few hundred bytes; a file far larger is not one, and reading it whole
# (a trust dir is read on every reload) must stay cheap.
MAX_CERTIFICATE_BYTES: Final = 64 * 1024
_KEY_BYTES: Final = 32
_Z85_KEY_BYTES: Final = 40
_INDENT: Final = "    "
_SECRET_MODE: Final = 0o600
_PUBLIC_MODE: Final = 0o644


class Role(StrEnum):
    """What a key may do; the value is how files and ZAP metadata spell it."""

    NODE = "node"
    READ = "read"
    WRITE = "write"
    ADMIN = "admin"


# Client-plane operations by the least role that may ask them. Some name operations that
# do not exist yet (scan, keys, backup, cas, increment, remove, restore), so that adding
# them needs no change here if they keep these names.
_READ_OPS: Final = frozenset({"get", "get_many", "status", "ping", "scan", "keys", "backup"})
_WRITE_OPS: Final = _READ_OPS | {"put", "delete", "put_many", "cas", "increment"}
_ADMIN_OPS: Final = _WRITE_OPS | {"leave", "remove", "restore"}
_ALLOWED_OPS: Final[Mapping[Role, frozenset[str]]] = {
    Role.READ: _READ_OPS,
    Role.WRITE: _WRITE_OPS,
    Role.ADMIN: _ADMIN_OPS,
    Role.NODE: _ADMIN_OPS,  # nodes join and leave through client calls: see the module doc
}


def role_allows(role: Role, op_name: str) -> bool:
    """Whether a key of `role` may ask the client-plane operation `op_name`.

    Unknown operations are refused for every role. The peer plane does not use this: its
    handshake admits node keys only."""
    return op_name in _ALLOWED_OPS.get(role, frozenset())


@dataclass(frozen=True)
class Certificate:
    """One certificate file, read and checked.

    Every key is the 40-byte Z85 form. `secret_key` and `sign_secret_key` are set only
    when read from a secret file; `sign_key` and `sign_secret_key` only for role node
    (every node certificate has its `sign_key`, every node secret file its
    `sign_secret_key`)."""

    name: str
    role: Role
    public_key: bytes
    secret_key: bytes | None = None
    sign_key: bytes | None = None
    sign_secret_key: bytes | None = None

    def __repr__(self) -> str:
        # Never print a secret: certificates end up in log lines and test failures.
        secret = ", with secret key" if self.secret_key is not None else ""
        return f"Certificate({self.name!r}, {self.role.value}, {self.public_key.decode()}{secret})"

    @property
    def is_secret(self) -> bool:
        return self.secret_key is not None

    def public(self) -> Certificate:
        """This certificate without its secrets: what a trust dir holds."""
        return Certificate(self.name, self.role, self.public_key, sign_key=self.sign_key)

    def verify_key(self) -> nacl.signing.VerifyKey:
        """The Ed25519 key that checks this node's signatures; ConfigError if none."""
        if self.sign_key is None:
            raise ConfigError(f"certificate {self.name!r} ({self.role.value}) has no sign-key")
        return nacl.signing.VerifyKey(z85.decode(self.sign_key))

    def signing_key(self) -> nacl.signing.SigningKey:
        """The Ed25519 key this node signs with; ConfigError unless a node's secret file."""
        if self.sign_secret_key is None:
            raise ConfigError(
                f"certificate {self.name!r} ({self.role.value}) has no sign-secret-key"
            )
        return nacl.signing.SigningKey(z85.decode(self.sign_secret_key))


def check_name(name: object) -> str:
    """`name` if it may name a certificate (and so a node or client), else ConfigError.

    A name is printable text (no control characters, no line breaks), no leading or
    trailing space, no path separator, and at most 255 bytes of UTF-8."""
    if not isinstance(name, str) or not name:
        raise ConfigError(f"a certificate name must be non-empty text, not {name!r}")
    if not name.isprintable():
        raise ConfigError(f"certificate name {name!r} has a control or non-printable character")
    if name != name.strip():
        raise ConfigError(f"certificate name {name!r} starts or ends with a space")
    separators = {"/", "\\", os.sep, *([os.altsep] if os.altsep else [])}
    if any(sep in name for sep in separators) or name in (".", ".."):
        raise ConfigError(f"certificate name {name!r} is not a plain file name")
    if len(name.encode()) > MAX_NAME_BYTES:
        raise ConfigError(
            f"certificate name {name[:40]!r}... is {len(name.encode())} bytes; "
            f"at most {MAX_NAME_BYTES}"
        )
    return name


def z85_key(key: bytes) -> bytes:
    """A 32-byte key in its 40-byte Z85 form; a Z85 key is checked and returned as is.

    ValueError if `key` is neither."""
    if len(key) == _KEY_BYTES:
        return z85.encode(key)
    if len(key) == _Z85_KEY_BYTES and _canonical_z85(key):
        return bytes(key)
    raise ValueError(f"not a 32-byte key or its 40-byte Z85 form: {len(key)} bytes")


def _canonical_z85(text: bytes) -> bool:
    """Whether `text` is the one Z85 spelling of some bytes (so equal keys compare equal)."""
    if any(char not in z85.Z85MAP for char in text):
        return False
    try:
        return z85.encode(z85.decode(text)) == text
    except Exception:  # a 5-character group over 2**32 - 1: struct.error
        return False


# Writing ------------------------------------------------------------------------------


def write_key_pair(
    directory: str | os.PathLike[str], name: str, role: Role | str = Role.NODE
) -> tuple[Path, Path]:
    """Make a new key pair for `name` and write DIR/NAME.key and DIR/NAME.key_secret.

    Returns (public path, secret path). The directory is made if missing; the secret file
    is mode 0600. Existing files are never overwritten (ConfigError: a key pair in use is
    replaced on purpose, by removing it first). A `node` pair also gets its Ed25519
    signing keys. ConfigError for a bad name or role, or a file that cannot be written;
    a name is at most 244 bytes here, so that the secret file's name fits in 255."""
    name = check_name(name)
    if len(name.encode()) + len(SECRET_SUFFIX) > MAX_NAME_BYTES:
        # A file name is at most 255 bytes on common file systems, suffix included.
        raise ConfigError(
            f"name {name[:40]!r}... is too long for a key file: at most "
            f"{MAX_NAME_BYTES - len(SECRET_SUFFIX)} bytes (with {SECRET_SUFFIX}, {MAX_NAME_BYTES})"
        )
    role = _role(role, "the role")
    folder = Path(directory)
    public_path = folder / f"{name}{PUBLIC_SUFFIX}"
    secret_path = folder / f"{name}{SECRET_SUFFIX}"
    public_key, secret_key = zmq.curve_keypair()
    metadata = {"name": name, "role": role.value}
    secret_metadata = dict(metadata)
    if role is Role.NODE:
        signing = nacl.signing.SigningKey.generate()
        metadata["sign-key"] = z85.encode(bytes(signing.verify_key)).decode()
        secret_metadata["sign-key"] = metadata["sign-key"]
        secret_metadata["sign-secret-key"] = z85.encode(bytes(signing)).decode()
    written: list[Path] = []
    try:
        folder.mkdir(parents=True, exist_ok=True)
        # The secret first: a public certificate whose secret was never written is useless.
        _write_new(
            secret_path,
            _render(_SECRET_BANNER, secret_metadata, public_key, secret_key),
            _SECRET_MODE,
        )
        written.append(secret_path)
        _write_new(public_path, _render(_PUBLIC_BANNER, metadata, public_key), _PUBLIC_MODE)
        written.append(public_path)
    except OSError as exc:
        for path in written:
            path.unlink(missing_ok=True)
        raise ConfigError(f"cannot write the key pair of {name!r} in {folder}: {exc}") from exc
    return public_path, secret_path


_SECRET_BANNER: Final = """\
#   ****  Generated on {when} by kvactors keygen  ****
#   ZeroMQ CURVE **Secret** Certificate
#   DO NOT PROVIDE THIS FILE TO OTHER USERS nor change its permissions.
"""
_PUBLIC_BANNER: Final = """\
#   ****  Generated on {when} by kvactors keygen  ****
#   ZeroMQ CURVE Public Certificate
#   Give this file to the nodes (their trust dir) and clients that must trust it.
"""


def _render(
    banner: str, metadata: Mapping[str, str], public_key: bytes, secret_key: bytes | None = None
) -> str:
    when = datetime.datetime.now(datetime.UTC).replace(microsecond=0).isoformat()
    lines = [banner.format(when=when), "metadata"]
    lines += [f'{_INDENT}{key} = "{value}"' for key, value in metadata.items()]
    lines += ["curve", f'{_INDENT}public-key = "{public_key.decode()}"']
    if secret_key is not None:
        lines.append(f'{_INDENT}secret-key = "{secret_key.decode()}"')
    return "\n".join(lines) + "\n"


def _write_new(path: Path, text: str, mode: int) -> None:
    """Create `path` (never replace one), with `mode` whatever the umask adds."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError as exc:
        raise ConfigError(f"{path} exists already; remove it first to make a new key") from exc
    with os.fdopen(fd, "w", encoding="utf-8") as file:
        if mode == _SECRET_MODE:
            os.fchmod(file.fileno(), mode)
        file.write(text)


# Reading ------------------------------------------------------------------------------


def load_certificate(path: str | os.PathLike[str]) -> Certificate:
    """Read and check one certificate file, public or secret.

    ConfigError, naming the file and what is wrong, for a file that cannot be read, is
    not a certificate, lacks a name, role or public key, holds a key that is not 32 bytes
    in Z85, or whose secret keys do not belong to its public keys."""
    where = Path(path)
    try:
        with where.open("rb") as file:
            raw = file.read(MAX_CERTIFICATE_BYTES + 1)
    except OSError as exc:
        raise ConfigError(
            f"cannot read certificate {_shown(where)}: {exc.strerror or exc}"
        ) from exc
    try:
        return _certificate(_parse_zpl(raw))
    except ConfigError as exc:
        raise ConfigError(f"certificate {_shown(where)}: {exc}") from None


_Sections = dict[str, dict[str, str]]


def _parse_zpl(raw: bytes) -> _Sections:
    """The sections of a certificate file: {section: {property: value}}.

    The subset of ZPL (ZeroMQ RFC 4) that certificates use: `#` comments, sections at the
    left margin, `name = value` properties indented under them, values quoted with " or '
    (or bare). A property outside a section, a repeated property, or a line that is not
    one of these is a ConfigError."""
    if len(raw) > MAX_CERTIFICATE_BYTES:
        raise ConfigError(f"over {MAX_CERTIFICATE_BYTES} bytes; not a certificate")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"not UTF-8 text (byte {exc.start})") from None
    sections: _Sections = {}
    current: dict[str, str] | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        content = line.rstrip()
        stripped = content.lstrip(" ")
        if not stripped or stripped.startswith("#"):
            continue
        if not content.isprintable():
            raise ConfigError(f"line {number} has a control character")
        if content == stripped:  # at the margin: a section
            name = stripped.split("=", 1)[0].strip()
            if not _is_zpl_name(name):
                raise ConfigError(f"line {number} is not a section name: {_excerpt(content)}")
            if name in sections:
                raise ConfigError(f"section {name!r} appears twice (line {number})")
            current = sections[name] = {}
            continue
        if current is None:
            raise ConfigError(f"line {number} is indented but under no section")
        key, equals, value = stripped.partition("=")
        key = key.strip()
        if not equals or not _is_zpl_name(key):
            raise ConfigError(f"line {number} is not 'name = value': {_excerpt(content)}")
        if key in current:
            raise ConfigError(f"property {key!r} appears twice (line {number})")
        current[key] = _zpl_value(value.strip(), number)
    return sections


def _is_zpl_name(name: str) -> bool:
    return bool(name) and all(char.isalnum() or char in "$-_@.&+/" for char in name)


def _zpl_value(value: str, number: int) -> str:
    if value[:1] in ('"', "'"):
        quote = value[0]
        if len(value) < 2 or not value.endswith(quote):
            raise ConfigError(f"line {number}: the value's quote is not closed")
        return value[1:-1]
    return value


def _shown(path: Path) -> str:
    """A path as a log line may carry it: a file name can hold a line break."""
    text = str(path)
    return text if text.isprintable() else repr(text)


_MAX_PROBLEMS_LISTED: Final = 10


def _listed(problems: list[str]) -> str:
    shown = "; ".join(problems[:_MAX_PROBLEMS_LISTED])
    more = len(problems) - _MAX_PROBLEMS_LISTED
    return f"{shown}; and {more} more" if more > 0 else shown


def _excerpt(line: str) -> str:
    return repr(line[:60] + ("..." if len(line) > 60 else ""))


def _certificate(sections: _Sections) -> Certificate:
    metadata = sections.get("metadata", {})
    curve = sections.get("curve")
    if curve is None:
        raise ConfigError("no 'curve' section")
    if "name" not in metadata or "role" not in metadata:
        raise ConfigError("its metadata lacks a name or a role (was it made by kvactors keygen?)")
    name = check_name(metadata["name"])
    role = _role(metadata["role"], "metadata role")
    public_key = _key(curve, "public-key", required=True)
    secret_key = _key(curve, "secret-key")
    sign_key = _key(metadata, "sign-key")
    sign_secret_key = _key(metadata, "sign-secret-key")
    if public_key is None:  # for the type checker: required above
        raise ConfigError("no public-key")
    if secret_key is not None and zmq.curve_public(secret_key) != public_key:
        raise ConfigError("its secret-key does not belong to its public-key")
    if role is Role.NODE:
        if sign_key is None:
            raise ConfigError("a node certificate needs a sign-key (for gossip signatures)")
        if secret_key is not None and sign_secret_key is None:
            raise ConfigError("a node's secret certificate needs a sign-secret-key")
    elif sign_key is not None or sign_secret_key is not None:
        raise ConfigError(f"only node certificates carry sign keys, not {role.value}")
    if sign_secret_key is not None:
        if secret_key is None:
            raise ConfigError("a sign-secret-key in a file with no secret-key")
        derived = nacl.signing.SigningKey(z85.decode(sign_secret_key)).verify_key
        if z85.encode(bytes(derived)) != sign_key:
            raise ConfigError("its sign-secret-key does not belong to its sign-key")
    return Certificate(name, role, public_key, secret_key, sign_key, sign_secret_key)


def _key(section: Mapping[str, str], field: str, *, required: bool = False) -> bytes | None:
    text = section.get(field)
    if text is None:
        if required:
            raise ConfigError(f"no {field}")
        return None
    encoded = text.encode("utf-8")
    if len(encoded) != _Z85_KEY_BYTES or not _canonical_z85(encoded):
        raise ConfigError(f"its {field} is not a 32-byte key in Z85 (40 characters)")
    return encoded


def _role(value: Role | str, what: str) -> Role:
    try:
        return Role(value)
    except ValueError:
        roles = ", ".join(role.value for role in Role)
        raise ConfigError(f"{what} {value!r} is not one of {roles}") from None


# The trust set ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Snapshot:
    by_key: Mapping[bytes, Certificate]
    by_name: Mapping[str, Certificate]
    by_path: Mapping[Path, Certificate]


_EMPTY: Final = _Snapshot({}, {}, {})


class TrustSet:
    """The public certificates of a trust directory: every `*.key` file in it.

    Lookups are by public key (`lookup`: who is this key, with which role?) and by name
    (`by_name`: a node's sign key, to check its gossip signatures). Lookups may run on
    any thread while another calls `reload`: each sees the old set or the new one whole,
    never a mix.

    A bad trust directory (an unreadable or malformed `.key` file, a `.key` file holding
    a secret key, two files with one name or one key) is a ConfigError that names every
    problem: `load` refuses to build a set from it, so a node does not start on it, and
    `reload` raises it having withdrawn trust from every certificate whose file is gone
    or no longer reads the same, and added none. A mistake made while revoking a key
    therefore never keeps the revoked key trusted, and never trusts anything new."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        """An empty set for `directory`; `load` (or `reload`) reads it."""
        self.directory = Path(directory)
        self._snapshot = _EMPTY
        self._reloading = threading.Lock()

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> TrustSet:
        """The trust set of `directory`; ConfigError if it is missing or bad."""
        trust = cls(directory)
        trust.reload()
        return trust

    def reload(self) -> bool:
        """Re-read the directory; whether any certificate came, went or changed.

        ConfigError if the directory is bad (see the class doc for what it keeps)."""
        with self._reloading:
            old = self._snapshot
            read, problems = _read_directory(self.directory)
            snapshot, duplicates = _snapshot_of(read)
            problems += duplicates
            if problems:
                kept = {path: cert for path, cert in old.by_path.items() if read.get(path) == cert}
                self._snapshot, _ = _snapshot_of(kept)
                withdrawn = sorted(
                    cert.name for path, cert in old.by_path.items() if path not in kept
                )
                note = f"; trust withdrawn from {', '.join(withdrawn)}" if withdrawn else ""
                raise ConfigError(f"trust dir {_shown(self.directory)}: {_listed(problems)}{note}")
            self._snapshot = snapshot
            return dict(snapshot.by_path) != dict(old.by_path)

    def lookup(self, public_key: bytes) -> Certificate | None:
        """The certificate of `public_key` (32 bytes or Z85), or None if not trusted."""
        by_key = self._snapshot.by_key
        # The common case first (a secure node looks a key up per message): a key in
        # its canonical Z85 form, as the set holds it, needs no decoding to be found.
        found = by_key.get(public_key)
        if found is not None:
            return found
        try:
            return by_key.get(z85_key(public_key))
        except ValueError:
            return None

    def by_name(self, name: str) -> Certificate | None:
        """The certificate named `name`, or None."""
        return self._snapshot.by_name.get(name)

    def __contains__(self, public_key: object) -> bool:
        return isinstance(public_key, bytes) and self.lookup(public_key) is not None

    def __iter__(self) -> Iterator[Certificate]:
        return iter(sorted(self._snapshot.by_name.values(), key=lambda cert: cert.name))

    def __len__(self) -> int:
        return len(self._snapshot.by_name)

    def __repr__(self) -> str:
        return f"TrustSet({str(self.directory)!r}, {len(self)} certificates)"


def _read_directory(directory: Path) -> tuple[dict[Path, Certificate], list[str]]:
    """The certificates of the `.key` files in `directory`, and the problems found."""
    if not directory.is_dir():
        return {}, [f"{_shown(directory)} is not a directory"]
    read: dict[Path, Certificate] = {}
    problems: list[str] = []
    try:
        paths = sorted(directory.glob(f"*{PUBLIC_SUFFIX}"))
    except OSError as exc:
        return {}, [f"cannot list {_shown(directory)}: {exc}"]
    for path in paths:
        try:
            certificate = load_certificate(path)
        except ConfigError as exc:
            problems.append(str(exc))
            continue
        if certificate.is_secret:
            problems.append(
                f"{_shown(path)} holds a secret key; a trust dir holds public certificates only "
                f"(the {SECRET_SUFFIX} file stays with its owner)"
            )
            continue
        read[path] = certificate
    return read, problems


def _snapshot_of(read: Mapping[Path, Certificate]) -> tuple[_Snapshot, list[str]]:
    """The lookup tables of `read`, and its duplicate names and keys (left out)."""
    by_key: dict[bytes, Certificate] = {}
    by_name: dict[str, Certificate] = {}
    paths_by_name: dict[str, Path] = {}
    paths_by_key: dict[bytes, Path] = {}
    problems: list[str] = []
    for path, cert in read.items():
        if cert.name in paths_by_name:
            first = _shown(paths_by_name[cert.name])
            problems.append(f"{first} and {_shown(path)} both name {cert.name!r}")
        elif cert.public_key in paths_by_key:
            first = _shown(paths_by_key[cert.public_key])
            problems.append(f"{first} and {_shown(path)} hold the same key")
        else:
            paths_by_name[cert.name] = paths_by_key[cert.public_key] = path
            by_name[cert.name] = by_key[cert.public_key] = cert
    by_path = {path: read[path] for path in paths_by_name.values()}
    return _Snapshot(by_key, by_name, by_path), problems
