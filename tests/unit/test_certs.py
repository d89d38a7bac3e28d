"""Certificates, roles and trust sets (kvactors/net/certs.py), and `kvactors keygen`."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import nacl.signing
import pytest
import zmq
import zmq.auth
from hypothesis import given, settings
from hypothesis import strategies as st

from kvactors.cli import main
from kvactors.errors import ConfigError
from kvactors.net.certs import (
    Certificate,
    Role,
    TrustSet,
    check_name,
    load_certificate,
    role_allows,
    write_key_pair,
    z85_key,
)


def metadata_of(path: Path) -> dict[str, str]:
    """The metadata section as plain text, read without this module's parser."""
    found: dict[str, str] = {}
    section = None
    for line in path.read_text().splitlines():
        if line and not line.startswith((" ", "#")):
            section = line.strip()
        elif section == "metadata" and "=" in line:
            key, value = line.split("=", 1)
            found[key.strip()] = value.strip().strip('"')
    return found


# Writing and reading ------------------------------------------------------------------


@pytest.mark.parametrize("role", list(Role))
def test_a_written_pair_reads_back_with_its_name_role_and_keys(tmp_path: Path, role: Role) -> None:
    public_path, secret_path = write_key_pair(tmp_path, "alice", role)
    assert (public_path, secret_path) == (tmp_path / "alice.key", tmp_path / "alice.key_secret")
    public, secret = load_certificate(public_path), load_certificate(secret_path)
    assert (public.name, public.role, secret.name, secret.role) == ("alice", role, "alice", role)
    assert public.public_key == secret.public_key and len(public.public_key) == 40
    assert public.secret_key is None and secret.secret_key is not None
    assert zmq.curve_public(secret.secret_key) == secret.public_key
    assert secret.public() == public
    # pyzmq's own reader agrees on the keys (the format is zmq.auth's).
    assert zmq.auth.load_certificate(secret_path) == (secret.public_key, secret.secret_key)
    assert zmq.auth.load_certificate(public_path) == (public.public_key, None)


def test_name_and_role_are_in_the_metadata_of_both_files(tmp_path: Path) -> None:
    public_path, secret_path = write_key_pair(tmp_path, "reader-1", Role.READ)
    for path in (public_path, secret_path):
        meta = metadata_of(path)
        assert (meta["name"], meta["role"]) == ("reader-1", "read"), path
        assert "sign-key" not in meta and "sign-secret-key" not in meta


def test_a_node_pair_signs_and_only_the_secret_file_holds_the_signing_key(
    tmp_path: Path,
) -> None:
    public_path, secret_path = write_key_pair(tmp_path, "node-a", Role.NODE)
    assert "sign-secret-key" not in metadata_of(public_path)
    assert "sign-secret-key" in metadata_of(secret_path)
    assert "sign-secret-key" not in public_path.read_text()
    public, secret = load_certificate(public_path), load_certificate(secret_path)
    assert public.sign_key == secret.sign_key is not None and public.sign_secret_key is None
    signed = secret.signing_key().sign(b"gossip")
    assert public.verify_key().verify(signed) == b"gossip"
    with pytest.raises(ConfigError, match="no sign-secret-key"):
        public.signing_key()
    other = load_certificate(write_key_pair(tmp_path, "node-b")[0])
    with pytest.raises(nacl.exceptions.BadSignatureError):
        other.verify_key().verify(signed)


def test_the_secret_file_is_0600_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        public_path, secret_path = write_key_pair(tmp_path, "node-a")
    finally:
        os.umask(old)
    assert stat.S_IMODE(secret_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(public_path.stat().st_mode) == 0o644


def test_existing_files_are_never_overwritten(tmp_path: Path) -> None:
    public_path, secret_path = write_key_pair(tmp_path, "node-a")
    before = (public_path.read_bytes(), secret_path.read_bytes())
    with pytest.raises(ConfigError, match="exists already"):
        write_key_pair(tmp_path, "node-a", Role.ADMIN)
    assert (public_path.read_bytes(), secret_path.read_bytes()) == before


def test_a_missing_directory_is_made(tmp_path: Path) -> None:
    public_path, _ = write_key_pair(tmp_path / "a" / "b", "c")
    assert public_path.is_file()


@pytest.mark.parametrize(
    "name",
    ["", "a/b", "a\\b", "..", ".", "new\nline", "tab\there", "nul\x00", "bell\x07", " lead",
     "trail ", "x" * 256, "é" * 128],
)  # fmt: skip
def test_bad_names_are_refused_before_any_file_is_written(tmp_path: Path, name: str) -> None:
    with pytest.raises(ConfigError):
        write_key_pair(tmp_path, name)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["a", "node-1", "x" * 244, "é" * 122, 'quo"te', "sp ace", "#"])
