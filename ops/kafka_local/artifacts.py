"""The local broker's jars: fetched from Maven Central by ``ops/kafka/pom.xml`` and checked by
digest (see :mod:`ops.kafka_local`)."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import subprocess
import time
import xml.etree.ElementTree as ET
from pathlib import Path

from ops.kafka_local.config import KafkaLocalError
from settings import Settings

log = logging.getLogger(__name__)

POM_PATH = Path(__file__).resolve().parent.parent / "kafka" / "pom.xml"
MARKER_NAME = ".fetched.json"


def kafka_version(pom: Path = POM_PATH) -> str:
    """The Kafka version ``ops/kafka/pom.xml`` pins (its ``kafka.version`` property)."""
    ns = {"m": "http://maven.apache.org/POM/4.0.0"}
    node = ET.parse(pom).getroot().find("m:properties/m:kafka.version", ns)
    if node is None or not (node.text or "").strip():
        raise KafkaLocalError(f"{pom}: no <kafka.version> property")
    return (node.text or "").strip()


def libs_dir(settings: Settings) -> Path:
    return Path(settings.local.kafka_home) / "libs"


def _pom_digest(pom: Path) -> str:
    return hashlib.sha256(pom.read_bytes()).hexdigest()


def artifacts_ready(settings: Settings, pom: Path = POM_PATH) -> bool:
    """True when ``<kafka_home>/libs`` holds a complete fetch of exactly this pom."""
    marker = libs_dir(settings) / MARKER_NAME
    try:
        recorded = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    return bool(
        recorded.get("kafka_version") == kafka_version(pom)
        and recorded.get("pom_sha256") == _pom_digest(pom)
        and any(libs_dir(settings).glob("kafka_2.13-*.jar"))
    )


def fetch_artifacts(settings: Settings, *, force: bool = False, pom: Path = POM_PATH) -> Path:
    """Copy the broker's runtime jars from Maven Central into ``<kafka_home>/libs``.

    Idempotent: a marker file records the Kafka version and pom digest of the last complete
    fetch, and a matching marker skips Maven entirely. Returns the libs directory.
    """
    libs = libs_dir(settings)
    version = kafka_version(pom)
    if not force and artifacts_ready(settings, pom):
        log.info("Kafka %s jars already in %s", version, libs)
        return libs
    mvn = shutil.which("mvn")
    if mvn is None:
        raise KafkaLocalError("Maven (mvn) not found on PATH; it fetches the Kafka jars")
    libs.mkdir(parents=True, exist_ok=True)
    (libs / MARKER_NAME).unlink(missing_ok=True)
    for old in libs.glob("*.jar"):  # a version change must not leave two kafka-clients
        old.unlink()
    cmd = [
        mvn,
        "-q",
        "-B",
        "-Dstyle.color=never",
        "-f",
        str(pom),
        "dependency:copy-dependencies",
        f"-DoutputDirectory={libs.resolve()}",
        "-DincludeScope=runtime",
    ]
    log.info("fetching Kafka %s jars from Maven Central into %s", version, libs)
    started = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-30:])
        raise KafkaLocalError(f"mvn failed (exit {proc.returncode}):\n{tail}")
    jars = sorted(p.name for p in libs.glob("*.jar"))
    if not any(j.startswith("kafka_2.13-") for j in jars):
        raise KafkaLocalError(f"mvn succeeded but no kafka_2.13 jar landed in {libs}")
    marker = {"kafka_version": version, "pom_sha256": _pom_digest(pom), "jars": jars}
    (libs / MARKER_NAME).write_text(json.dumps(marker, indent=2) + "\n")
    log.info("fetched %d jars in %.1f s", len(jars), time.monotonic() - started)
    return libs
