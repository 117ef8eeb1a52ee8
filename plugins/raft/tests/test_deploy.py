"""The deploy/ files for a 3-node cluster, cross-checked against the config schema.

Docker and Kubernetes cannot run here, so this parses the Dockerfile, the compose file and
the manifests and checks what would only fail at deploy time: every node config passes
the real ``[raft]`` and ``[s3_proxy]`` parsers, names and ports agree across files, peers
agree across nodes, mounts and secret references resolve. Each cross-check returns a list
of problems, so the negative tests can show that a broken file is reported.
"""

from __future__ import annotations

import base64
import copy
import importlib.util
import json
import re
import shlex
import tomllib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from enigma_gateway_s3.config import DEFAULT_LISTEN, parse_options
from enigma_raft.config import RaftOptions, parse_raft

from enigma.config import CONFIG_FILE, Config, parse_config
from enigma.errors import ConfigError

REPO = Path(__file__).resolve().parents[3]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
#: The gateway's port; the image's other exposed port is Raft's.
S3_PORT = int(DEFAULT_LISTEN.rpartition(":")[2])
PLACEHOLDER_MARK = "CHANGE-ME"


def _renderer() -> ModuleType:
    """deploy/render_config.py, the exact code the init container runs."""
    spec = importlib.util.spec_from_file_location("enigma_deploy_render_config",
                                                  DEPLOY / "render_config.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


render_config = _renderer()


# ------------------------------------------------------------------------- Dockerfile


@dataclass
class Image:
    """What the Dockerfile declares that the other files depend on."""

    base: str = ""
    user: str = ""
    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    exposed: set[int] = field(default_factory=set)
    env: dict[str, str] = field(default_factory=dict)
    volumes: list[str] = field(default_factory=list)
    installs: list[str] = field(default_factory=list)
    copies: list[tuple[list[str], str]] = field(default_factory=list)

    @property
    def raft_port(self) -> int:
        others = self.exposed - {S3_PORT}
        assert len(others) == 1, f"the image should expose {S3_PORT} and one Raft port"
        return next(iter(others))


def parse_dockerfile(text: str) -> Image:
    """The instructions this deployment relies on (continuations joined, comments gone)."""
    image = Image()
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    for line in logical:
        instruction, _, rest = line.partition(" ")
        rest = rest.strip()
        match instruction.upper():
            case "FROM":
                image.base = rest
            case "USER":
                image.user = rest
            case "ENTRYPOINT":
                image.entrypoint = json.loads(rest)
            case "CMD":
                image.cmd = json.loads(rest)
            case "EXPOSE":
                image.exposed |= {int(p.split("/")[0]) for p in rest.split()}
            case "ENV":
                image.env.update(dict(item.split("=", 1) for item in shlex.split(rest)))
            case "VOLUME":
                image.volumes += json.loads(rest) if rest.startswith("[") else rest.split()
            case "RUN" if "pip install" in rest:
                after = rest.split("pip install", 1)[1].split("&&")[0]
                image.installs += [t for t in shlex.split(after) if not t.startswith("-")]
            case "COPY":
                paths = [t for t in shlex.split(rest) if not t.startswith("--")]
                image.copies.append((paths[:-1], paths[-1]))
    return image


@pytest.fixture(scope="module")
def image() -> Image:
    return parse_dockerfile((DEPLOY / "Dockerfile").read_text(encoding="utf-8"))


def test_every_yaml_under_deploy_parses() -> None:
    """A YAML typo would otherwise surface only at `docker compose` / `kubectl apply`."""
    files = sorted([*DEPLOY.rglob("*.yml"), *DEPLOY.rglob("*.yaml")])
    assert len(files) >= 6
    for path in files:
        docs = [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]
        assert docs, f"{path}: empty"
        assert all(isinstance(d, dict) for d in docs), f"{path}: a document is not a mapping"


def test_dockerfile(image: Image) -> None:
    """The image runs `enigma serve` as non-root with the gateway, Raft and S3 storage."""
    assert image.base == "python:3.11-slim"
    assert image.user and image.user.split(":")[0] not in ("root", "0")
    assert image.entrypoint == ["enigma"] and image.cmd == ["serve"]
    assert image.exposed == {S3_PORT, 7000}
    assert image.env.get("ENIGMA_CONFIG_DIR")
    assert "/var/lib/enigma" in image.volumes
    wanted = {".", "plugins/gateway-s3", "plugins/raft", "plugins/storage-s3"}
    assert {str(PurePosixPath(t)) for t in image.installs} == wanted
    for target in wanted:
        assert (REPO / target / "pyproject.toml").is_file(), target
    for sources, _ in image.copies:
        for source in sources:
            assert (REPO / source).exists(), f"COPY {source}: not in the build context"


# --------------------------------------------------------------------------- renderer


def test_renderer_escapes_and_names_missing_variables() -> None:
    """Secrets with quotes or backslashes stay one TOML string; unset names are listed."""
    template = 'a = "${ONE}"\nb = "x-${TWO}"\n'
    value = 'q"uo\\te\n\x7f'
    parsed = tomllib.loads(render_config.render(template, {"ONE": value, "TWO": "2"}))
    assert parsed == {"a": value, "b": "x-2"}
    with pytest.raises(render_config.MissingVariables, match="ONE, TWO"):
        render_config.render(template, {})


# ---------------------------------------------------------------------- compose file


@dataclass(frozen=True)
class Mount:
    source: str
    target: str
    read_only: bool

    @property
    def is_bind(self) -> bool:
        return self.source.startswith((".", "/"))


def _mounts(service: dict[str, Any]) -> list[Mount]:
    mounts = []
    for entry in service.get("volumes", []):
        if isinstance(entry, dict):
            mounts.append(Mount(entry["source"], entry["target"],
                                bool(entry.get("read_only"))))
        else:
            source, target, *mode = entry.split(":")
            mounts.append(Mount(source, target, "ro" in "".join(mode).split(",")))
    return mounts


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {k: str(v) for k, v in env.items()}


def _published(service: dict[str, Any]) -> list[tuple[int, int]]:
    """(host port, container port) of each ``ports`` entry."""
    pairs = []
    for entry in service.get("ports", []):
        if isinstance(entry, dict):
            pairs.append((int(entry["published"]), int(entry["target"])))
        else:
            parts = str(entry).split("/")[0].split(":")
            pairs.append((int(parts[-2]), int(parts[-1])))
    return pairs


def _built_from_deploy(service: dict[str, Any]) -> bool:
    build = service.get("build")
    return isinstance(build, dict) and build.get("dockerfile") == "deploy/Dockerfile"


def gateway_services(compose: dict[str, Any]) -> list[str]:
    """The cluster's nodes: Enigma services started by `docker compose up`."""
    return sorted(n for n, s in compose["services"].items()
                  if _built_from_deploy(s) and not s.get("profiles"))


def s3_services(compose: dict[str, Any]) -> dict[str, int]:
    """SeaweedFS services and the port their S3 API listens on."""
    found = {}
    for name, service in compose["services"].items():
        if str(service.get("image", "")).startswith("chrislusf/seaweedfs"):
            flags = dict(a.partition("=")[::2] for a in service.get("command", [])
                         if a.startswith("-"))
            found[name] = int(flags.get("-s3.port") or 8333)
    return found


def _config_dir(service: dict[str, Any], image: Image) -> str:
    return _environment(service).get("ENIGMA_CONFIG_DIR", image.env["ENIGMA_CONFIG_DIR"])


def compose_configs(compose: dict[str, Any], image: Image) -> dict[str, Config]:
    """Each Enigma service's enigma.toml, found through its config-dir bind mount."""
    configs = {}
    for name, service in compose["services"].items():
        if not _built_from_deploy(service):
            continue
        config_dir = _config_dir(service, image)
        mount = next((m for m in _mounts(service) if m.target == config_dir), None)
        assert mount is not None and mount.is_bind, f"{name}: nothing mounted at {config_dir}"
        path = (DEPLOY / mount.source / CONFIG_FILE).resolve()
        configs[name] = parse_config(path.read_text(encoding="utf-8"), Path(config_dir), path)
    return configs


def _raft(config: Config) -> RaftOptions:
    """parse_raft refuses the placeholder secret, as it must: stand in what an operator
    puts there (an enc: token would be revealed the same way)."""
    return parse_raft(config.raw.get("raft", {}), lambda key: f"[raft] {key}",
                      lambda v: v.replace(PLACEHOLDER_MARK, "operator-chosen"),
                      config.resolve)


def _port(addr: str) -> int:
    return int(addr.rpartition(":")[2])


def _host(addr: str) -> str:
    return addr.rpartition(":")[0].strip("[]")


def _under(path: Path, directory: str) -> bool:
    return path.is_relative_to(directory)


def _members(raft: RaftOptions) -> set[tuple[str, str]]:
    """Every voting member (id, address), this node included."""
    return {(raft.node_id, raft.addr), *((p.id, p.addr) for p in raft.peers)}


def _without_node_id(config: Config) -> dict[str, Any]:
    raw = copy.deepcopy(config.raw)
    raw.get("raft", {}).pop("node_id", None)
    return raw


def _check_providers(name: str, config: Config, service: dict[str, Any],
                     compose: dict[str, Any], s3: dict[str, int]) -> list[str]:
    problems = []
    for provider in config.providers:
        if provider.type.lower() == "local" and provider.options.get("shared") is not True:
            problems.append(f"{name}: provider {provider.name!r} is node-local storage")
            continue
        url = urlsplit(str(provider.options.get("endpoint_url", "")))
        host = url.hostname or ""
        if host not in s3:
            problems.append(f"{name}: provider {provider.name!r} endpoint host {host!r} is "
                            f"not an S3 service ({', '.join(sorted(s3))})")
            continue
        port = url.port or (443 if url.scheme == "https" else 80)
        if port != s3[host]:
            problems.append(f"{name}: provider {provider.name!r} uses port {port}, "
                            f"{host} serves S3 on {s3[host]}")
        if "access_key" not in provider.options:
            # No credentials in the file: boto3 must get the pair the backend accepts.
            ours, theirs = _environment(service), _environment(compose["services"][host])
            for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
                if not ours.get(key) or ours.get(key) != theirs.get(key):
                    problems.append(f"{name}: {key} differs from {host}'s (provider "
                                    f"{provider.name!r} relies on it)")
    return problems


def compose_problems(compose: dict[str, Any], configs: dict[str, Config],
                     image: Image) -> list[str]:
    """Everything in docker-compose.yml + compose/*/enigma.toml that would break the
    cluster; empty when the files agree."""
    problems: list[str] = []
    services = compose["services"]
    gateways, s3 = gateway_services(compose), s3_services(compose)
    if len(gateways) != 3:
        problems.append(f"expected 3 gateway services, found {gateways}")
    if len(s3) != 3:
        problems.append(f"expected 3 S3 services, found {sorted(s3)}")
    declared = set(compose.get("volumes") or {})
    for name, service in services.items():
        for mount in _mounts(service):
            if not mount.is_bind and mount.source not in declared:
                problems.append(f"{name}: volume {mount.source!r} is not declared")
    members: dict[str, set[tuple[str, str]]] = {}
    node_ids: list[str] = []
    data_volumes: dict[str, str] = {}
    host_ports: dict[int, str] = {}
    used_s3: set[str] = set()
    for name in gateways:
        service, config = services[name], configs[name]
        if (DEPLOY / service["build"].get("context", ".")).resolve() != REPO:
            problems.append(f"{name}: build context is not the repository root")
        if "ENIGMA_PASSPHRASE" not in _environment(service):
            problems.append(f"{name}: no ENIGMA_PASSPHRASE")
        try:
            raft = _raft(config)
        except ConfigError as exc:
            problems.append(f"{name}: {exc}")
            continue
        members[name] = _members(raft)
        node_ids.append(raft.node_id)
        if _host(raft.addr) != name:
            problems.append(f"{name}: its Raft address {raft.addr!r} is not its own service")
        for key, addr in (("grpc_addr", raft.addr), ("bind_addr", raft.bind_addr)):
            if _port(addr) != image.raft_port:
                problems.append(f"{name}: [raft] {key} port {_port(addr)} is not the Raft "
                                f"port the image exposes ({image.raft_port})")
        for peer_id, addr in members[name]:
            if _host(addr) not in gateways or _port(addr) != image.raft_port:
                problems.append(f"{name}: peer {peer_id!r} at {addr!r} is not a gateway "
                                f"service on port {image.raft_port}")
        problems += _check_providers(name, config, service, compose, s3)
        used_s3 |= {urlsplit(str(p.options.get("endpoint_url", ""))).hostname or ""
                    for p in config.providers}
        try:
            proxy = parse_options(config.server_options("s3_proxy") or {},
                                  lambda key: f"[s3_proxy] {key}", lambda v: v)
        except ConfigError as exc:
            problems.append(f"{name}: {exc}")
        else:
            published = _published(service)
            if proxy.port not in {container for _, container in published}:
                problems.append(f"{name}: the gateway listens on {proxy.port}, compose "
                                f"publishes {published}")
            for host_port, _ in published:
                if host_port in host_ports:
                    problems.append(f"{name}: host port {host_port} also used by "
                                    f"{host_ports[host_port]}")
                host_ports[host_port] = name
        mounts = _mounts(service)
        keyfile = config.resolve(config.enigma.get("keyfile_path", "keystore.enc"))
        if not any(m.target == str(keyfile.parent) for m in mounts):
            problems.append(f"{name}: nothing mounted at the keystore's directory "
                            f"{keyfile.parent}")
        for what, path in (("db_path", config.db_path), ("[raft] data_dir", raft.data_dir)):
            mount = next((m for m in mounts if not m.is_bind and _under(path, m.target)), None)
            if mount is None:
                problems.append(f"{name}: {what} {path} is not on a named volume")
            elif data_volumes.setdefault(mount.source, name) != name:
                problems.append(f"{name}: shares volume {mount.source!r} with "
                                f"{data_volumes[mount.source]}")
    if len(set(node_ids)) != len(node_ids):
        problems.append(f"node ids are not unique: {node_ids}")
    if members:
        first, reference = next(iter(members.items()))
        for name, member_set in members.items():
            if member_set != reference:
                problems.append(f"{name}: [[raft.peers]] differ from {first}'s: "
                                f"{sorted(member_set ^ reference)}")
        if {_host(a) for _, a in reference} != set(gateways):
            problems.append(f"[[raft.peers]] hosts {sorted(_host(a) for _, a in reference)} "
                            f"are not the gateway services {gateways}")
    if set(s3) - used_s3:
        problems.append(f"S3 services no provider uses: {sorted(set(s3) - used_s3)}")
    if gateways:
        first = gateways[0]
        for name in gateways[1:]:
            ours, theirs = _without_node_id(configs[name]), _without_node_id(configs[first])
            for table in sorted(set(ours) | set(theirs)):
                if ours.get(table) != theirs.get(table):
                    problems.append(f"{name}: [{table}] differs from {first}'s (nodes may "
                                    "differ only in node_id)")
    return problems + _init_problems(compose, configs, gateways)


def _init_problems(compose: dict[str, Any], configs: dict[str, Config],
                   gateways: list[str]) -> list[str]:
    """The one-off `enigma-init` service creates the keystore the nodes read."""
    services = compose["services"]
    inits = [n for n, s in services.items() if _built_from_deploy(s) and s.get("profiles")]
    if len(inits) != 1 or not gateways:
        return [f"expected one enigma init service behind a profile, found {inits}"]
    name, node = inits[0], gateways[0]
    init, config, node_config = services[name], configs[inits[0]], configs[node]
    problems = []
    if init.get("command") != ["init"]:
        problems.append(f"{name}: command should be ['init']")
    if "raft" in config.raw or "s3_proxy" in config.raw:
        problems.append(f"{name}: its config must have no [raft] / [s3_proxy] (a one-off "
                        "command is not a cluster member)")
    if config.raw.get("providers") != node_config.raw.get("providers"):
        problems.append(f"{name}: [[providers]] differ from {node}'s (init creates the "
                        "buckets the nodes use)")
    keyfile = config.resolve(config.enigma.get("keyfile_path", "keystore.enc"))
    if keyfile != node_config.resolve(node_config.enigma.get("keyfile_path", "keystore.enc")):
        problems.append(f"{name}: keyfile_path differs from {node}'s")
    writable = {m.source for m in _mounts(init)
                if m.target == str(keyfile.parent) and not m.read_only}
    for gateway in gateways:
        read = {m.source for m in _mounts(services[gateway]) if m.target == str(keyfile.parent)}
        if not writable or read != writable:
            problems.append(f"{gateway}: does not read the keystore volume {name} writes")
    return problems


@pytest.fixture()
def compose(image: Image) -> tuple[dict[str, Any], dict[str, Config]]:
    """Freshly parsed, so a test may mutate it."""
    data = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text(encoding="utf-8"))
    data = json.loads(json.dumps(data))  # unshare YAML anchors: a mutation stays local
    return data, compose_configs(data, image)