def test_printable_names_round_trip(tmp_path: Path, name: str) -> None:
    assert check_name(name) == name
    public_path, secret_path = write_key_pair(tmp_path, name, Role.WRITE)
    assert load_certificate(public_path).name == load_certificate(secret_path).name == name


def test_names_up_to_255_bytes_are_valid_but_key_files_need_the_suffixs_room(
    tmp_path: Path,
) -> None:
    assert check_name("x" * 255) == "x" * 255
    with pytest.raises(ConfigError, match="at most 244 bytes"):
        write_key_pair(tmp_path, "x" * 245)
    # A 255-byte name in a certificate file named otherwise reads.
    public_path, _ = write_key_pair(tmp_path, "short", Role.READ)
    renamed = public_path.read_text().replace('name = "short"', f'name = "{"x" * 255}"')
    (tmp_path / "long.key").write_text(renamed)
    assert load_certificate(tmp_path / "long.key").name == "x" * 255


def test_an_unknown_role_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="'root' is not one of node, read, write, admin"):
        write_key_pair(tmp_path, "a", "root")


# Bad files ----------------------------------------------------------------------------

GOOD_PUBLIC = 'metadata\n    name = "a"\n    role = "read"\ncurve\n    public-key = "{key}"\n'


def public_text(tmp_path: Path) -> tuple[str, str]:
    """A valid public certificate's text and its key."""
    path, _ = write_key_pair(tmp_path / "src", "a", Role.READ)
    key = load_certificate(path).public_key.decode()
    return GOOD_PUBLIC.format(key=key), key


def test_a_hand_written_certificate_in_zpl_reads(tmp_path: Path) -> None:
    text, key = public_text(tmp_path)
    path = tmp_path / "a.key"
    path.write_text("# a comment\n\n" + text.replace('"read"', "'read'") + "    # indented\n")
    assert load_certificate(path) == Certificate("a", Role.READ, key.encode())


def test_a_pyzmq_certificate_without_our_metadata_is_refused_with_a_hint(
    tmp_path: Path,
) -> None:
    public_path, _ = zmq.auth.create_certificates(tmp_path, "plain")
    with pytest.raises(ConfigError, match=r"plain\.key: .*lacks a name or a role.*keygen"):
        load_certificate(public_path)


@pytest.mark.parametrize(
    ("edit", "complaint"),
    [
        (lambda t, k: t.replace(k, k[:-1]), "public-key is not a 32-byte key"),
        (lambda t, k: t.replace(k, k[:-1] + '"'), "public-key is not a 32-byte key"),
        (lambda t, k: t.replace(k, "#" * 40), "public-key is not a 32-byte key"),
        (lambda t, k: t.replace(k, "%" * 40), "public-key is not a 32-byte key"),
        (lambda t, k: t.replace("curve\n", ""), "indented but under no section|no 'curve'"),
        (lambda t, k: t.replace("    public-key", "    # public-key"), "no public-key"),
        (lambda t, k: t.replace('"read"', '"root"'), "role 'root' is not one of"),
        (lambda t, k: t.replace('name = "a"', 'name = "a/b"'), "not a plain file name"),
        (lambda t, k: t.replace('name = "a"', 'name = "a\x1b[31m"'), "control character"),
        (lambda t, k: t.replace('    name = "a"\n', ""), "lacks a name or a role"),
        (lambda t, k: t + "curve\n", "section 'curve' appears twice"),
        (lambda t, k: t.replace('role = "read"', 'role = "read"\n    role = "admin"'), "twice"),
        (lambda t, k: t.replace('"read"', '"read'), "quote is not closed"),
        (lambda t, k: t.replace("    role =", "    role"), "not 'name = value'"),
        (lambda t, k: t.replace("    ", "\t"), "control character"),
        (lambda t, k: t.replace('"read"', '"node"'), "node certificate needs a sign-key"),
        (lambda t, k: t.replace("metadata\n", "metadata\n    sign-key = \"" + k + '"\n'),
         "only node certificates carry sign keys"),
        (lambda t, k: t + '    secret-key = "' + k + '"\n', "secret-key does not belong"),
    ],
)  # fmt: skip
def test_a_bad_file_is_a_config_error_naming_the_file_and_the_fault(
    tmp_path: Path, edit: object, complaint: str
) -> None:
    text, key = public_text(tmp_path)
    path = tmp_path / "bad.key"
    path.write_text(edit(text, key))  # type: ignore[operator]
    with pytest.raises(ConfigError, match=complaint) as refused:
        load_certificate(path)
    assert str(path) in str(refused.value)


