"""Node configuration: embedded defaults < TOML file < environment < command line.

The TOML keys are the field names of ``NodeConfig`` (see ``config/node.toml``, which
documents each one). Environment overrides use the prefix ``DXR_NODE__`` and ``__``
between nested keys, e.g. ``DXR_NODE__PORT=104``, ``DXR_NODE__DISPATCH__MAX_ATTEMPTS=5``;
lists are comma separated (``DXR_NODE__ALLOWED_CALLING_AETS=CT1,PACS``) and
``DXR_NODE__DESTINATIONS`` takes ``AET@HOST:PORT`` items (or a JSON list of tables).
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import socket
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from dxr_node.integration.config import FHIRConfig, HL7Config

ENV_PREFIX = "DXR_NODE__"
OBJECT_KINDS = ("SR", "SC", "GSPS", "PDF")
ObjectKind = Literal["SR", "SC", "GSPS", "PDF"]
DEFAULT_OBJECTS: tuple[ObjectKind, ...] = ("SR", "SC", "GSPS")

# DICOM AE titles: 1-16 characters of the default repertoire, no backslash, not all spaces.
_AET_PATTERN = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")


class ConfigError(Exception):
    """A configuration problem, with a message naming the bad key and why."""


def check_ae_title(value: str) -> str:
    value = value.strip()
    if not _AET_PATTERN.match(value):
        raise ValueError(f"not a valid AE title (1-16 printable characters, no '\\'): {value!r}")
    return value


class Destination(BaseModel):
    """A PACS (or other C-STORE SCP) that receives the produced objects; ``kind = "stow"``
    sends them by DICOMweb STOW-RS to ``url`` instead (same queue, retries and backoff)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    kind: Literal["dicom", "stow"] = "dicom"
    ae_title: str = ""
    host: str = ""
    port: int | None = Field(default=None, ge=1, le=65535)
    url: str | None = Field(default=None, pattern=r"^https?://")  # DICOMweb service root
    token: str | None = None  # STOW-RS "Authorization: Bearer <token>"

    @model_validator(mode="after")
    def _complete(self) -> Destination:
        if self.kind == "stow":
            if not self.url:
                raise ValueError(f"destination {self.name!r}: kind 'stow' needs url")
        else:
            self.ae_title = check_ae_title(self.ae_title)
            if not self.host or not self.port:
                raise ValueError(f"destination {self.name!r}: a DICOM destination needs "
                                 "ae_title, host and port")
        return self
    tls: bool = False  # DICOM TLS with the node's [tls] certificate and CA file


class TlsConfig(BaseModel):
    """DICOM TLS (PS3.15 secure transport) for the SCP and for destinations with tls."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = False  # the SCP listens with TLS only (2762 is the usual port)
    certificate: Path | None = None  # PEM, the node's (server, and client for destinations)
    private_key: Path | None = None
    ca_certificates: Path | None = None  # PEM bundle: who signs peers' certificates
    require_client_certificate: bool = False  # mutual TLS on the SCP
    # Client certificate subjects allowed (CN, or the whole "CN=...,O=..."); empty: any
    # certificate the CA vouches for.
    allowed_client_subjects: list[str] = Field(default_factory=list)
    verify_server_hostname: bool = True  # destinations' certificates must name their host

    @model_validator(mode="after")
    def _complete(self) -> TlsConfig:
        if self.enabled and (self.certificate is None or self.private_key is None):
            raise ValueError("tls.enabled needs tls.certificate and tls.private_key")
        if self.allowed_client_subjects and not self.require_client_certificate:
            raise ValueError("tls.allowed_client_subjects needs "
                             "tls.require_client_certificate = true")
        return self


class AuditConfig(BaseModel):
    """IHE ATNA audit trail (DICOM PS3.15 A.5 messages; see ``dxr_node.node.audit``)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = False
    file: Path | None = None  # append-only local copy; default <data_dir>/audit/audit.log
    syslog_host: str | None = None  # the audit record repository (None: file only)
    syslog_port: int = Field(default=6514, ge=1, le=65535)  # 6514: syslog over TLS
    syslog_tls: bool = True  # RFC 5425, verified with the [tls] CA file (else the system's)