def test_compose_cluster_is_consistent(compose: tuple[dict[str, Any], dict[str, Config]],
                                       image: Image) -> None:
    data, configs = compose
    assert compose_problems(data, configs, image) == []
    assert len(gateway_services(data)) == 3 and len(s3_services(data)) == 3


def test_compose_env_file_defines_every_variable() -> None:
    """`${VAR:?...}` stops compose when .env lacks VAR: the example must list them all."""
    text = (DEPLOY / "docker-compose.yml").read_text(encoding="utf-8")
    needed = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", text))
    example = (DEPLOY / ".env.example").read_text(encoding="utf-8")
    defined = {line.split("=", 1)[0] for line in example.splitlines()
               if "=" in line and not line.startswith("#")}
    assert needed and needed <= defined


def _peer_addr(config: Config, peer_id: str, addr: str) -> None:
    next(p for p in config.raw["raft"]["peers"] if p["id"] == peer_id)["addr"] = addr


@pytest.mark.parametrize(("mutate", "expected"), [
    (lambda d, c: _peer_addr(c["enigma-2"], "enigma-3", "enigma-3:7001"),
     "enigma-2: [[raft.peers]] differ from enigma-1's"),
    (lambda d, c: _peer_addr(c["enigma-1"], "enigma-3", "seaweed-3:7000"),
     "peer 'enigma-3' at 'seaweed-3:7000' is not a gateway service"),
    (lambda d, c: c["enigma-3"].raw["raft"].update(node_id="enigma-1"),
     "node ids are not unique: ['enigma-1', 'enigma-2', 'enigma-1']"),
    (lambda d, c: c["enigma-1"].providers[0].options.update(
        endpoint_url="http://seaweed-1:9000"), "uses port 9000, seaweed-1 serves S3 on 8333"),
    (lambda d, c: c["enigma-2"].providers[1].options.update(
        endpoint_url="http://minio:9000"), "endpoint host 'minio' is not an S3 service"),
    (lambda d, c: d["services"]["enigma-2"].update(ports=["127.0.0.1:8302:9333"]),
     "enigma-2: the gateway listens on 8333"),
    (lambda d, c: d["services"]["enigma-3"].update(ports=["127.0.0.1:8301:8333"]),
     "host port 8301 also used by enigma-1"),
    (lambda d, c: d["services"]["enigma-3"]["volumes"].__setitem__(
        2, "enigma-1-data:/var/lib/enigma"), "shares volume 'enigma-1-data'"),
    (lambda d, c: d["services"].pop("seaweed-3"), "expected 3 S3 services"),
    (lambda d, c: d["services"]["enigma-2"]["environment"].update(AWS_ACCESS_KEY_ID="x"),
     "enigma-2: AWS_ACCESS_KEY_ID differs from seaweed-1's"),
    (lambda d, c: c["enigma-3"].raw["s3_proxy"].update(secret_key="another-secret"),
     "enigma-3: [s3_proxy] differs from enigma-1's"),
    (lambda d, c: c["enigma-1"].raw["raft"].update(bind_addr="0.0.0.0:7001"),
     "enigma-1: [raft] bind_addr port 7001 is not the Raft port"),
    (lambda d, c: c["enigma-init"].raw.update(raft={}), "must have no [raft]"),
])
def test_compose_problems_are_reported(compose: tuple[dict[str, Any], dict[str, Config]],
                                       image: Image, mutate: Any, expected: str) -> None:
    """Each cross-check can fail: break one thing, see it named."""
    data, configs = compose
    mutate(data, configs)
    problems = compose_problems(data, configs, image)
    assert any(expected in p for p in problems), problems