def test_a_node_secret_file_with_a_foreign_signing_key_is_refused(tmp_path: Path) -> None:
    _, secret_path = write_key_pair(tmp_path, "node-a")
    _, other_path = write_key_pair(tmp_path, "node-b")
    foreign = metadata_of(other_path)["sign-secret-key"]
    own = metadata_of(secret_path)["sign-secret-key"]
    secret_path.write_text(secret_path.read_text().replace(own, foreign))
    with pytest.raises(ConfigError, match="sign-secret-key does not belong to its sign-key"):
        load_certificate(secret_path)


def test_missing_unreadable_binary_and_huge_files_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read certificate"):
        load_certificate(tmp_path / "absent.key")
    with pytest.raises(ConfigError, match="cannot read certificate"):
        load_certificate(tmp_path)  # a directory
    (tmp_path / "bin.key").write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_certificate(tmp_path / "bin.key")
    (tmp_path / "huge.key").write_bytes(b"#" * 70_000)
    with pytest.raises(ConfigError, match="not a certificate"):
        load_certificate(tmp_path / "huge.key")


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=600),
        st.text(alphabet=st.sampled_from('metadacurvpbli-kysn=" #\n\t\x00é'), max_size=300).map(
            str.encode
        ),
    )
)
def test_random_bytes_as_a_certificate_give_config_error_and_nothing_else(
    tmp_path_factory: pytest.TempPathFactory, content: bytes
) -> None:
    path = tmp_path_factory.mktemp("fuzz") / "random.key"
    path.write_bytes(content)
    with pytest.raises(ConfigError):
        load_certificate(path)


def test_z85_key_takes_raw_and_z85_keys_and_nothing_else() -> None:
    public, _ = zmq.curve_keypair()
    raw = zmq.utils.z85.decode(public)
    assert z85_key(raw) == z85_key(public) == public
    for bad in (b"", raw[:31], public[:39], b"#" * 40, b"%" * 40):
        with pytest.raises(ValueError):
            z85_key(bad)


# Roles --------------------------------------------------------------------------------


def test_what_each_role_may_ask() -> None:
    reads = {"get", "get_many", "status", "ping"}
    writes = {"put", "delete", "put_many"}
    admin = {"leave", "remove"}
    for op in reads:
        assert all(role_allows(role, op) for role in Role), op
    for op in writes:
        assert not role_allows(Role.READ, op), op
        assert all(role_allows(role, op) for role in (Role.WRITE, Role.ADMIN, Role.NODE)), op
    for op in admin:
        assert not role_allows(Role.READ, op) and not role_allows(Role.WRITE, op), op
        assert role_allows(Role.ADMIN, op) and role_allows(Role.NODE, op), op


def test_operations_still_to_come_have_their_roles_already() -> None:
    assert role_allows(Role.READ, "scan") and role_allows(Role.READ, "backup")
    assert role_allows(Role.WRITE, "cas") and not role_allows(Role.READ, "increment")
    assert role_allows(Role.ADMIN, "restore") and not role_allows(Role.WRITE, "restore")


@pytest.mark.parametrize("op", ["", "store", "pull", "gossip", "GET", "get ", "frobnicate"])
def test_an_operation_nobody_listed_is_refused_for_every_role(op: str) -> None:
    assert not any(role_allows(role, op) for role in Role)


# Trust sets ---------------------------------------------------------------------------