class DispatchPolicy(BaseModel):
    """How produced objects are sent (used by ``dxr_node.node.dispatch``)."""

    model_config = ConfigDict(extra="forbid")

    # 80 attempts at 2 s doubling to a 300 s cap, equal jitter: ~4.5 h of retries (3.0-6.1 h)
    max_attempts: int = Field(default=80, ge=1)
    initial_backoff_s: float = Field(default=2.0, gt=0)
    max_backoff_s: float = Field(default=300.0, gt=0)
    timeout_s: float = Field(default=30.0, gt=0)  # ACSE, DIMSE and network timeouts


class ClusterConfig(BaseModel):
    """Several nodes on one PostgreSQL database (``database = "postgresql://..."``).

    Each node registers under ``node_name`` and renews, every ``heartbeat_s``, the
    leases of the jobs and sends it holds; work whose lease has run out for
    ``lease_s`` (its node died) is taken over by any other node."""

    model_config = ConfigDict(extra="forbid")

    node_name: str = Field(default_factory=socket.gethostname, min_length=1, max_length=64)
    lease_s: float = Field(default=60.0, gt=0)
    heartbeat_s: float = Field(default=10.0, gt=0)

    @model_validator(mode="after")
    def _heartbeat_within_lease(self) -> ClusterConfig:
        if self.heartbeat_s >= self.lease_s:
            raise ValueError("heartbeat_s must be shorter than lease_s (a live node's "
                             "leases would expire between heartbeats)")
        return self


class RolesConfig(BaseModel):
    """What this node does (`serve --no-scp | --no-workers | --no-dispatch`): a
    receive-only or analysis-only node of a cluster turns the others off."""

    model_config = ConfigDict(extra="forbid")

    scp: bool = True
    workers: bool = True
    dispatch: bool = True


