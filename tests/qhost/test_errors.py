"""Every q error string `conn` raises for a failure the engine reports, pinned: refusals, TLS causes,
timeouts and the rest ('Failure), and the configuration errors only the engine can see (files, URIs,
lengths, the spool). Real mosquitto and rustls where they can play the scenario, minimal fake brokers and
TLS servers on loopback where they cannot. The engine's full sentence is pinned in tests/error_texts.rs;
here a few `lastError`s check that q sees that same sentence."""
import os
import socket
import ssl
import subprocess
import threading

import pytest

from broker import free_port
from qhost import NIL, QError, Sym

S = Sym


def serve(handle, tls=None):
    """A fake broker on a free port: each connection gets `handle(sock)` on a thread (after the TLS
    handshake when `tls` is an SSLContext)."""
    lst = socket.socket()
    lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lst.bind(("127.0.0.1", 0))
    lst.listen(16)

    def run(c):
        try:
            if tls is not None:
                c = tls.wrap_socket(c, server_side=True)
            handle(c)
        except (OSError, ssl.SSLError):
            pass
        finally:
            c.close()

    def accept():
        while True:
            try:
                c, _ = lst.accept()
            except OSError:
                return
            threading.Thread(target=run, args=(c,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return lst.getsockname()[1]


def hold(c):
    c.settimeout(30)
    try:
        while c.recv(4096):
            pass
    except OSError:
        pass


def answer(data):
    def h(c):
        c.recv(4096)
        c.sendall(data)
        hold(c)
    return h


def reset(c):
    c.recv(4096)
    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")


def conn_error(q, uri, opts=None, cid="qerr"):
    base = {S("connectTimeout"): 5, S("autoReconnect"): 0}
    base.update(opts or {})
    with pytest.raises(QError) as e:
        q.conn(uri, cid, base)
    return e.value.msg


def last_error(q):
    return q.call("stats", NIL)["lastError"]


def test_refusals(q):
    for code, want in [(1, "conn refused: unacceptable protocol version"),
                       (2, "conn refused: identifier rejected"),
                       (3, "conn refused: server unavailable"),
                       (4, "conn refused: bad user name or password"),
                       (5, "conn refused: not authorized"),
                       (9, "conn refused")]:
        port = serve(answer(bytes([0x20, 2, 0, code])))
        assert conn_error(q, f"tcp://127.0.0.1:{port}") == want, code
    assert last_error(q) == "the broker refused the connection: refused (check the broker's log)"


def test_transport_failures_and_timeouts(q):
    closed = free_port()
    assert conn_error(q, f"tcp://127.0.0.1:{closed}") == "Failure"
    assert last_error(q) == (f"cannot connect to 127.0.0.1: 127.0.0.1:{closed} refused the connection "
                             f"({os.strerror(111)} (os error 111)): is the broker running and listening on "
                             f"port {closed}?")
    assert conn_error(q, "tcp://nonexistent.invalid:1883") == "Failure"
    assert conn_error(q, f"tcp://127.0.0.1:{serve(reset)}") == "Failure"
    assert conn_error(q, f"tcp://127.0.0.1:{serve(lambda c: c.recv(4096))}") == "Failure"
    assert last_error(q) == "the broker closed the connection"
    assert conn_error(q, f"tcp://127.0.0.1:{serve(answer(b'HTTP/1.1 400 Bad Request'))}") == "Failure"
    assert conn_error(q, f"tcp://127.0.0.1:{serve(answer(bytes([0x30, 4, 0, 1, 116, 120])))}") == "Failure"
    silent = f"tcp://127.0.0.1:{serve(hold)}"
    # no CONNACK within the response timeout (the keep-alive, below the connect timeout): 'timeout …
    assert conn_error(q, silent, {S("keepAliveInterval"): 1}) == "timeout"
    # … the connect timeout itself: 'Failure (as KX's paho)
    assert conn_error(q, silent, {S("connectTimeout"): 1}) == "Failure"
    assert last_error(q).startswith("no MQTT connection to 127.0.0.1:")


def _ca_sign(d, name, start, end, san="DNS:localhost,IP:127.0.0.1"):
    """A server certificate for localhost signed by the broker's test CA, valid from `start` to `end`."""
    run = lambda *a: subprocess.run(a, check=True, cwd=d, capture_output=True)  # noqa: E731
    run("openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", "/CN=localhost")
    with open(os.path.join(d, "ca.cnf"), "w") as f:
        f.write("[ca]\ndefault_ca=d\n[d]\ndatabase=index.txt\nnew_certs_dir=.\nserial=serial\n"
                "default_md=sha256\npolicy=p\nx509_extensions=ext\n[p]\ncommonName=supplied\n"
                f"[ext]\nsubjectAltName={san}\n")
    open(os.path.join(d, "index.txt"), "w").close()
    with open(os.path.join(d, "serial"), "w") as f:
        f.write("1000\n")
    run("openssl", "ca", "-batch", "-config", "ca.cnf", "-cert", "../certs/ca.pem", "-keyfile",
        "../certs/ca.key", "-in", f"{name}.csr", "-out", f"{name}.pem", "-startdate", start, "-enddate", end)
    return os.path.join(d, f"{name}.pem"), os.path.join(d, f"{name}.key")


def tls_server(cert, key, ciphers=None):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    if ciphers:
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        ctx.set_ciphers(ciphers)
    return serve(hold, tls=ctx)


def test_tls_failures(q, broker):
    c = broker.certs
    ca = {S("trustStore"): S(c.ca)}
    assert conn_error(q, broker.tls_uri, {S("trustStore"): S(c.other_ca)}) == "tls: unknown issuer"
    assert conn_error(q, broker.tls_uri, {**ca, S("sni"): S("elsewhere.example")}) == "tls: hostname mismatch"
    assert conn_error(q, broker.mtls_uri, ca) == "tls: client certificate required"
    # a client certificate the broker does not trust (self-signed by the other CA's key)
    d = os.path.join(broker.dir, "errs")
    os.makedirs(d, exist_ok=True)
    bad_cert = os.path.join(d, "self.pem")
    bad_key = os.path.join(d, "self.key")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", bad_key, "-out", bad_cert, "-days", "30", "-subj", "/CN=intruder"],
                   check=True, capture_output=True)
    os.chmod(bad_key, 0o600)
    assert conn_error(q, broker.mtls_uri, {**ca, S("keyStore"): S(bad_cert), S("privateKey"): S(bad_key)}) \
        == "tls: failed"
    # TLS to a plain MQTT port; to something that answers, but not in TLS
    assert conn_error(q, f"ssl://localhost:{broker.tcp_port}", ca) == "tls: handshake failed"
    http = serve(answer(b"HTTP/1.1 400 Bad Request\r\n\r\n"))
    assert conn_error(q, f"ssl://localhost:{http}", ca) == "tls: the broker does not speak TLS"
    # a broker whose certificate is expired, not yet valid, self-signed; one with no suite in common
    old = _ca_sign(d, "expired", "20200101000000Z", "20210101000000Z")
    assert conn_error(q, f"ssl://localhost:{tls_server(*old)}", ca) == "tls: certificate expired"
    new = _ca_sign(d, "future", "20900101000000Z", "20910101000000Z")
    assert conn_error(q, f"ssl://localhost:{tls_server(*new)}", ca) == "tls: certificate not yet valid"
    # the intruder's certificate, self-signed and a CA certificate (openssl's default): refused as an end
    # entity, a certificate error of its own
    assert conn_error(q, f"ssl://localhost:{tls_server(bad_cert, bad_key)}", ca) == "tls: handshake failed"
    leaf_cert, leaf_key = os.path.join(d, "leaf.pem"), os.path.join(d, "leaf.key")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", leaf_key, "-out", leaf_cert, "-days", "30", "-subj", "/CN=localhost",
                    "-addext", "basicConstraints=critical,CA:FALSE",
                    "-addext", "subjectAltName=DNS:localhost"], check=True, capture_output=True)
    assert conn_error(q, f"ssl://localhost:{tls_server(leaf_cert, leaf_key)}", ca) == "tls: unknown issuer"
    suite = tls_server(c.server_cert, c.server_key, ciphers="ECDHE-ECDSA-AES128-GCM-SHA256")
    assert conn_error(q, f"ssl://localhost:{suite}", {**ca, S("enabledCipherSuites"):
                                                      S("ECDHE-ECDSA-CHACHA20-POLY1305")}) \
        == "tls: handshake failed"
    # an SNI rustls cannot send: found when connecting
    assert conn_error(q, broker.tls_uri, {**ca, S("sni"): S("bad name")}) == "Failure"