def trust_dir(tmp_path: Path, *pairs: tuple[str, Role]) -> tuple[Path, dict[str, Certificate]]:
    """A trust dir with the public certificates of `pairs`; their secret ones by name."""
    keys, trusted = tmp_path / "keys", tmp_path / "trust"
    trusted.mkdir(exist_ok=True)
    secrets = {}
    for name, role in pairs:
        public_path, secret_path = write_key_pair(keys, name, role)
        public_path.rename(trusted / public_path.name)
        secrets[name] = load_certificate(secret_path)
    return trusted, secrets


def test_a_trust_set_finds_certificates_by_raw_or_z85_key_and_by_name(tmp_path: Path) -> None:
    directory, secrets = trust_dir(tmp_path, ("node-a", Role.NODE), ("bob", Role.WRITE))
    trust = TrustSet.load(directory)
    assert len(trust) == 2 and [c.name for c in trust] == ["bob", "node-a"]
    bob = secrets["bob"]
    assert trust.lookup(bob.public_key) == bob.public()
    assert trust.lookup(zmq.utils.z85.decode(bob.public_key)) == bob.public()
    assert bob.public_key in trust
    found = trust.by_name("node-a")
    assert found is not None and found.role is Role.NODE and found.sign_key is not None
    assert found.secret_key is None
    stranger, _ = zmq.curve_keypair()
    assert trust.lookup(stranger) is None and stranger not in trust
    assert trust.lookup(b"garbage") is None and trust.by_name("carol") is None


def test_secret_files_in_a_trust_dir_are_not_read_and_other_files_are_ignored(
    tmp_path: Path,
) -> None:
    directory, _ = trust_dir(tmp_path, ("bob", Role.READ))
    write_key_pair(tmp_path / "elsewhere", "carol", Role.ADMIN)
    (tmp_path / "elsewhere" / "carol.key_secret").rename(directory / "carol.key_secret")
    (directory / "README").write_text("not a certificate")
    assert [c.name for c in TrustSet.load(directory)] == ["bob"]


def test_a_secret_certificate_named_key_is_refused(tmp_path: Path) -> None:
    directory, _ = trust_dir(tmp_path, ("bob", Role.READ))
    _, secret_path = write_key_pair(tmp_path / "elsewhere", "carol", Role.ADMIN)
    secret_path.rename(directory / "carol.key")
    with pytest.raises(ConfigError, match=r"carol\.key holds a secret key"):
        TrustSet.load(directory)


def test_a_missing_trust_dir_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is not a directory"):
        TrustSet.load(tmp_path / "nowhere")


def test_two_certificates_with_one_name_or_one_key_refuse_the_dir(tmp_path: Path) -> None:
    directory, _ = trust_dir(tmp_path, ("bob", Role.READ))
    copy = directory / "bob-again.key"
    copy.write_bytes((directory / "bob.key").read_bytes())
    with pytest.raises(ConfigError, match=r"both name 'bob'"):
        TrustSet.load(directory)
    write_key_pair(tmp_path / "other", "carol", Role.READ)
    same_key = (tmp_path / "other" / "carol.key").read_text()
    bob_key = load_certificate(directory / "bob.key").public_key.decode()
    carol_key = load_certificate(tmp_path / "other" / "carol.key").public_key.decode()
    copy.write_text(same_key.replace(carol_key, bob_key))
    with pytest.raises(ConfigError, match="hold the same key"):
        TrustSet.load(directory)


def test_reload_adds_and_removes_and_says_whether_anything_changed(tmp_path: Path) -> None:
    directory, secrets = trust_dir(tmp_path, ("bob", Role.READ), ("carol", Role.WRITE))
    trust = TrustSet.load(directory)
    assert trust.reload() is False
    (directory / "carol.key").unlink()
    assert trust.reload() is True
    assert trust.lookup(secrets["carol"].public_key) is None and trust.by_name("carol") is None
    assert trust.lookup(secrets["bob"].public_key) is not None
    _, more = trust_dir(tmp_path, ("dave", Role.ADMIN))
    assert trust.reload() is True
    assert trust.lookup(more["dave"].public_key) == more["dave"].public()
    assert trust.reload() is False


