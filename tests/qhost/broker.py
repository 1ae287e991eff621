"""A real mosquitto on 127.0.0.1 for the q host tests, with certificates made by the openssl CLI.

The Python twin of tests/common/mod.rs: four listeners on free loopback ports — plain TCP, TLS, mutual TLS
and TCP with a password file — a test CA, a server certificate for localhost/127.0.0.1/::1, a client
certificate and a second CA that signed nothing the broker uses. Everything stays on loopback.
"""
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

USER = "gateway"
PASSWORD = "s3cret-pw"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(*args, **kw):
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **kw)


class Certs:
    """A CA, a server and a client certificate (EC P-256), and an unrelated CA, as PEM files in `d`."""

    def __init__(self, d):
        os.makedirs(d, exist_ok=True)
        self.dir = d
        p = lambda n: os.path.join(d, n)  # noqa: E731
        self.ca, self.ca_key = p("ca.pem"), p("ca.key")
        self.other_ca, other_key = p("other-ca.pem"), p("other-ca.key")
        self._ca(self.ca, self.ca_key, "qhost test CA")
        self._ca(self.other_ca, other_key, "qhost other CA")
        self.server_cert, self.server_key = p("server.pem"), p("server.key")
        self._leaf("localhost", self.server_cert, self.server_key,
                   "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1\nextendedKeyUsage=serverAuth\n")
        self.client_cert, self.client_key = p("client.pem"), p("client.key")
        self._leaf("qmqtt-client", self.client_cert, self.client_key,
                   "extendedKeyUsage=clientAuth\n")
        # One file with both the client certificate and its key (paho's keyStore without privateKey).
        self.client_bundle = p("client-bundle.pem")
        with open(self.client_bundle, "w") as f:
            f.write(open(self.client_cert).read() + open(self.client_key).read())

    def _ca(self, cert, key, cn):
        _run("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-keyout", key, "-out", cert, "-days", "30", "-subj", f"/CN={cn}",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign")

    def _leaf(self, cn, cert, key, ext):
        csr = cert + ".csr"
        extf = cert + ".ext"
        with open(extf, "w") as f:
            f.write("basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n" + ext)
        _run("openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", key, "-out", csr, "-subj", f"/CN={cn}")
        _run("openssl", "x509", "-req", "-in", csr, "-CA", self.ca, "-CAkey", self.ca_key,
             "-CAcreateserial", "-out", cert, "-days", "30", "-extfile", extf)


class Broker:
    """mosquitto with its own directory, ports and certificates; killed by stop()/kill()."""

    def __init__(self, persistence=False, mqtt5_limits=False, tcp_extra="", deny_subscribe=()):
        """mqtt5_limits: the MQTT 5 limits a client must keep to (mosquitto disconnects one that does not):
        Receive Maximum 2, Maximum Packet Size 256, Server Keep Alive 10 s, Topic Alias Maximum 2 (plain and
        TLS listeners). tcp_extra: lines for the plain listener (e.g. an acl_file). `deny_subscribe`: topic
        filters the plain TCP listener refuses subscriptions to (SUBACK 0x80), through mosquitto's dynamic
        security plugin (its acl_file never refuses a SUBSCRIBE)."""
        self.dir = tempfile.mkdtemp(prefix="qhost-broker-")
        self.deny_subscribe = list(deny_subscribe)
        self.certs = Certs(os.path.join(self.dir, "certs"))
        self.persistence = persistence
        self.mqtt5_limits = mqtt5_limits
        self.tcp_extra = tcp_extra
        self.proc = None
        # Other processes on this machine take free ports too: on a lost race, pick new ports and retry.
        for attempt in range(5):
            self.tcp_port, self.tls_port = free_port(), free_port()
            self.mtls_port, self.auth_port = free_port(), free_port()
            self._write_config()
            try:
                self.start()
                break
            except RuntimeError:
                self.kill()
                if attempt == 4:
                    raise

    @property
    def tcp_uri(self):
        return f"tcp://127.0.0.1:{self.tcp_port}"

    @property
    def tls_uri(self):
        return f"ssl://localhost:{self.tls_port}"

    @property
    def mtls_uri(self):
        return f"ssl://localhost:{self.mtls_port}"

    @property
    def auth_uri(self):
        return f"tcp://127.0.0.1:{self.auth_port}"

    def _write_config(self):
        d, c = self.dir, self.certs
        pw = os.path.join(d, "passwd")
        open(pw, "w").close()
        _run("mosquitto_passwd", "-b", pw, USER, PASSWORD)
        user = "user root\n" if os.geteuid() == 0 else ""
        alias = "max_topic_alias 2\n" if self.mqtt5_limits else ""
        acl = ""
        if self.deny_subscribe:
            import json
            sec = os.path.join(d, "dynsec.json")
            allow = dict.fromkeys(["publishClientSend", "publishClientReceive", "subscribe", "unsubscribe"], True)
            deny = [{"acltype": "subscribePattern", "topic": t, "priority": 0, "allow": False}
                    for t in self.deny_subscribe]
            with open(sec, "w") as f:
                json.dump({"defaultACLAccess": allow, "clients": [], "anonymousGroup": "anon",
                           "groups": [{"groupname": "anon", "roles": [{"rolename": "anon"}]}],
                           "roles": [{"rolename": "anon", "acls": deny}]}, f)
            lib = next((p for p in ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib")
                        if os.path.exists(f"{p}/mosquitto_dynamic_security.so")), "/usr/lib")
            acl = f"plugin {lib}/mosquitto_dynamic_security.so\nplugin_opt_config_file {sec}\n"
        conf = (
            f"{user}per_listener_settings true\n"
            f"persistence {'true' if self.persistence else 'false'}\npersistence_location {d}/\n"
            f"log_dest file {d}/mosquitto.log\nlog_type error\nlog_type warning\nlog_type notice\n"
            "max_queued_messages 1000000\n"
            + ("max_inflight_messages 2\nmax_packet_size 256\nmax_keepalive 10\n" if self.mqtt5_limits
               else "max_inflight_messages 0\n")
            + f"listener {self.tcp_port} 127.0.0.1\nallow_anonymous true\n{alias}{self.tcp_extra}{acl}"
            f"listener {self.tls_port} 127.0.0.1\nallow_anonymous true\n{alias}"
            f"cafile {c.ca}\ncertfile {c.server_cert}\nkeyfile {c.server_key}\n"
            f"listener {self.mtls_port} 127.0.0.1\nallow_anonymous true\n"
            f"cafile {c.ca}\ncertfile {c.server_cert}\nkeyfile {c.server_key}\nrequire_certificate true\n"
            f"listener {self.auth_port} 127.0.0.1\nallow_anonymous false\npassword_file {pw}\n"
        )
        with open(os.path.join(d, "mosquitto.conf"), "w") as f:
            f.write(conf)

    def start(self):
        self.proc = subprocess.Popen(["mosquitto", "-c", os.path.join(self.dir, "mosquitto.conf")],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.time() + 10
        for port in (self.tcp_port, self.tls_port, self.mtls_port, self.auth_port):
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if time.time() > deadline or self.proc.poll() is not None:
                        raise RuntimeError(f"mosquitto did not listen on {port}: {self.log()}")
                    time.sleep(0.02)

    def log(self):
        try:
            return open(os.path.join(self.dir, "mosquitto.log")).read()
        except OSError:
            return ""

    def stop(self):
        """SIGTERM and wait (a clean stop)."""
        if self.proc:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None

    def kill(self):
        if self.proc:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None

    def restart(self):
        self.stop()
        self.start()

    def freeze(self):
        self.proc.send_signal(signal.SIGSTOP)

    def thaw(self):
        self.proc.send_signal(signal.SIGCONT)

    def close(self):
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


class Sub:
    """mosquitto_sub -v in the background on the broker's plain listener; lines are "topic payload"."""

    def __init__(self, broker, topic, qos=1, count=None):
        args = ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(broker.tcp_port), "-t", topic,
                "-q", str(qos), "-v", "-i", f"qhost-sub-{free_port()}"]
        if count:
            args += ["-C", str(count)]
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self.lines = []
        import threading

        def reader():
            for line in self.proc.stdout:
                self.lines.append(line.decode("utf-8", "replace").rstrip("\n"))

        self.t = threading.Thread(target=reader, daemon=True)
        self.t.start()
        # Wait until the subscription is live: publish probes until one arrives.
        probe_topic = topic.rstrip("#").rstrip("/") + ("/__probe" if topic.endswith("#") else "")
        deadline = time.time() + 10
        while not any(line.endswith("__probe") for line in self.lines):
            pub(broker, probe_topic, "__probe", qos=1)
            if time.time() > deadline:
                raise RuntimeError("mosquitto_sub did not start receiving")
            time.sleep(0.05)
        self.lines[:] = [x for x in self.lines if not x.endswith("__probe")]

    def wait_for(self, n, timeout=10):
        deadline = time.time() + timeout
        while time.time() < deadline:
            got = [x for x in self.lines if not x.endswith("__probe")]
            if len(got) >= n:
                return got
            time.sleep(0.02)
        return [x for x in self.lines if not x.endswith("__probe")]

    def close(self):
        self.proc.kill()
        self.proc.wait()


def pub(broker, topic, msg, qos=0, retain=False):
    args = ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(broker.tcp_port), "-t", topic, "-m", msg,
            "-q", str(qos)]
    if retain:
        args.append("-r")
    subprocess.run(args, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


class Gate:
    """A TCP relay on a loopback port of its own in front of the broker's plain listener, to take the broker
    away from a client without touching the broker (independent subscribers stay connected): `shut()` cuts
    the connections it carries and closes its listener (connects are refused), `open()` listens again on the
    same port."""

    def __init__(self, broker):
        import threading
        self.target = broker.tcp_port
        self.port = free_port()
        self.lock = threading.Lock()
        self.socks = []
        self.listener = None
        self.open()

    @property
    def uri(self):
        return f"tcp://127.0.0.1:{self.port}"

    def open(self):
        import threading
        ls = socket.socket()
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind(("127.0.0.1", self.port))
        ls.listen(16)
        ls.settimeout(0.05)
        self.listener = ls
        threading.Thread(target=self._accept, args=(ls,), daemon=True).start()

    def _accept(self, ls):
        import threading
        while self.listener is ls:
            try:
                a, _ = ls.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            try:
                b = socket.create_connection(("127.0.0.1", self.target))
            except OSError:
                a.close()
                continue
            with self.lock:
                self.socks += [a, b]
            for x, y in ((a, b), (b, a)):
                threading.Thread(target=self._pump, args=(x, y), daemon=True).start()

    @staticmethod
    def _pump(src, dst):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def shut(self):
        ls, self.listener = self.listener, None
        if ls:
            ls.close()
        with self.lock:
            socks, self.socks = self.socks, []
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def close(self):
        self.shut()