def test_configuration_errors_found_by_the_engine(q, broker, tmp_path):
    c = broker.certs
    tcp, tls = broker.tcp_uri, broker.tls_uri
    assert conn_error(q, tcp, {S("MQTTVersion"): 3}, cid="x" * 24) == "client invalid"
    assert conn_error(q, tcp, {S("cleansession"): 0}, cid="") == "client invalid"
    assert conn_error(q, tcp, {S("lastWillTopic"): S("w/#")}) == "lastWillTopic invalid"
    assert conn_error(q, tcp, {S("password"): S("p")}) == "options"
    assert conn_error(q, "tcp://bad host:1883") == "addr invalid"
    assert conn_error(q, "tcp://h:1883/path") == "addr invalid"
    assert conn_error(q, tls, {S("enabledCipherSuites"): S("RC4-MD5")}) == "enabledCipherSuites invalid"
    assert conn_error(q, tls, {S("sslVersion"): 4, S("enabledCipherSuites"): S("ECDHE-RSA-AES128-GCM-SHA256")}) \
        == "enabledCipherSuites invalid"
    assert conn_error(q, tls, {S("trustStore"): S(c.client_key)}) == "trustStore invalid"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert conn_error(q, tls, {S("CApath"): S(str(empty))}) == "CApath invalid"
    enc = tmp_path / "enc.key"
    enc.write_text("-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIB\n-----END ENCRYPTED PRIVATE KEY-----\n")
    enc.chmod(0o600)
    cert = {S("keyStore"): S(c.client_cert)}
    assert conn_error(q, tls, {**cert, S("privateKey"): S(str(enc))}) \
        == "privateKeyPassword missing (the key is encrypted)"
    # A key really encrypted (by openssl), with a wrong password.
    real = tmp_path / "real-enc.key"
    subprocess.run(["openssl", "pkcs8", "-topk8", "-v2", "aes-256-cbc", "-in", c.client_key, "-out", str(real),
                    "-passout", "pass:right"], check=True, capture_output=True)
    assert conn_error(q, tls, {**cert, S("privateKey"): S(str(real)), S("privateKeyPassword"): S("wrong")}) \
        == "privateKeyPassword: wrong password or not an encrypted key"
    assert conn_error(q, tls, {**cert, S("privateKey"): S(c.ca)}) == "privateKey invalid"
    assert conn_error(q, tls, {**cert, S("privateKey"): S(c.server_key)}) == "keyStore invalid"
    assert conn_error(q, tls, {S("privateKey"): S(c.client_key)}) == "keyStore missing"
    junk = tmp_path / "junk.pem"
    junk.write_text("-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n")
    assert conn_error(q, tls, {S("keyStore"): S(str(junk)), S("privateKey"): S(c.client_key)}) \
        == "keyStore invalid"
    afile = tmp_path / "a-file"
    afile.write_text("x")
    assert conn_error(q, tcp, {S("spoolDir"): S(str(afile))}) == "spoolDir invalid"


