"""A real Apache Kafka 4.x broker (KRaft, combined node) as a local Java process.

Tests, benchmarks and the demo need a broker whose consumer-group behaviour is
the reference one, on a machine without Docker. The jars come from Maven
Central through `kafka/pom.xml` (resolved once, then cached); each broker gets
its own data directory and free ports, and can be stopped and started again on
the same data, which the fault tests need.

Which cluster to use is decided by `open_cluster()`: `KAFKA_BOOTSTRAP_SERVERS`
when set, else testcontainers when a Docker engine answers, else this broker.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from consumer.kafka_config import committed_with_retry

__all__ = ["Cluster", "LocalKafka", "committed_with_retry", "create_topic", "open_cluster"]

KAFKA_VERSION = "4.1.1"
# Protects only a throwaway test keystore in the broker's temporary data directory.
_TLS_STORE_PASSWORD = "local-test-keystore"  # noqa: S105
_HERE = resources.files("gr_devtools") / "kafka"


class KafkaLaunchError(RuntimeError):
    """The local broker could not be resolved, formatted or started."""


def cache_root() -> Path:
    """Where jars (and other downloaded tools) are kept between runs."""
    explicit = os.environ.get("GR_CACHE_DIR")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "gr-s2s-consumer"


def ensure_jars() -> Path:
    """Resolve the broker's jars with Maven into the cache; a no-op when present."""
    libs = cache_root() / f"kafka-{KAFKA_VERSION}" / "libs"
    if (libs / f"kafka_2.13-{KAFKA_VERSION}.jar").exists():
        return libs
    if shutil.which("mvn") is None:
        raise KafkaLaunchError("Maven (mvn) is needed to fetch the Kafka jars; install it")
    libs.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix="libs-", dir=libs.parent))
    with resources.as_file(_HERE / "pom.xml") as pom:
        proc = subprocess.run(
            [
                "mvn", "-q", "-B", "-f", str(pom),
                "dependency:copy-dependencies",
                f"-DoutputDirectory={staging}", "-DincludeScope=runtime",
            ],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
    if proc.returncode != 0:
        shutil.rmtree(staging, ignore_errors=True)
        raise KafkaLaunchError(f"mvn could not resolve Kafka jars:\n{proc.stdout}\n{proc.stderr}")
    try:
        staging.rename(libs)
    except OSError:  # another process won the race: theirs is as good as ours
        shutil.rmtree(staging, ignore_errors=True)
    return libs


def _openssl(*args: str) -> None:
    if shutil.which("openssl") is None:
        raise KafkaLaunchError("the openssl command is needed to make test certificates")
    proc = subprocess.run(["openssl", *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise KafkaLaunchError(f"openssl {args[0]} failed: {proc.stderr or proc.stdout}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _port_bindable(port: int) -> bool:
    """Nothing else holds the port (a client's ephemeral port can take it while we are down)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _port_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
        return True
    return False


@dataclass
class LocalKafka:
    """One combined broker+controller node; `start()` formats storage on first use."""

    data_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="gr-kafka-")))
    port: int = field(default_factory=free_port)
    controller_port: int = field(default_factory=free_port)
    heap: str = "768m"
    extra_properties: dict[str, str] = field(default_factory=dict)
    # users of an extra SASL_PLAINTEXT listener (mechanism PLAIN), for testing
    # that clients authenticate by configuration alone
    sasl_users: dict[str, str] = field(default_factory=dict)
    sasl_port: int = field(default_factory=free_port)
    # serve that listener over TLS (SASL_SSL) with a self-signed certificate
    # made by keytool; clients trust `ca_pem`
    sasl_tls: bool = False
    # users of a SASL_SSL listener with SCRAM-SHA-512; their credentials are
    # written into the metadata when the storage is formatted
    scram_users: dict[str, str] = field(default_factory=dict)
    scram_port: int = field(default_factory=free_port)
    # an SSL listener that requires a client certificate signed by `client_ca_pem`
    # (mutual TLS); `client_certificate()` makes certificates for clients
    mtls: bool = False
    mtls_port: int = field(default_factory=free_port)
    # more PLAINTEXT listeners, name -> (port bound, port advertised): a test puts a
    # proxy on the advertised port, and every connection of its clients goes through it
    extra_listeners: dict[str, tuple[int, int]] = field(default_factory=dict)
    _proc: subprocess.Popen[bytes] | None = None
    _formatted: bool = False

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def sasl_bootstrap(self) -> str:
        return f"127.0.0.1:{self.sasl_port}"

    @property
    def sasl_protocol(self) -> str:
        return "SASL_SSL" if self.sasl_tls else "SASL_PLAINTEXT"

    @property
    def ca_pem(self) -> Path:
        return self.data_dir / "tls" / "broker.pem"

    @property
    def scram_bootstrap(self) -> str:
        return f"127.0.0.1:{self.scram_port}"

    @property
    def mtls_bootstrap(self) -> str:
        return f"127.0.0.1:{self.mtls_port}"

    @property
    def client_ca_pem(self) -> Path:
        """The CA the mTLS listener trusts for client certificates."""
        return self.data_dir / "tls" / "client-ca.pem"

    def client_certificate(self, name: str, *, trusted: bool = True) -> tuple[Path, Path]:
        """A client certificate and key (PEM) for the mTLS listener, made with openssl.

        `trusted=False` makes a self-signed one the broker does not know.
        """
        tls = self.data_dir / "tls"
        self._make_client_ca()
        key, cert = tls / f"{name}.key", tls / f"{name}.pem"
        if cert.exists():
            return cert, key
        subj = f"/CN={name}"
        if trusted:
            csr = tls / f"{name}.csr"
            _openssl("req", "-new", "-newkey", "rsa:2048", "-nodes", "-subj", subj,
                     "-keyout", str(key), "-out", str(csr))  # fmt: skip
            _openssl("x509", "-req", "-in", str(csr), "-CA", str(self.client_ca_pem),
                     "-CAkey", str(tls / "client-ca.key"), "-CAcreateserial", "-days", "2",
                     "-out", str(cert))  # fmt: skip
        else:
            _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                     "-subj", subj, "-keyout", str(key), "-out", str(cert))  # fmt: skip
        return cert, key

    def _make_client_ca(self) -> None:
        tls = self.data_dir / "tls"
        if self.client_ca_pem.exists():
            return
        tls.mkdir(parents=True, exist_ok=True)
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                 "-subj", "/CN=gr-local-client-ca", "-keyout", str(tls / "client-ca.key"),
                 "-out", str(self.client_ca_pem))  # fmt: skip

    def _make_certificate(self) -> None:
        """A self-signed certificate for 127.0.0.1 and localhost, valid for two days."""
        tls = self.data_dir / "tls"
        if (tls / "broker.p12").exists():
            return
        tls.mkdir(parents=True, exist_ok=True)
        store = ["-keystore", str(tls / "broker.p12"), "-storetype", "PKCS12",
                 "-storepass", _TLS_STORE_PASSWORD]  # fmt: skip
        for args in (
            ["-genkeypair", "-alias", "broker", "-keyalg", "RSA", "-keysize", "2048",
             "-dname", "CN=localhost", "-ext", "SAN=IP:127.0.0.1,DNS:localhost",
             "-validity", "2", "-keypass", _TLS_STORE_PASSWORD, *store],
            ["-exportcert", "-alias", "broker", "-rfc", "-file", str(self.ca_pem), *store],
        ):  # fmt: skip
            proc = subprocess.run(["keytool", *args], capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                raise KafkaLaunchError(f"keytool failed: {proc.stderr or proc.stdout}")

    def _properties(self) -> str:
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "listeners": (
                f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}"
            ),
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "inter.broker.listener.name": "PLAINTEXT",
            "controller.quorum.voters": f"1@127.0.0.1:{self.controller_port}",
            "log.dirs": str(self.data_dir / "log"),
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "12",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            "auto.create.topics.enable": "false",
            "num.partitions": "1",
            "log.flush.interval.messages": "9223372036854775807",
        }
        if self.sasl_users:
            proto = self.sasl_protocol
            props["listeners"] += f",{proto}://127.0.0.1:{self.sasl_port}"
            props["advertised.listeners"] += f",{proto}://127.0.0.1:{self.sasl_port}"
            props["listener.security.protocol.map"] += f",{proto}:{proto}"
            props["sasl.enabled.mechanisms"] = "PLAIN"
            users = " ".join(f'user_{u}="{p}"' for u, p in self.sasl_users.items())
            props[f"listener.name.{proto.lower()}.plain.sasl.jaas.config"] = (
                "org.apache.kafka.common.security.plain.PlainLoginModule required " + users + ";"
            )
            props[f"listener.name.{proto.lower()}.sasl.enabled.mechanisms"] = "PLAIN"
        if self.scram_users:
            # a listener of its own name, so it can be SASL_SSL next to the PLAIN one
            props["listeners"] += f",SCRAM://127.0.0.1:{self.scram_port}"
            props["advertised.listeners"] += f",SCRAM://127.0.0.1:{self.scram_port}"
            props["listener.security.protocol.map"] += ",SCRAM:SASL_SSL"
            props["listener.name.scram.sasl.enabled.mechanisms"] = "SCRAM-SHA-512"
            props["listener.name.scram.scram-sha-512.sasl.jaas.config"] = (
                "org.apache.kafka.common.security.scram.ScramLoginModule required;"
            )
        if self.mtls:
            self._make_client_ca()
            props["listeners"] += f",MTLS://127.0.0.1:{self.mtls_port}"
            props["advertised.listeners"] += f",MTLS://127.0.0.1:{self.mtls_port}"
            props["listener.security.protocol.map"] += ",MTLS:SSL"
            props["listener.name.mtls.ssl.client.auth"] = "required"
            props["listener.name.mtls.ssl.truststore.type"] = "PEM"
            props["listener.name.mtls.ssl.truststore.location"] = str(self.client_ca_pem)
        for name, (bound, advertised) in self.extra_listeners.items():
            props["listeners"] += f",{name}://127.0.0.1:{bound}"
            props["advertised.listeners"] += f",{name}://127.0.0.1:{advertised}"
            props["listener.security.protocol.map"] += f",{name}:PLAINTEXT"
        if (self.sasl_users and self.sasl_tls) or self.scram_users or self.mtls:
            self._make_certificate()
            props["ssl.keystore.location"] = str(self.data_dir / "tls" / "broker.p12")
            props["ssl.keystore.type"] = "PKCS12"
            props["ssl.keystore.password"] = _TLS_STORE_PASSWORD
            props["ssl.key.password"] = _TLS_STORE_PASSWORD
        props.update(self.extra_properties)
        return "".join(f"{k}={v}\n" for k, v in props.items())

    def _scram_credentials(self) -> list[str]:
        """`--add-scram` arguments: SCRAM users exist from the first start on."""
        out: list[str] = []
        for user, password in self.scram_users.items():
            out += ["--add-scram", f"SCRAM-SHA-512=[name={user},password={password}]"]
        return out

    def _java(self, libs: Path, *args: str) -> list[str]:
        return ["java", "-cp", str(libs / "*"), *args]

    def start(self, timeout_s: float = 60.0) -> None:
        if self.running:
            return
        libs = ensure_jars()
        self._wait_ports_bindable()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        config = self.data_dir / "server.properties"
        config.write_text(self._properties())
        if not (self.data_dir / "log" / "meta.properties").exists():
            fmt = subprocess.run(
                self._java(
                    libs, "kafka.tools.StorageTool", "format",
                    "-t", uuid.uuid4().hex[:22], "-c", str(config), "--ignore-formatted",
                    *self._scram_credentials(),
                ),
                capture_output=True, text=True, check=False,
            )  # fmt: skip
            if fmt.returncode != 0:
                raise KafkaLaunchError(f"kafka storage format failed:\n{fmt.stdout}{fmt.stderr}")
        with resources.as_file(_HERE / "log4j2.properties") as log_cfg:
            cmd = [
                "java", f"-Xmx{self.heap}", f"-Xms{self.heap}", "-XX:+UseG1GC",
                "-XX:TieredStopAtLevel=1", "-Xshare:auto", "-Djava.awt.headless=true",
                f"-Dkafka.logs.dir={self.data_dir}",
                f"-Dlog4j2.configurationFile={log_cfg}",
                "-cp", str(libs / "*"), "kafka.Kafka", str(config),
            ]  # fmt: skip
            out = (self.data_dir / "stdout.log").open("ab")
            self._proc = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
            out.close()
        self._wait_ready(timeout_s)

    def _wait_ready(self, timeout_s: float) -> None:
        from confluent_kafka.admin import AdminClient

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise KafkaLaunchError(f"broker exited early; see {self.data_dir}/server.log")
            if _port_open(self.port):
                admin = AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 0})
                with contextlib.suppress(Exception):
                    md = admin.list_topics(timeout=2)
                    if md.brokers:
                        return
            time.sleep(0.1)
        self.stop()
        raise KafkaLaunchError(f"broker not ready in {timeout_s}s; see {self.data_dir}/server.log")

    def stop(self, timeout_s: float = 30.0) -> None:
        """Clean shutdown (SIGTERM), the data directory is kept for `start()`."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        self._wait_port_free()

    def kill(self) -> None:
        """Hard stop (SIGKILL), as a crashed broker."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        self._wait_port_free()

    def _wait_port_free(self) -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _port_open(self.port):
            time.sleep(0.05)

    def _wait_ports_bindable(self, timeout_s: float = 30.0) -> None:
        """Before (re)starting: wait for every port of ours to be free to bind. Free ports
        are picked from the ephemeral range, where another process's outgoing connection
        may hold one for a while after the broker stopped."""
        ports = [self.port, self.controller_port]
        if self.sasl_users:
            ports.append(self.sasl_port)
        if self.scram_users:
            ports.append(self.scram_port)
        if self.mtls:
            ports.append(self.mtls_port)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not all(map(_port_bindable, ports)):
            time.sleep(0.2)

    def restart(self, timeout_s: float = 60.0) -> None:
        self.stop()
        self.start(timeout_s)

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> LocalKafka:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()


def docker_available() -> bool:
    """True when a Docker engine answers (the client alone is not enough)."""
    if shutil.which("docker") is None:
        return False
    try:
        proc = subprocess.run(
            ["docker", "info", "--format", "{{.ServerVersion}}"],
            capture_output=True, timeout=5, check=False,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0


@dataclass
class Cluster:
    """A bootstrap address and, when we started it, the handle that controls it."""

    bootstrap: str
    kind: str  # "external" | "testcontainers" | "local"
    local: LocalKafka | None = None


@contextlib.contextmanager
def open_cluster() -> Iterator[Cluster]:
    """The cluster to use, in the documented order; stops what it started."""
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        yield Cluster(external, "external")
        return
    if os.environ.get("GR_KAFKA_NO_DOCKER") != "1" and docker_available():
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer(f"apache/kafka:{KAFKA_VERSION}").with_kraft() as container:
            yield Cluster(container.get_bootstrap_server(), "testcontainers")
        return
    broker = LocalKafka()
    broker.start()
    try:
        yield Cluster(broker.bootstrap, "local", broker)
    finally:
        broker.destroy()


def create_topic(bootstrap: str, name: str, partitions: int = 1, **config: str) -> None:
    """Create a topic and wait until every partition has a leader."""
    from confluent_kafka.admin import AdminClient
    from confluent_kafka.cimpl import NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics(
        [NewTopic(name, num_partitions=partitions, replication_factor=1, config=config)]
    )
    for fut in futures.values():
        fut.result(30)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        md = admin.list_topics(name, timeout=5).topics.get(name)
        if (
            md is not None
            and md.error is None
            and len(md.partitions) == partitions
            and all(p.leader >= 0 for p in md.partitions.values())
        ):
            return
        time.sleep(0.05)
    raise KafkaLaunchError(f"topic {name} has no leaders after 30 s")


def main(argv: list[str] | None = None) -> int:
    """`python -m gr_devtools.kafka_local fetch|serve`: jars only, or a broker until ^C."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m gr_devtools.kafka_local")
    parser.add_argument("action", choices=["fetch", "serve"])
    args = parser.parse_args(argv)
    started = time.monotonic()
    libs = ensure_jars()
    if args.action == "fetch":
        print(f"Kafka {KAFKA_VERSION} jars in {libs} ({time.monotonic() - started:.1f}s)")
        return 0
    broker = LocalKafka()
    broker.start()
    print(f"Kafka {KAFKA_VERSION} listening on {broker.bootstrap} (data {broker.data_dir})")
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    finally:
        broker.destroy()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