# ------------------------------------------------------------------------ Kubernetes


def k8s_objects() -> dict[tuple[str, str], dict[str, Any]]:
    """Every object under deploy/k8s by (kind, name)."""
    objects = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if doc:
                key = (doc["kind"], doc["metadata"]["name"])
                assert key not in objects, f"{key} defined twice"
                objects[key] = doc
    return objects


def _named(objects: dict[tuple[str, str], dict[str, Any]], kind: str) -> dict[str, Any]:
    return {name: obj for (k, name), obj in objects.items() if k == kind}


def secret_values(secret: dict[str, Any]) -> dict[str, str]:
    """A Secret's keys and values as the pod sees them."""
    values = {k: str(v) for k, v in (secret.get("stringData") or {}).items()}
    for key, value in (secret.get("data") or {}).items():
        values[key] = base64.b64decode(value).decode("utf-8", "replace")
    return values


def _selects(selector: dict[str, str] | None, labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def _volume_keys(volume: dict[str, Any], source: dict[str, Any]) -> dict[str, str]:
    """File name in the mounted volume -> key of the ConfigMap / Secret it comes from."""
    items = volume.get("items")
    if items:
        return {i["path"]: i["key"] for i in items}
    keys = {*(source.get("data") or {}), *(source.get("stringData") or {})}
    return {k: k for k in keys}


def _resolve_port(port: int | str, ports: dict[str, int]) -> int | None:
    return ports.get(port) if isinstance(port, str) else port


def k8s_problems(objects: dict[tuple[str, str], dict[str, Any]], image: Image) -> list[str]:
    """Everything in deploy/k8s that would break the cluster; empty when it agrees."""
    problems: list[str] = []
    statefulsets = _named(objects, "StatefulSet")
    if len(statefulsets) != 1:
        return [f"expected one StatefulSet, found {sorted(statefulsets)}"]
    (sts_name, sts), = statefulsets.items()
    spec = sts["spec"]
    pod = spec["template"]["spec"]
    labels = spec["template"]["metadata"]["labels"]
    services, secrets = _named(objects, "Service"), _named(objects, "Secret")
    configmaps = _named(objects, "ConfigMap")
    main = pod["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in main.get("ports", [])}
    if ports.get("s3") != S3_PORT or ports.get("raft") != image.raft_port:
        problems.append(f"container ports {ports} are not s3={S3_PORT}, "
                        f"raft={image.raft_port}")
    if (main.get("args") or image.cmd) != ["serve"] or main.get("command"):
        problems.append("the main container does not run the image's `enigma serve`")
    if spec.get("podManagementPolicy") != "Parallel":
        problems.append("podManagementPolicy is not Parallel (nodes wait for a quorum)")
    if not _selects(spec["selector"].get("matchLabels"), labels):
        problems.append("the StatefulSet's selector does not match its pod labels")
    if str(pod.get("securityContext", {}).get("runAsUser")) != image.user.split(":")[0]:
        problems.append("runAsUser is not the image's user")

    headless_name = spec.get("serviceName")
    headless = services.get(headless_name)
    if headless is None:
        problems.append(f"serviceName {headless_name!r} is not a Service in deploy/k8s")
    else:
        hspec = headless["spec"]
        if hspec.get("clusterIP") != "None" or hspec.get("publishNotReadyAddresses") is not True:
            problems.append(f"{headless_name}: needs clusterIP None and "
                            "publishNotReadyAddresses true")
        if not _selects(hspec.get("selector"), labels):
            problems.append(f"{headless_name}: does not select the StatefulSet's pods")
        if not any(p["port"] == image.raft_port
                   and _resolve_port(p.get("targetPort", p["port"]), ports) == image.raft_port
                   for p in hspec["ports"]):
            problems.append(f"{headless_name}: does not expose the Raft port "
                            f"{image.raft_port}")
    clients = {n: s for n, s in services.items() if s["spec"].get("clusterIP") != "None"}
    if not clients:
        problems.append("no ClusterIP Service for S3 clients")
    for name, service in clients.items():
        sspec = service["spec"]
        if sspec.get("type", "ClusterIP") != "ClusterIP":
            problems.append(f"{name}: type is not ClusterIP")
        if not _selects(sspec.get("selector"), labels):
            problems.append(f"{name}: does not select the StatefulSet's pods")
        if not any(p["port"] == S3_PORT
                   and _resolve_port(p.get("targetPort", p["port"]), ports) == S3_PORT
                   for p in sspec["ports"]):
            problems.append(f"{name}: does not route {S3_PORT} to the container's {S3_PORT}")
    for name, pdb in _named(objects, "PodDisruptionBudget").items():
        if not _selects(pdb["spec"]["selector"].get("matchLabels"), labels):
            problems.append(f"PodDisruptionBudget {name}: does not select the pods")
    for name, policy in _named(objects, "NetworkPolicy").items():
        problems += _policy_problems(name, policy["spec"], labels, ports, image.raft_port)
    probe = main.get("readinessProbe", {}).get("tcpSocket", {})
    if _resolve_port(probe.get("port", ""), ports) != S3_PORT:
        problems.append(f"the readiness probe does not check TCP {S3_PORT}")

    # Volumes and references.
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    claims = {c["metadata"]["name"] for c in spec.get("volumeClaimTemplates", [])}
    for volume in volumes.values():
        if "configMap" in volume and volume["configMap"]["name"] not in configmaps:
            problems.append(f"volume {volume['name']}: no ConfigMap "
                            f"{volume['configMap']['name']!r}")
        if "secret" in volume:
            secret = secrets.get(volume["secret"]["secretName"])
            if secret is None:
                problems.append(f"volume {volume['name']}: no Secret "
                                f"{volume['secret']['secretName']!r}")
            elif not set(_volume_keys(volume["secret"], secret).values()) <= set(
                    secret_values(secret)):
                problems.append(f"volume {volume['name']}: items name keys that Secret "
                                f"{volume['secret']['secretName']!r} lacks")
    every = [*pod.get("initContainers", []), *pod["containers"]]
    for container in every:
        for mount in container.get("volumeMounts", []):
            if mount["name"] not in volumes and mount["name"] not in claims:
                problems.append(f"{container['name']}: mounts unknown volume {mount['name']!r}")
        for var in container.get("env", []):
            ref = var.get("valueFrom", {})
            if "secretKeyRef" in ref:
                name, key = ref["secretKeyRef"]["name"], ref["secretKeyRef"]["key"]
                if key not in secret_values(secrets.get(name, {})):
                    problems.append(f"{container['name']}: env {var['name']} needs key "
                                    f"{key!r} of Secret {name!r}, which is not there")
            if "configMapKeyRef" in ref:
                name, key = ref["configMapKeyRef"]["name"], ref["configMapKeyRef"]["key"]
                if key not in (configmaps.get(name, {}).get("data") or {}):
                    problems.append(f"{container['name']}: env {var['name']} needs key "
                                    f"{key!r} of ConfigMap {name!r}")
    main_env = {v["name"]: v for v in main.get("env", [])}
    if "secretKeyRef" not in main_env.get("ENIGMA_PASSPHRASE", {}).get("valueFrom", {}):
        problems.append("the main container takes no ENIGMA_PASSPHRASE from a Secret")
    if problems:
        return problems  # the per-pod checks below rely on the references
    return _rendered_problems(objects, image, sts_name, headless_name)


def _policy_problems(name: str, spec: dict[str, Any], labels: dict[str, str],
                     ports: dict[str, int], raft_port: int) -> list[str]:
    """Raft reachable from the Enigma pods only, S3 reachable at all."""
    if not _selects(spec["podSelector"].get("matchLabels"), labels):
        return [f"NetworkPolicy {name}: does not select the pods"]

    def rules_for(port: int) -> list[dict[str, Any]]:
        return [r for r in spec.get("ingress", [])
                if any(_resolve_port(p.get("port", ""), ports) == port
                       for p in r.get("ports", []))]

    problems = []
    raft_rules = rules_for(raft_port)
    if any(not r.get("from") for r in raft_rules):
        problems.append(f"NetworkPolicy {name}: opens the Raft port to everyone")
    if not any(_selects(f.get("podSelector", {}).get("matchLabels"), labels)
               for r in raft_rules for f in r.get("from", [])):
        problems.append(f"NetworkPolicy {name}: the pods cannot reach each other's Raft port")
    if not rules_for(S3_PORT):
        problems.append(f"NetworkPolicy {name}: blocks S3 clients on {S3_PORT}")
    return problems


def _mount_at(container: dict[str, Any], path: str) -> str | None:
    return next((m["name"] for m in container.get("volumeMounts", [])
                 if m["mountPath"] == path), None)


def _rendered_problems(objects: dict[tuple[str, str], dict[str, Any]], image: Image,
                       sts_name: str, headless: str) -> list[str]:
    """Render the ConfigMap for each pod, as the init container does, and check the result."""
    sts = objects[("StatefulSet", sts_name)]
    spec, pod = sts["spec"], sts["spec"]["template"]["spec"]
    main = pod["containers"][0]
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    secrets, configmaps = _named(objects, "Secret"), _named(objects, "ConfigMap")
    command = "enigma-render-config"
    inits = [c for c in pod.get("initContainers", []) if c.get("command", [""])[0] == command]
    if len(inits) != 1:
        return [f"expected one init container running {command}"]
    init = inits[0]
    problems: list[str] = []
    if not any(dest == f"/usr/local/bin/{command}" and
               sources == ["deploy/render_config.py"] for sources, dest in image.copies):
        problems.append(f"the image does not install deploy/render_config.py as {command}")
    template_path, output_path = map(PurePosixPath, init["command"][1:3])
    template_volume = volumes.get(_mount_at(init, str(template_path.parent)) or "", {})
    configmap = configmaps.get(template_volume.get("configMap", {}).get("name", ""), {})
    files = _volume_keys(template_volume.get("configMap", {}), configmap) if configmap else {}
    if template_path.name not in files:
        return [*problems, f"{init['name']}: {template_path} is not a ConfigMap file"]
    template = configmap["data"][files[template_path.name]]
    config_dir = next((v["value"] for v in main.get("env", [])
                       if v["name"] == "ENIGMA_CONFIG_DIR"), image.env["ENIGMA_CONFIG_DIR"])
    rendered_volume = _mount_at(init, str(output_path.parent))
    if output_path.name != CONFIG_FILE or rendered_volume is None or (
            _mount_at(main, config_dir) != rendered_volume):
        problems.append(f"{init['name']} writes {output_path}, but {main['name']} reads "
                        f"{config_dir}/{CONFIG_FILE} from another volume")
    data_dir = next((m["mountPath"] for m in main["volumeMounts"]
                     if m["name"] in {c["metadata"]["name"]
                                      for c in spec.get("volumeClaimTemplates", [])}), None)
    replicas = spec["replicas"]
    expected_ids = {f"{sts_name}-{i}" for i in range(replicas)}
    s3_port = next(p["containerPort"] for p in main["ports"] if p["name"] == "s3")
    for index in range(replicas):
        pod_name = f"{sts_name}-{index}"
        env = {}
        for var in init.get("env", []):
            ref = var.get("valueFrom", {})
            if "value" in var:
                env[var["name"]] = str(var["value"])
            elif ref.get("fieldRef", {}).get("fieldPath") == "metadata.name":
                env[var["name"]] = pod_name
            elif "secretKeyRef" in ref:
                secret = secrets[ref["secretKeyRef"]["name"]]
                env[var["name"]] = secret_values(secret)[ref["secretKeyRef"]["key"]]
        try:
            text = render_config.render(template, env)
            config = parse_config(text, Path(config_dir), Path(f"{pod_name}:{output_path}"))
            raft = _raft(config)
            proxy = parse_options(config.server_options("s3_proxy") or {},
                                  lambda key: f"[s3_proxy] {key}", lambda v: v)
        except (render_config.MissingVariables, ConfigError) as exc:
            problems.append(f"{pod_name}: {type(exc).__name__}: {exc}")
            continue
        if raft.node_id != pod_name:
            problems.append(f"{pod_name}: renders node_id {raft.node_id!r}")
        members = _members(raft)
        if {i for i, _ in members} != expected_ids:
            problems.append(f"{pod_name}: [[raft.peers]] ids {sorted(i for i, _ in members)} "
                            f"are not the {replicas} pods {sorted(expected_ids)}")
        for peer_id, addr in sorted(members):
            stable = f"{peer_id}.{headless}"
            host = _host(addr)
            if (host != stable and not host.startswith(stable + ".")) or (
                    _port(addr) != image.raft_port):
                problems.append(f"{pod_name}: peer {peer_id!r} at {addr!r} is not "
                                f"{stable}[.<namespace>...]:{image.raft_port}")
        if _port(raft.bind_addr) != image.raft_port:
            problems.append(f"{pod_name}: bind_addr port is not {image.raft_port}")
        if proxy.port != s3_port:
            problems.append(f"{pod_name}: the gateway listens on {proxy.port}, the container "
                            f"port is {s3_port}")
        for provider in config.providers:
            if provider.type.lower() == "local":
                problems.append(f"{pod_name}: provider {provider.name!r} is node-local")
        keyfile = PurePosixPath(config.resolve(config.enigma.get("keyfile_path",
                                                                 "keystore.enc")))
        key_volume = volumes.get(_mount_at(main, str(keyfile.parent)) or "", {})
        secret = secrets.get(key_volume.get("secret", {}).get("secretName", ""))
        if secret is None or keyfile.name not in _volume_keys(key_volume["secret"], secret):
            problems.append(f"{pod_name}: the keystore {keyfile} is not a mounted Secret file")
        for what, path in (("db_path", config.db_path), ("[raft] data_dir", raft.data_dir)):
            if data_dir is None or not _under(path, data_dir):
                problems.append(f"{pod_name}: {what} {path} is not on the pod's "
                                "PersistentVolume")
    return problems


def test_k8s_cluster_is_consistent(image: Image) -> None:
    objects = k8s_objects()
    assert k8s_problems(objects, image) == []
    kinds = sorted(kind for kind, _ in objects)
    assert kinds.count("Service") == 2 and "ConfigMap" in kinds and "StatefulSet" in kinds


def test_k8s_secrets_hold_placeholders_only() -> None:
    """Real credentials never go into the repository: every value is marked CHANGE-ME."""
    for name, secret in _named(k8s_objects(), "Secret").items():
        for key, value in secret_values(secret).items():
            assert PLACEHOLDER_MARK in value, f"Secret {name} key {key}"


def _edit_template(objects: dict[tuple[str, str], dict[str, Any]], old: str, new: str) -> None:
    data = objects[("ConfigMap", "enigma-config")]["data"]
    assert old in data["enigma.toml"]
    data["enigma.toml"] = data["enigma.toml"].replace(old, new)


def _rename_headless(objects: dict[tuple[str, str], dict[str, Any]]) -> None:
    objects[("Service", "other")] = objects.pop(("Service", "enigma-raft"))


def _sts(objects: dict[tuple[str, str], dict[str, Any]]) -> dict[str, Any]:
    return objects[("StatefulSet", "enigma")]["spec"]


@pytest.mark.parametrize(("mutate", "expected"), [
    (_rename_headless, "serviceName 'enigma-raft' is not a Service"),
    (lambda o: _sts(o).update(replicas=4), "are not the 4 pods"),
    (lambda o: _edit_template(o, "enigma-2.enigma-raft:7000", "enigma-2.elsewhere:7000"),
     "peer 'enigma-2' at 'enigma-2.elsewhere:7000'"),
    (lambda o: _edit_template(o, 'node_id = "${POD_NAME}"', 'node_id = "enigma-0"'),
     "enigma-1: renders node_id 'enigma-0'"),
    (lambda o: _edit_template(o, "${RAFT_SECRET}", "${RAFT_SECRT}"),
     "MissingVariables: 'RAFT_SECRT'"),
    (lambda o: o[("Secret", "enigma-secrets")]["stringData"].pop("s3-b-secret-key"),
     "needs key 's3-b-secret-key' of Secret 'enigma-secrets'"),
    (lambda o: o[("Service", "enigma-s3")]["spec"]["ports"][0].update(targetPort="raft"),
     "enigma-s3: does not route 8333"),
    (lambda o: _sts(o)["template"]["metadata"]["labels"].update(
        {"app.kubernetes.io/name": "x"}), "does not select the StatefulSet's pods"),
    (lambda o: _sts(o)["template"]["spec"]["containers"][0]["volumeMounts"][0].update(
        name="cfg"), "mounts unknown volume 'cfg'"),
    (lambda o: _sts(o)["template"]["spec"]["volumes"][2]["secret"].update(
        secretName="keys"), "no Secret 'keys'"),
    (lambda o: o[("NetworkPolicy", "enigma")]["spec"]["ingress"][1].pop("from"),
     "opens the Raft port to everyone"),
    (lambda o: _edit_template(o, "/var/lib/enigma/raft", "/srv/raft"),
     "[raft] data_dir /srv/raft is not on the pod's PersistentVolume"),
])
def test_k8s_problems_are_reported(image: Image, mutate: Any, expected: str) -> None:
    """Each cross-check can fail: break one thing, see it named."""
    objects = k8s_objects()
    mutate(objects)
    problems = k8s_problems(objects, image)
    assert any(expected in p for p in problems), problems