def test_uri_passwords_never_shown(q, broker, capfd):
    """A password written into the address (`tcp://user:password@host`) is in no q error, `lastError` or log
    line (debug level: the extension logs the address it connects to)."""
    q.call("loglevel", S("debug"))
    try:
        for uri in ["tcp://gw1:hunter2@localhost:99999", "tcp://gw1:hunter2@127.0.0.1:1883",
                    "ssl://gw1:hunter2@localhost", "gw1:hunter2@localhost:1883"]:
            msg = conn_error(q, uri)
            assert "hunter2" not in msg, (uri, msg)
            err = last_error(q)
            assert "hunter2" not in err and "gw1:***@" in err, (uri, err)
    finally:
        q.call("loglevel", S("warn"))
    logs = capfd.readouterr().err
    assert "gw1:***@" in logs and "hunter2" not in logs, logs


def test_huge_sizes_are_errors_not_aborts(q):
    """A publish queue larger than the machine's memory (`queueBytes 0W`, 1 PiB) is refused with
    'queueBytes too large' instead of an allocation failure that would abort q; q carries on. A huge
    `queueMessages` allocates nothing (it is a count): accepted."""
    closed = f"tcp://127.0.0.1:{free_port()}"
    for n in [2**63 - 1, 1 << 50]:
        assert conn_error(q, closed, {S("queueBytes"): n}) == "queueBytes too large", n
        assert f"queue_bytes {n}: more memory than this machine can give" in last_error(q), n
    assert conn_error(q, closed, {S("queueMessages"): 2**63 - 1}) == "Failure"


def test_tls_options_on_a_plain_address_fail(q):
    """A TLS option on a tcp:// or mqtt:// address fails `conn` naming the option and the schemes to use
    (it used to be a warning: credentials then went in clear text) — also at its default value."""
    closed = free_port()
    for uri, opts, want in [
            (f"tcp://127.0.0.1:{closed}", {S("trustStore"): S("/nonexistent/ca.pem")}, "trustStore"),
            (f"mqtt://127.0.0.1:{closed}", {S("verify"): 1}, "verify"),
            (f"tcp://127.0.0.1:{closed}", {S("sslVersion"): 4}, "sslVersion"),
            (f"tcp://127.0.0.1:{closed}", {S("privateKeyPassword"): S("pw")}, "privateKeyPassword")]:
        assert conn_error(q, uri, opts) == f"{want} needs an ssl:// or mqtts:// address", (uri, opts)