def test_a_changed_role_shows_after_reload(tmp_path: Path) -> None:
    directory, secrets = trust_dir(tmp_path, ("bob", Role.WRITE))
    trust = TrustSet.load(directory)
    path = directory / "bob.key"
    path.write_text(path.read_text().replace('role = "write"', 'role = "read"'))
    assert trust.reload() is True
    found = trust.lookup(secrets["bob"].public_key)
    assert found is not None and found.role is Role.READ


def test_a_bad_reload_withdraws_what_went_and_adds_nothing(tmp_path: Path) -> None:
    directory, secrets = trust_dir(
        tmp_path, ("bob", Role.READ), ("carol", Role.WRITE), ("dave", Role.ADMIN)
    )
    trust = TrustSet.load(directory)
    (directory / "carol.key").unlink()  # revoked...
    (directory / "broken.key").write_text("nonsense\n")  # ...while a bad file came
    path = directory / "dave.key"
    path.write_text(path.read_text().replace('role = "admin"', 'role = "awful"'))
    _, newcomer = trust_dir(tmp_path, ("eve", Role.ADMIN))
    with pytest.raises(ConfigError) as refused:
        trust.reload()
    message = str(refused.value)
    assert "broken.key" in message and "dave.key" in message
    assert "trust withdrawn from carol, dave" in message
    assert trust.lookup(secrets["carol"].public_key) is None  # gone stays gone
    assert trust.lookup(secrets["dave"].public_key) is None  # changed to bad: gone too
    assert trust.lookup(newcomer["eve"].public_key) is None  # nothing new while bad
    assert trust.lookup(secrets["bob"].public_key) is not None  # the rest keeps working
    (directory / "broken.key").unlink()
    path.write_text(path.read_text().replace('role = "awful"', 'role = "admin"'))
    assert trust.reload() is True
    assert [c.name for c in trust] == ["bob", "dave", "eve"]


def test_a_trust_dir_that_vanishes_withdraws_everything(tmp_path: Path) -> None:
    directory, secrets = trust_dir(tmp_path, ("bob", Role.READ))
    trust = TrustSet.load(directory)
    (directory / "bob.key").unlink()
    directory.rmdir()
    with pytest.raises(ConfigError, match="not a directory"):
        trust.reload()
    assert len(trust) == 0 and trust.lookup(secrets["bob"].public_key) is None


# The command --------------------------------------------------------------------------


def test_keygen_prints_the_two_paths_and_writes_a_node_pair_by_default(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["keygen", "--dir", str(tmp_path), "node-a"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed == [str(tmp_path / "node-a.key"), str(tmp_path / "node-a.key_secret")]
    certificate = load_certificate(printed[1])
    assert (certificate.name, certificate.role) == ("node-a", Role.NODE)
    assert certificate.sign_secret_key is not None


def test_keygen_with_a_role(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keygen", "--dir", str(tmp_path), "--role", "read", "dashboard"]) == 0
    assert load_certificate(tmp_path / "dashboard.key").role is Role.READ
    assert capsys.readouterr().out.count("\n") == 2


def test_keygen_refuses_to_overwrite_and_bad_names_with_a_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["keygen", "--dir", str(tmp_path), "node-a"]) == 0
    capsys.readouterr()
    assert main(["keygen", "--dir", str(tmp_path), "node-a"]) == 1
    assert "exists already" in capsys.readouterr().err
    assert main(["keygen", "--dir", str(tmp_path), "../escape"]) == 1
    assert "not a plain file name" in capsys.readouterr().err
    assert not (tmp_path.parent / "escape.key").exists()
    with pytest.raises(SystemExit):
        main(["keygen", "--dir", str(tmp_path), "--role", "root", "x"])


def test_problems_never_carry_a_raw_line_break_and_are_listed_up_to_ten(
    tmp_path: Path,
) -> None:
    directory, _ = trust_dir(tmp_path, ("bob", Role.READ))
    (directory / "forged\nline.key").write_text("nonsense\n")
    with pytest.raises(ConfigError) as refused:
        TrustSet.load(directory)
    assert "\n" not in str(refused.value) and "forged\\nline.key" in str(refused.value)
    for number in range(14):
        (directory / f"bad-{number:02}.key").write_text("nonsense\n")
    with pytest.raises(ConfigError, match=r"; and 5 more$"):
        TrustSet.load(directory)