class WebConfig(BaseModel):
    """The operator console (``dxr_node.web``), served by ``dxr-node serve``."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    host: str = "127.0.0.1"  # loopback: no credentials needed; any other address needs them
    port: int = Field(default=8080, ge=0, le=65535)  # 0: any free port (tests)
    token: str | None = Field(default=None, min_length=16)  # "Authorization: Bearer <token>"
    username: str | None = Field(default=None, min_length=1)  # HTTP basic auth
    password: str | None = Field(default=None, min_length=8)
    # Host header names the console answers to besides localhost/loopback addresses (and
    # web.host); anything else gets 400, so a DNS-rebinding page cannot read the console.
    # Empty with credentials set: any name (the credentials protect it).
    allowed_hosts: list[str] = Field(default_factory=list)


class ReviewConfig(BaseModel):
    """Reader review of results (``dxr_node.node.review``)."""

    model_config = ConfigDict(extra="forbid")

    # none: results go out preliminary, as before; send-preliminary: they go out at once
    # and a reader's final version follows; hold-until-verified: nothing goes to PACS
    # until a reader approves (then only the final objects).
    mode: Literal["none", "send-preliminary", "hold-until-verified"] = "none"
    organisation: str = ""  # Verifying Organization of the final SR (default: institution)


class NodeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ae_title: str = "DXRNODE"
    # Loopback by default: a fresh node is reachable only from this machine until the
    # operator opens it (containers set DXR_NODE__HOST=0.0.0.0).
    host: str = "127.0.0.1"
    port: int = Field(default=11112, ge=1, le=65535)
    # Empty: any calling AE title is accepted (a warning is logged at start-up).
    allowed_calling_aets: list[str] = Field(default_factory=list)
    # Empty: any source address. Items are addresses or networks ("10.1.2.0/24").
    allowed_source_ips: list[str] = Field(default_factory=list)
    max_associations: int = Field(default=10, ge=1)
    # One source address may hold at most this many connections (a slow or hostile
    # sender cannot take every slot). Modalities rarely open more than a few at once.
    max_associations_per_peer: int = Field(default=5, ge=1)
    # Deadlines a trickling sender cannot stretch: the association request must be
    # complete this long after connecting, and later each PDU within network_timeout_s.
    acse_timeout_s: float = Field(default=10.0, gt=0)
    network_timeout_s: float = Field(default=30.0, gt=0)
    max_store_mb: int = Field(default=256, ge=1)  # larger C-STOREs are cut off (aborted)
    data_dir: Path = Path("data")
    spool_dir: Path | None = None  # default: <data_dir>/spool
    # default: <data_dir>/dxr-node.sqlite; "postgresql://user@host/db" for a cluster
    database: Path | str | None = None
    workers: int = Field(default=0, ge=0)  # 0: one per core
    worker_max_attempts: int = Field(default=3, ge=1)  # claims before an image is failed
    destinations: list[Destination] = Field(default_factory=list)
    send_objects: list[ObjectKind] = Field(default_factory=lambda: list(DEFAULT_OBJECTS))
    send_objects_for_rejected: bool = True  # rejected images still get an SR saying why
    # A site's own DXR-BMD reference table (JSON, the format of the packaged one);
    # None uses the packaged table (dxr_node/clinical/data/reference_v1.json).
    reference_table: Path | None = None
    retention_days: float = Field(default=30.0, ge=0)  # 0 keeps spooled images forever
    min_free_disk_mb: int = Field(default=500, ge=0)  # below this C-STORE answers 0xA700
    # Refused from the header before decoding (generous for real DX: 43 x 43 cm at 0.05 mm
    # is 74 Mpixel); a larger image is a failed job with the reason.
    max_image_pixels: int = Field(default=100_000_000, ge=1)
    max_decoded_mb: int = Field(default=400, ge=1)
    dispatch: DispatchPolicy = Field(default_factory=DispatchPolicy)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    roles: RolesConfig = Field(default_factory=RolesConfig)
    web: WebConfig = Field(default_factory=WebConfig)
    review: ReviewConfig = Field(default_factory=ReviewConfig)
    hl7: HL7Config = Field(default_factory=HL7Config)  # orders in, results/charges out
    fhir: FHIRConfig = Field(default_factory=FHIRConfig)
    tls: TlsConfig = Field(default_factory=TlsConfig)
    audit: AuditConfig = Field(default_factory=AuditConfig)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @field_validator("database", mode="before")
    @classmethod
    def _database_file_or_url(cls, value: Any) -> Any:
        if isinstance(value, str) and not value.startswith(("postgresql://", "postgres://")):
            return Path(value)
        return value

    @field_validator("reference_table")
    @classmethod
    def _reference_table_loads(cls, value: Path | None) -> Path | None:
        if value is not None:
            from dxr_node.clinical import ReferenceTableError, load_reference

            try:
                load_reference(value)
            except ReferenceTableError as exc:
                raise ValueError(str(exc)) from None
        return value

    @field_validator("ae_title")
    @classmethod
    def _valid_aet(cls, value: str) -> str:
        return check_ae_title(value)

    @field_validator("allowed_calling_aets")
    @classmethod
    def _valid_aets(cls, values: list[str]) -> list[str]:
        return [check_ae_title(v) for v in values]

    @field_validator("allowed_source_ips")
    @classmethod
    def _valid_networks(cls, values: list[str]) -> list[str]:
        for value in values:
            try:
                ipaddress.ip_network(value, strict=False)
            except ValueError:
                raise ValueError(f"not an IP address or network: {value!r}") from None
        return values

    @field_validator("destinations")
    @classmethod
    def _unique_names(cls, values: list[Destination]) -> list[Destination]:
        names = [d.name for d in values]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"destination names must be unique: {', '.join(duplicates)}")
        return values

    @property
    def spool_path(self) -> Path:
        return self.spool_dir if self.spool_dir is not None else self.data_dir / "spool"

    @property
    def objects_path(self) -> Path:
        """Where workers write the produced SR/SC/GSPS/PDF files."""
        return self.data_dir / "objects"

    @property
    def audit_path(self) -> Path:
        return self.audit.file if self.audit.file is not None \
            else self.data_dir / "audit" / "audit.log"

    @property
    def database_url(self) -> str | None:
        """The PostgreSQL database of a cluster, or None for the embedded SQLite file."""
        return self.database if isinstance(self.database, str) else None

    @property
    def database_path(self) -> Path:
        """The SQLite database file (not used when ``database_url`` is set)."""
        if isinstance(self.database, Path):
            return self.database
        return self.data_dir / "dxr-node.sqlite"

    @property
    def database_target(self) -> str | Path:
        """What ``Store`` opens: the PostgreSQL URL, else the SQLite file."""
        return self.database_url or self.database_path

    @property
    def worker_count(self) -> int:
        # The cores this process may run on (a container pinned with --cpuset-cpus gets
        # fewer than the host's os.cpu_count()).
        return self.workers or len(os.sched_getaffinity(0))

    def destination(self, name: str) -> Destination | None:
        return next((d for d in self.destinations if d.name == name), None)


def parse_destination(text: str) -> dict[str, Any]:
    """``AET@HOST:PORT`` (IPv6 hosts in brackets) -> a destination table named by AET."""
    match = re.fullmatch(r"([^@]+)@(\[[^\]]+\]|[^:\[\]]+):(\d+)", text.strip())
    if not match:
        raise ConfigError(f"destination {text!r}: expected AET@HOST:PORT, e.g. PACS@10.0.0.5:104")
    aet, host, port = match.groups()
    return {"name": aet, "ae_title": aet, "host": host.strip("[]"), "port": int(port)}


def _env_value(key: str, raw: str) -> Any:
    """Turn one environment string into the shape its key expects."""
    if key == "destinations":
        if raw.lstrip().startswith("["):
            return json.loads(raw)
        return [parse_destination(item) for item in raw.split(",") if item.strip()]
    if key in ("allowed_calling_aets", "allowed_source_ips", "send_objects", "allowed_hosts",
               "allowed_client_subjects"):
        if raw.lstrip().startswith("["):
            return json.loads(raw)
        return [item.strip() for item in raw.split(",") if item.strip()]
    return raw  # pydantic converts strings to int/float/bool/Path


def env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """Nested dict of the ``DXR_NODE__*`` variables in ``environ``."""
    out: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        path = [part.lower() for part in name[len(ENV_PREFIX):].split("__")]
        try:
            value = _env_value(path[-1], raw)
        except (json.JSONDecodeError, ConfigError) as exc:
            raise ConfigError(f"environment {name}: {exc}") from None
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return out


def _merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _describe(error: ValidationError, source: str) -> str:
    lines = []
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "(top level)"
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message = "unknown key (check its spelling in config/node.toml)"
        lines.append(f"{source}: {key}: {message}")
    return "\n".join(lines)


def load_config(
    path: str | Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> NodeConfig:
    """Defaults, then the TOML file at ``path`` (if given), then ``DXR_NODE__*``
    variables, then ``overrides`` (command-line values; None values are ignored).
    Raises ConfigError with one line per bad key."""
    data: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        try:
            with open(path, "rb") as handle:
                data = tomllib.load(handle)
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    env = env_overrides(os.environ if environ is None else environ)
    if env:
        data = _merge(data, env)
        source += " + environment"
    cli = {k: v for k, v in (overrides or {}).items() if v is not None}
    if cli:
        data = _merge(data, cli)
        source += " + command line"
    try:
        return NodeConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, source)) from None


def cli_overrides(
    *,
    host: str | None = None,
    port: int | None = None,
    ae_title: str | None = None,
    data_dir: str | None = None,
    workers: int | None = None,
    destinations: Sequence[str] | None = None,
    allow_aets: Sequence[str] | None = None,
    no_scp: bool = False,
    no_workers: bool = False,
    no_dispatch: bool = False,
    node_name: str | None = None,
) -> dict[str, Any]:
    """The ``dxr-node serve`` options as config keys (destinations replace the file's)."""
    return {
        "host": host,
        "port": port,
        "ae_title": ae_title,
        "data_dir": data_dir,
        "workers": workers,
        "destinations": None if destinations is None
        else [parse_destination(d) for d in destinations],
        "allowed_calling_aets": None if allow_aets is None else list(allow_aets),
        # Only what the flags turn off: an unset flag leaves the file's value.
        "roles": {k: False for k, off in (("scp", no_scp), ("workers", no_workers),
                                          ("dispatch", no_dispatch)) if off} or None,
        "cluster": {"node_name": node_name} if node_name else None,
    }
